"""The consistency detector: does the classifier's answer hold up under views an attacker
cannot move together?

Per cell, with ``ŷ`` the classifier's predicted class, three numbers:

``margin``
    The classifier's top-1 minus top-2 logit.
``squeeze``
    :math:`\\log(1 - p(\\hat y))` of the same classifier on the cell with every z-score clipped
    to ``±clip`` (default 5): the *squeezed* cell. A count-space attacker flips a cell with a
    few UMIs on rarely detected genes, each worth many standard deviations; clipped, those
    genes lose most of their pull and the prediction goes back.
``twin``
    :math:`\\log(1 - q(\\hat y))` of a *twin*: a multinomial logistic regression on another
    view of the same cell, ``log1p`` of the counts normalised to ``twin_target_sum`` (1,000)
    without z-scoring, in which one UMI moves a rare gene about as little as a common one.
    The twin is fitted on the classifier's training cells and labels; its values on those cells
    are cross-fitted (each from a twin that did not see the cell).

Two rules turn the three into one logit (``fusion``):

``'logistic'`` (default)
    A logistic regression on the three (standardised), fitted on clean training cells (and
    their down-sampled versions, when counts are at hand) against the training cells'
    count-space attacks.
``'or'``
    Flag a cell when ANY view is out of line. Each view, oriented so that higher is more
    suspicious (the margin negated), gets its own split-conformal threshold on the clean
    validation cells at its share of the target false-positive rate α (a Bonferroni split,
    :data:`OR_SPLIT`: the twin, the view an attacker finds hardest to move, gets most of it),
    so by the union bound a clean cell is flagged with probability at most α. The logit is
    the largest view's excess over its threshold (in units of that view's interquartile
    range): ``≥ 0`` means flagged, and the stored threshold is 0.5 on the probability scale.
    No weight learnt on attacks can be traded off: an attacker must bring every view under
    its own limit.

Everything is one differentiable torch module (:class:`Consistency`), so the adaptive
attackers follow the exact detector (the OR's logit is a maximum: its gradient is that of the
view in front).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from torch import nn

from ..._errors import ScadvInputError

VIEWS = ("margin", "squeeze", "twin")
#: How the views become one logit (see the module docstring).
FUSIONS = ("logistic", "or")
#: Orientation of each view for the OR rule: higher is more suspicious (a small margin is).
OR_SIGN = (-1.0, 1.0, 1.0)
#: Shares of the target false-positive rate of the OR rule's views (margin, squeeze, twin):
#: the twin, which a count attacker who queries the detector finds the most expensive to move
#: (``benchmarks/detection_defence.py``), gets two thirds.
OR_SPLIT = (1 / 6, 1 / 6, 2 / 3)
#: Threshold of a view whose share of α is too small for its validation cells (it never flags).
OR_NEVER = 1e30
SQUEEZE_CLIP = 5.0
TWIN_TARGET_SUM = 1000.0
#: Inverse L2 strength of the twin (chosen on PBMC3k validation cells,
#: ``benchmarks/meta_detection.py``).
TWIN_C = 0.1
N_FOLDS = 3
_EPS = 1e-4


class Consistency(nn.Module):
    """Model input → the three views and the fused logit (see the module docstring)."""

    mean: torch.Tensor
    std: torch.Tensor
    twin_weight: torch.Tensor
    twin_bias: torch.Tensor
    feature_mean: torch.Tensor
    feature_scale: torch.Tensor
    coef: torch.Tensor
    or_center: torch.Tensor
    or_scale: torch.Tensor

    def __init__(self, net: nn.Module, recipe: Mapping[str, Any], rec: Mapping[str, Any]
                 ) -> None:
        super().__init__()
        self.net = net
        f = lambda key: torch.as_tensor(np.asarray(rec[key], dtype=np.float32))  # noqa: E731
        self.register_buffer("mean", torch.as_tensor(np.asarray(recipe["mean"], np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(recipe["std"], np.float32)))
        self.register_buffer("twin_weight", f("twin_weight"))
        self.register_buffer("twin_bias", f("twin_bias"))
        self.register_buffer("feature_mean", f("feature_mean"))
        self.register_buffer("feature_scale", f("feature_scale"))
        self.register_buffer("coef", f("coef"))
        self.max_value = float(recipe["max_value"])
        self.ratio = float(rec["twin_target_sum"]) / float(recipe["target_sum"])
        self.clip = float(rec["clip"])
        self.intercept = float(rec["intercept"])
        self.fusion = str(rec.get("fusion", "logistic"))  # records before the option: logistic
        sign = np.asarray(OR_SIGN, np.float32)
        if self.fusion == "or":
            self.register_buffer("or_center", f("or_center"))
            self.register_buffer("or_scale", f("or_scale") * torch.as_tensor(sign))
        else:
            self.register_buffer("or_center", torch.zeros(len(VIEWS)))
            self.register_buffer("or_scale", torch.as_tensor(sign))

    def twin_input(self, x: torch.Tensor) -> torch.Tensor:
        return twin_view(x, self.mean, self.std, self.max_value, self.ratio)

    def views(self, x: torch.Tensor, twin_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, 3)``: margin, squeeze, twin (differentiable in ``x``)."""
        logits = self.net(x)
        top2 = torch.topk(logits, 2, dim=1).values
        pred = logits.detach().argmax(dim=1)
        squeezed = self.net(x.clamp(-self.clip, self.clip))
        if twin_logits is None:
            twin_logits = self.twin_input(x) @ self.twin_weight.T + self.twin_bias
        return torch.stack([top2[:, 0] - top2[:, 1], log_other(squeezed, pred),
                            log_other(twin_logits, pred)], dim=1)

    def fuse_np(self, views: np.ndarray) -> np.ndarray:
        """The fused logit of views computed by :func:`views_np` (float64)."""
        if self.fusion == "or":
            return self.or_parts_np(views).max(axis=1)
        mean = self.feature_mean.cpu().numpy().astype(np.float64)
        scale = self.feature_scale.cpu().numpy().astype(np.float64)
        coef = self.coef.cpu().numpy().astype(np.float64)
        return ((np.asarray(views, np.float64) - mean) / scale) @ coef + self.intercept

    def standardised(self, views: np.ndarray) -> np.ndarray:
        mean = self.feature_mean.cpu().numpy().astype(np.float64)
        scale = self.feature_scale.cpu().numpy().astype(np.float64)
        return (np.asarray(views, np.float64) - mean) / scale

    def or_parts_np(self, views: np.ndarray) -> np.ndarray:
        """Each view on the OR rule's scale (float64, ``(n, 3)``): 1 at its own α/3 limit."""
        center = self.or_center.cpu().numpy().astype(np.float64)
        scale = self.or_scale.cpu().numpy().astype(np.float64)  # carries the orientation
        return (np.asarray(views, np.float64) - center) / scale

    def fuse(self, views: torch.Tensor) -> torch.Tensor:
        if self.fusion == "or":
            return ((views - self.or_center) / self.or_scale).max(dim=1).values
        return ((views - self.feature_mean) / self.feature_scale) @ self.coef + self.intercept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.views(x))


