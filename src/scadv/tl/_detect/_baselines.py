"""What the meta-detector is compared with (the realism gate is in :mod:`._gate`).

* **Logistic regression** on the raw (standardised) meta-features: no triplet network.
* **Mahalanobis distance** on the classifier embedding: class-conditional Gaussians with a
  shared covariance (Ledoit–Wolf shrinkage) fitted on clean training cells; the score is the
  distance to the nearest class mean.
* **PCA reconstruction error** of the log-normalised counts of the model genes: how far a
  cell lies off the training cells' 50 principal axes (a count-space statistic).

Every fitted object is stored as plain arrays and rebuilt from them with checked shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from ..._errors import ScadvInputError

# ---- logistic regression on the raw meta-features ---------------------------------------------


def fit_logreg(clean: np.ndarray, adv: np.ndarray, seed: int) -> dict[str, Any]:
    """Balanced logistic regression, clean (0) vs adversarial (1), on standardised features."""
    f = np.vstack([clean, adv]).astype(np.float64)
    mean = f.mean(axis=0)
    scale = f.std(axis=0)
    scale[~(scale > 1e-8)] = 1.0
    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    lr = LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed).fit(
        (f - mean) / scale, y)
    return {"coef": lr.coef_.ravel().astype(np.float64), "intercept": float(lr.intercept_[0]),
            "mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}


def score_logreg(rec: Mapping[str, Any], features: np.ndarray) -> np.ndarray:
    coef = np.asarray(rec["coef"], dtype=np.float64)
    mean = np.asarray(rec["mean"], dtype=np.float64)
    scale = np.asarray(rec["scale"], dtype=np.float64)
    if not coef.shape == mean.shape == scale.shape == (features.shape[1],):
        raise ScadvInputError("stored logistic-regression baseline does not match the features.")
    return ((features - mean) / scale) @ coef + float(rec["intercept"])


# ---- Mahalanobis distance on the embedding ----------------------------------------------------


def fit_mahalanobis(emb: np.ndarray, cls: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Class means and the shared (Ledoit–Wolf shrunk) precision matrix of clean
    embeddings."""
    emb = np.asarray(emb, dtype=np.float64)
    means = np.zeros((n_classes, emb.shape[1]))
    present = np.zeros(n_classes, dtype=bool)
    for c in range(n_classes):
        rows = cls == c
        if rows.any():
            means[c] = emb[rows].mean(axis=0)
            present[c] = True
    centred = emb - means[cls]
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    cov += np.eye(len(cov)) * 1e-8
    return {"means": means[present], "precision": np.linalg.inv(cov)}


def score_mahalanobis(rec: Mapping[str, Any], emb: np.ndarray) -> np.ndarray:
    means = np.asarray(rec["means"], dtype=np.float64)
    prec = np.asarray(rec["precision"], dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != emb.shape[1] or prec.shape != (emb.shape[1],) * 2:
        raise ScadvInputError("stored Mahalanobis baseline does not match the embedding.")
    e = np.asarray(emb, dtype=np.float64)
    # (e - m)^T P (e - m) = e^T P e - 2 e^T P m + m^T P m, for every class at once
    ep = e @ prec
    d = ((ep * e).sum(axis=1)[:, None] - 2 * ep @ means.T
         + np.einsum("ij,jk,ik->i", means, prec, means)[None, :])
    return np.sqrt(np.maximum(d.min(axis=1), 0.0))


# ---- PCA reconstruction error of the log-normalised counts --------------------------------


def fit_pca(lognorm: np.ndarray, n_components: int = 50) -> dict[str, Any]:
    """Principal axes of the clean training cells' log-normalised model genes."""
    x = np.asarray(lognorm, dtype=np.float64)
    mean = x.mean(axis=0)
    k = int(min(n_components, min(x.shape) - 1))
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return {"mean": mean.astype(np.float32), "components": vt[:max(k, 1)].astype(np.float32)}


def score_pca(rec: Mapping[str, Any], lognorm: np.ndarray) -> np.ndarray:
    """Mean squared residual of each cell off the training cells' principal subspace."""
    mean = np.asarray(rec["mean"], dtype=np.float64)
    comp = np.asarray(rec["components"], dtype=np.float64)
    if mean.shape != (lognorm.shape[1],) or comp.ndim != 2 or comp.shape[1] != len(mean):
        raise ScadvInputError("stored PCA baseline does not match the model genes.")
    c = np.asarray(lognorm, dtype=np.float64) - mean
    r = c - (c @ comp.T) @ comp
    return (r * r).mean(axis=1)
