"""Per-gene statistics of a whole expression matrix in one or two streaming passes, and the
highly-variable-gene selections of :func:`scanpy.pp.highly_variable_genes` computed from them.

:func:`scadv.pp.prepare` never holds more than one batch of cells in memory: it reads the
matrix (in memory, backed on disk, or dask) batch by batch and accumulates, per gene, the sums
and sums of squares it needs. The selections reproduce scanpy's ``seurat_v3``, ``seurat`` and
``cell_ranger`` flavours (single batch, ``n_top_genes``) from those sums: the same formulas, in
the same floating-point precision (checked against scanpy in the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _progress as PB
from .. import _recipe as R
from .. import _rows as RW
from .. import _validate as V
from .._errors import ScadvInputError

Flavor = Literal["seurat_v3", "seurat", "cell_ranger"]


@dataclass
class Moments:
    """Running per-column sum and sum of squares (float64, squares taken in the data's own
    precision, as scanpy does) over the rows seen so far."""

    n_vars: int
    total: np.ndarray = field(init=False)
    total_sq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros(self.n_vars)
        self.total_sq = np.zeros(self.n_vars)

    def add(self, block: np.ndarray | sparse.csr_matrix) -> None:
        if V.is_sparse(block):
            data = np.asarray(block.data)
            cols = np.asarray(block.indices)
            self.total += np.bincount(cols, weights=data, minlength=self.n_vars)
            self.total_sq += np.bincount(cols, weights=data * data, minlength=self.n_vars)
        else:
            self.total += block.sum(axis=0, dtype=np.float64)
            self.total_sq += (block * block).sum(axis=0, dtype=np.float64)

    def mean_var(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased variance (scanpy's ``_get_mean_var``)."""
        mean = self.total / n
        var = self.total_sq / n - mean**2
        if n != 1:
            var *= n / (n - 1)
        return mean, var


@dataclass
class Pass1:
    """What one pass over the cells collects (see :func:`first_pass`)."""

    n_obs: int
    #: Cells in which each gene is detected (value > 0).
    detected: np.ndarray
    #: Total counts per cell over all genes (counts input), else None.
    library_size: np.ndarray | None
    #: Moments of the raw counts (counts input; for seurat_v3).
    counts: Moments | None
    #: Moments of the log-normalised values (z-score statistics).
    lognorm: Moments
    #: Moments of expm1(log-normalised) (the ``seurat`` / ``cell_ranger`` flavours).
    normalised: Moments
    #: Per gene, the largest and the smallest log-normalised value.
    lognorm_max: np.ndarray
    lognorm_min: np.ndarray