def twin_view(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, max_value: float,
              ratio: float) -> torch.Tensor:
    """``log1p`` of the counts normalised to ``ratio · target_sum``, from the model input."""
    z = x.clamp(-max_value, max_value) if max_value > 0 else x
    level = torch.expm1(z * std + mean).clamp(min=0.0)
    return torch.log1p(level * ratio)


def log_other(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``log(1 − softmax(logits)[cls] + ε)``, computed stably."""
    logp = torch.log_softmax(logits, dim=1)
    others = logp.scatter(1, cls.unsqueeze(1), float("-inf"))
    return torch.logaddexp(torch.logsumexp(others, dim=1),
                           torch.full_like(logp[:, 0], float(np.log(_EPS))))


@torch.no_grad()
def views_np(module: Consistency, x: np.ndarray, *, twin: tuple[np.ndarray, np.ndarray] | None
             = None, device: torch.device, batch_size: int = 2048) -> np.ndarray:
    """The three views of rows of ``x`` (float64); ``twin``: other twin weights (cross-fit)."""
    module = module.to(device).eval()
    out = []
    for lo in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[lo:lo + batch_size], np.float32), device=device)
        tl = None
        if twin is not None:
            w = torch.as_tensor(twin[0], device=device)
            tl = module.twin_input(xb) @ w.T + torch.as_tensor(twin[1], device=device)
        out.append(module.views(xb, tl).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.empty((0, len(VIEWS)))


@torch.no_grad()
def twin_inputs(x: np.ndarray, recipe: Mapping[str, Any], *, batch_size: int = 4096
                ) -> np.ndarray:
    mean = torch.as_tensor(np.asarray(recipe["mean"], np.float32))
    std = torch.as_tensor(np.asarray(recipe["std"], np.float32))
    ratio = TWIN_TARGET_SUM / float(recipe["target_sum"])
    parts = [twin_view(torch.as_tensor(np.asarray(x[lo:lo + batch_size], np.float32)), mean,
                       std, float(recipe["max_value"]), ratio).numpy()
             for lo in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, len(mean)), np.float32)


def fit_twin(r: np.ndarray, y: np.ndarray, n_classes: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on twin inputs; weights as ``(C, G)``, ``(C,)`` with a
    row for every class (absent classes never win: bias −30)."""
    present = np.unique(y)
    w = np.zeros((n_classes, r.shape[1]), dtype=np.float32)
    b = np.full(n_classes, -30.0, dtype=np.float32)
    if len(present) == 1:
        b[present[0]] = 0.0
        return w, b
    lr = LogisticRegression(C=TWIN_C, max_iter=2000, random_state=seed).fit(r, y)
    coef, icpt = lr.coef_, lr.intercept_
    if len(present) == 2:  # sklearn stores one row for two classes
        coef = np.vstack([-coef / 2, coef / 2])
        icpt = np.r_[-icpt / 2, icpt / 2]
    w[present] = coef
    b[present] = icpt
    return w, b


def cross_fit(r: np.ndarray, y: np.ndarray, n_classes: int, seed: int
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Twins fitted on all but one fold of the rows; returns them and each row's fold."""
    fold = np.zeros(len(y), dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)
    k = int(min(N_FOLDS, max(2, counts[counts > 0].min())))
    if len(y) < 2 * k or counts[counts > 0].min() < 2:
        raise ScadvInputError(
            "the consistency detector needs at least two training cells of every class to "
            "cross-fit its twin; drop the rare classes, or pass method='logreg'.")
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    twins = []
    for i, (fit_rows, held) in enumerate(split.split(np.zeros(len(y)), y)):
        fold[held] = i
        twins.append(fit_twin(r[fit_rows], y[fit_rows], n_classes, seed))
    return twins, fold


def fit_fusion(negatives: np.ndarray, positives: np.ndarray, seed: int) -> dict[str, Any]:
    """Balanced logistic regression of the standardised views, clean (0) vs attacked (1)."""
    f = np.vstack([negatives, positives])
    mean = f.mean(axis=0)
    scale = f.std(axis=0)
    scale[~(scale > 1e-8)] = 1.0
    y = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000,
                            random_state=seed).fit((f - mean) / scale, y)
    return {"feature_mean": mean.astype(np.float32), "feature_scale": scale.astype(np.float32),
            "coef": lr.coef_.ravel().astype(np.float32), "intercept": float(lr.intercept_[0])}


def fit_or(clean_val: np.ndarray, alpha: float) -> dict[str, Any]:
    """The OR rule from the views of clean validation cells: per view (oriented by
    :data:`OR_SIGN`), the split-conformal threshold at ``alpha · OR_SPLIT[k]`` (the
    ``⌈(n + 1)(1 − α_k)⌉``-th smallest value, flagged from just above it) and the interquartile
    range as its unit. Also returns, per view, the rank used and the Beta 95% bound of its
    false-positive rate (their sum bounds the OR's)."""
    sign = np.asarray(OR_SIGN)
    v = np.sort(np.asarray(clean_val, np.float64) * sign, axis=0)
    n = len(v)
    center = np.full(len(VIEWS), OR_NEVER)
    rank = np.zeros(len(VIEWS), dtype=np.int64)
    fpr_95 = np.zeros(len(VIEWS))
    alphas = float(alpha) * np.asarray(OR_SPLIT)
    for j, a in enumerate(alphas):
        k = int(np.ceil((n + 1) * (1 - a)))
        rank[j] = k
        if 0 < k <= n:
            # the views are float32: just above the k-th value in float32, flagged from there
            center[j] = float(np.nextafter(np.float32(v[k - 1, j]), np.float32(np.inf)))
            fpr_95[j] = float(stats.beta.ppf(0.95, n + 1 - k, k))
    if n:
        scale = np.quantile(v, 0.75, axis=0) - np.quantile(v, 0.25, axis=0)
        spread = v.std(axis=0)
        scale = np.where(scale > 1e-6, scale, np.where(spread > 1e-6, spread, 1.0))
    else:
        scale = np.ones(len(VIEWS))
    return {"fusion": "or", "or_center": (center * sign).astype(np.float32),
            "or_scale": scale.astype(np.float32), "or_alpha": alphas, "or_rank": rank,
            "or_fpr_95": fpr_95, "or_n": int(n)}


def record(twin: tuple[np.ndarray, np.ndarray], fusion: Mapping[str, Any]) -> dict[str, Any]:
    return {"views": list(VIEWS), "clip": SQUEEZE_CLIP, "twin_target_sum": TWIN_TARGET_SUM,
            "twin_weight": twin[0], "twin_bias": twin[1], **fusion}


def check_record(rec: Mapping[str, Any], n_genes: int, n_classes: int) -> None:
    """Shapes of a stored consistency detector, with a clear error."""
    shapes = {"twin_weight": (n_classes, n_genes), "twin_bias": (n_classes,),
              "feature_mean": (len(VIEWS),), "feature_scale": (len(VIEWS),),
              "coef": (len(VIEWS),)}
    for key, shape in shapes.items():
        arr = np.asarray(rec.get(key, np.empty(0)))
        if arr.shape != shape or arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise ScadvInputError(
                f"stored consistency detector is malformed: {key} has shape {arr.shape}, "
                f"expected {shape} finite floats. Retrain it with scadv.tl.meta_detect.")
    if not (np.asarray(rec["feature_scale"]) > 0).all():
        raise ScadvInputError("stored consistency detector is malformed: feature_scale must "
                              "be positive.")
    fusion = str(rec.get("fusion", "logistic"))
    if fusion not in FUSIONS:
        raise ScadvInputError(f"stored consistency detector is malformed: fusion must be one "
                              f"of {list(FUSIONS)}, got {fusion!r}. Retrain it with "
                              "scadv.tl.meta_detect.")
    if fusion == "or":
        for key in ("or_center", "or_scale"):
            arr = np.asarray(rec.get(key, np.empty(0)))
            if arr.shape != (len(VIEWS),) or arr.dtype.kind != "f" or not np.isfinite(
                    arr).all():
                raise ScadvInputError(
                    f"stored consistency detector is malformed: {key} has shape {arr.shape}, "
                    f"expected ({len(VIEWS)},) finite floats. Retrain it with "
                    "scadv.tl.meta_detect.")
        if not (np.asarray(rec["or_scale"]) > 0).all():
            raise ScadvInputError("stored consistency detector is malformed: or_scale must be "
                                  "positive.")
