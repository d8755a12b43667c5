"""What the meta-detector is compared with, and its input realism gate.

* **Logistic regression** on the raw (standardised) meta-features: no triplet network.
* **Mahalanobis distance** on the classifier embedding: class-conditional Gaussians with a
  shared covariance fitted on clean training cells; the score is the distance to the nearest
  class mean.
* **Input-space statistic** (also the detector's *realism gate*): per cell, how many model
  genes hold a value no measured cell can have: below the gene's zero level, between zero and
  one count (the smallest non-zero value a cell with up to twice the reference's largest
  library can have), or outside the gene's observed range.

Every fitted object is stored as plain arrays and rebuilt from them with checked shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from anndata import AnnData
from sklearn.linear_model import LogisticRegression

from ... import _keys as K
from ..._errors import ScadvInputError

#: Tolerance (model-space units) of "at the zero level" and "inside the observed range".
GATE_TOL = 1e-3


# ---- logistic regression on the raw meta-features ---------------------------------------------


def fit_logreg(clean: np.ndarray, adv: np.ndarray, mean: np.ndarray, scale: np.ndarray,
               seed: int) -> dict[str, Any]:
    """Balanced logistic regression, clean (0) vs adversarial (1), on standardised features."""
    f = (np.vstack([clean, adv]) - mean) / scale
    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    lr = LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed).fit(f, y)
    return {"coef": lr.coef_.ravel().astype(np.float64),
            "intercept": float(lr.intercept_[0])}


def score_logreg(rec: Mapping[str, Any], features: np.ndarray, mean: np.ndarray,
                 scale: np.ndarray) -> np.ndarray:
    coef = np.asarray(rec["coef"], dtype=np.float64)
    if coef.shape != (features.shape[1],):
        raise ScadvInputError("stored logistic-regression baseline does not match the features.")
    return ((features - mean) / scale) @ coef + float(rec["intercept"])


# ---- Mahalanobis distance on the embedding ----------------------------------------------------


def fit_mahalanobis(emb: np.ndarray, cls: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Class means and the shared (ridge-regularised) precision matrix of clean embeddings."""
    emb = np.asarray(emb, dtype=np.float64)
    means = np.zeros((n_classes, emb.shape[1]))
    present = np.zeros(n_classes, dtype=bool)
    for c in range(n_classes):
        rows = cls == c
        if rows.any():
            means[c] = emb[rows].mean(axis=0)
            present[c] = True
    centred = emb - means[cls]
    cov = centred.T @ centred / max(len(emb) - 1, 1)
    cov += np.eye(len(cov)) * (1e-3 * np.trace(cov) / len(cov) + 1e-8)
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


# ---- input-space statistic / realism gate -----------------------------------------------------


def gate_arrays(adata: AnnData, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Per gene: zero level, the one-count gap above it, and the observed range (model space).

    The gap is the model-space value of one count in a cell with twice the largest library
    size of the reference cells (``obs['scadv_library_size']``); without library sizes (input
    that was not counts) there is no gap check.
    """
    kind = str(recipe.get("input_kind", "counts"))
    std = np.asarray(recipe["std"], dtype=np.float32)
    zero = np.asarray(recipe["zero_level"], dtype=np.float32)
    gap = np.zeros_like(zero)
    if kind == "counts" and K.LIBRARY_SIZE in adata.obs:
        lib = float(np.nanmax(adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)))
        gap = (np.log1p(float(recipe["target_sum"]) / (2.0 * lib)) / std).astype(np.float32)
    return {
        "check_zero": kind in ("counts", "lognorm"),
        "zero_level": zero,
        "gap": gap,
        "x_min": np.asarray(recipe["x_min"], dtype=np.float32),
        "x_max": np.asarray(recipe["x_max"], dtype=np.float32),
        "tol": GATE_TOL,
    }


def violations(gate: Mapping[str, Any], x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Per cell, the number of model genes holding an impossible value."""
    zero = np.asarray(gate["zero_level"], dtype=np.float32)
    gap = np.asarray(gate["gap"], dtype=np.float32)
    lo = np.asarray(gate["x_min"], dtype=np.float32)
    hi = np.asarray(gate["x_max"], dtype=np.float32)
    if not zero.shape == gap.shape == lo.shape == hi.shape == (x.shape[1],):
        raise ScadvInputError("the stored realism gate does not match the model genes.")
    tol = float(gate["tol"])
    check_zero = bool(np.asarray(gate["check_zero"]))
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        bad = (xb < lo - tol) | (xb > hi + tol)
        if check_zero:
            bad |= xb < zero - tol
            bad |= (xb > zero + tol) & (xb < zero + gap - tol)
        out[start:start + batch_size] = bad.sum(axis=1)
    return out