def _column_extremes(block: np.ndarray | sparse.csr_matrix, n_vars: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-column max and min of a block (implicit zeros count as values)."""
    if not sparse.issparse(block):
        return block.max(axis=0), block.min(axis=0)
    csc = sparse.csc_matrix(block)
    hi = np.zeros(n_vars, dtype=np.float64)
    lo = np.zeros(n_vars, dtype=np.float64)
    nnz = np.diff(csc.indptr)
    has = np.flatnonzero(nnz)
    if len(has):
        starts = csc.indptr[:-1][has]
        hi_vals = np.maximum.reduceat(csc.data, starts)
        lo_vals = np.minimum.reduceat(csc.data, starts)
        full = nnz[has] == block.shape[0]  # no implicit zero in that column
        hi[has] = np.where(full, hi_vals, np.maximum(hi_vals, 0))
        lo[has] = np.where(full, lo_vals, np.minimum(lo_vals, 0))
    return hi, lo


def first_pass(x: Any, *, kind: Literal["counts", "lognorm"], target_sum: float,
               check: Callable[[Any, np.ndarray], None], progress: bool,
               batch_size: int = RW.BATCH) -> Pass1:
    """Stream over all cells of ``x`` once and collect every per-gene statistic ``prepare``
    needs. ``check(block, cell_positions)`` validates each block (finite, counts …)."""
    n_obs, n_vars = int(x.shape[0]), int(x.shape[1])
    detected = np.zeros(n_vars, dtype=np.int64)
    counts = Moments(n_vars) if kind == "counts" else None
    lognorm, normalised = Moments(n_vars), Moments(n_vars)
    hi = np.full(n_vars, -np.inf)
    lo = np.full(n_vars, np.inf)
    library = np.empty(n_obs, dtype=np.float64) if kind == "counts" else None
    bar = PB.bar(total=n_obs, desc="prepare: statistics", unit="cell", progress=progress)
    for start in range(0, n_obs, batch_size):
        stop = min(start + batch_size, n_obs)
        block = RW.read(x, slice(start, stop))
        check(block, np.arange(start, stop))
        if sparse.issparse(block):
            block = sparse.csr_matrix(block, dtype=np.float32)
            detected += np.bincount(block.indices[block.data > 0], minlength=n_vars)
        else:
            block = np.asarray(block, dtype=np.float32)
            detected += (block > 0).sum(axis=0)
        if kind == "counts":
            lib = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
            library[start:stop] = lib  # type: ignore[index]
            counts.add(block)  # type: ignore[union-attr]
            ln = R.lognormalize(block, target_sum=target_sum, library_size=lib)
        else:
            ln = block
        lognorm.add(ln)
        normalised.add(ln.expm1() if V.is_sparse(ln) else np.expm1(ln))
        bhi, blo = _column_extremes(ln, n_vars)
        np.maximum(hi, bhi, out=hi)
        np.minimum(lo, blo, out=lo)
        bar.update(stop - start)
    bar.close()
    return Pass1(n_obs, detected, library, counts, lognorm, normalised, hi, lo)


def clipped_moments(x: Any, clip: np.ndarray, cols: np.ndarray, *, progress: bool,
                    batch_size: int = RW.BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Per gene of ``cols``: sum and sum of squares of ``min(count, clip)`` over all cells
    (float64), the second pass of ``seurat_v3``."""
    n_obs, n_vars = int(x.shape[0]), int(x.shape[1])
    clip_all = np.full(n_vars, np.inf)
    clip_all[cols] = clip
    total = np.zeros(n_vars)
    total_sq = np.zeros(n_vars)
    bar = PB.bar(total=n_obs, desc="prepare: seurat_v3", unit="cell", progress=progress)
    for start in range(0, n_obs, batch_size):
        stop = min(start + batch_size, n_obs)
        block = RW.read(x, slice(start, stop))
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
            vals = np.minimum(block.data.astype(np.float64), clip_all[block.indices])
            total += np.bincount(block.indices, weights=vals, minlength=n_vars)
            total_sq += np.bincount(block.indices, weights=vals**2, minlength=n_vars)
        else:
            vals = np.minimum(np.asarray(block, dtype=np.float64), clip_all[None, :])
            total += vals.sum(axis=0)
            total_sq += (vals**2).sum(axis=0)
        bar.update(stop - start)
    bar.close()
    return total[cols], total_sq[cols]


# ---- the flavours -----------------------------------------------------------------------------


def seurat_v3(stats: Pass1, x: Any, cand: np.ndarray, n_top_genes: int, *, progress: bool,
              span: float = 0.3) -> np.ndarray:
    """Seurat's *vst* (scanpy's ``seurat_v3``) on the candidate genes ``cand`` of counts ``x``:
    a boolean mask over ``cand``. Raises ``ValueError`` when the loess fit is impossible."""
    if stats.counts is None:
        raise ValueError("seurat_v3 needs counts")
    n = stats.n_obs
    mean, var = stats.counts.mean_var(n)
    mean, var = mean[cand], var[cand]
    not_const = var > 0
    # the loess fit of log variance on log mean needs spread in both (a constant or
    # near-constant matrix crashes it natively): refuse it here instead
    if not_const.sum() < 10 or np.unique(np.round(np.log10(mean[not_const]), 6)).size < 10:
        raise ValueError("too few genes with distinct, non-zero mean and variance for the "
                         "loess fit of seurat_v3")
    from skmisc.loess import loess

    estimat_var = np.zeros(len(cand), dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
    model.fit()
    estimat_var[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimat_var)
    clip = reg_std * np.sqrt(n) + mean
    total, total_sq = clipped_moments(x, clip, cand, progress=progress)
    norm_var = (1 / ((n - 1) * np.square(reg_std))) * (
        (n * np.square(mean)) + total_sq - 2 * total * mean)
    ranked = np.argsort(np.argsort(-norm_var)).astype(np.float32)
    ranked[ranked >= n_top_genes] = np.nan
    df = pd.DataFrame({"rank": ranked})
    order = df.sort_values("rank", na_position="last", kind="quicksort").index
    mask = np.zeros(len(cand), dtype=bool)
    mask[np.asarray(order[:int(n_top_genes)])] = True
    return mask


def dispersion(stats: Pass1, cand: np.ndarray, n_top_genes: int,
               flavor: Literal["seurat", "cell_ranger"], n_bins: int = 20) -> np.ndarray:
    """scanpy's dispersion-based ``seurat`` / ``cell_ranger`` selection on the candidate genes:
    a boolean mask over ``cand``. ``seurat`` works on the normalised values (``expm1`` of the
    log-normalised ones), ``cell_ranger`` on the log-normalised values, as in scanpy."""
    moments = stats.normalised if flavor == "seurat" else stats.lognorm
    mean, var = moments.mean_var(stats.n_obs)
    mean, var = mean[cand].copy(), var[cand]
    mean[mean == 0] = 1e-12
    disp = var / mean
    if flavor == "seurat":
        disp[disp == 0] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN stays NaN, as in scanpy
            disp = np.log(disp)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": disp})
    if flavor == "seurat":
        bins: Any = n_bins
    else:
        bins = np.r_[-np.inf, np.percentile(mean, np.arange(10, 105, 5)), np.inf]
    df["mean_bin"] = pd.cut(df["means"], bins=bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        bin_stats = grouped.agg(avg="mean", dev="std")
        single = bin_stats["dev"].isnull()
        bin_stats.loc[single, "dev"] = bin_stats.loc[single, "avg"]
        bin_stats.loc[single, "avg"] = 0
    else:
        bin_stats = grouped.agg(avg="median", dev=_mad)
    per_gene = bin_stats.loc[df["mean_bin"]].set_index(df.index)
    norm = ((df["dispersions"] - per_gene["avg"]) / per_gene["dev"]).to_numpy(dtype=np.float64)
    finite = norm[~np.isnan(norm)]
    if finite.size == 0:
        raise ScadvInputError(
            "no gene varies between cells (every normalised dispersion is undefined): the "
            "expression matrix looks constant. scadv needs real expression data.")
    n = min(int(n_top_genes), finite.size)
    cutoff = np.sort(finite)[::-1][n - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cutoff


def _mad(a: pd.Series) -> float:
    """Median absolute deviation scaled to the normal's standard deviation (statsmodels' mad,
    which scanpy's cell_ranger flavour uses)."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return float("nan")
    return float(np.median(np.abs(arr - np.median(arr))) / 0.6744897501960817)
