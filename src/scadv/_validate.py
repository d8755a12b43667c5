"""Input checks shared by every public function. Each error names the problem and the fix."""

from __future__ import annotations

from typing import Literal, TypeGuard

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._errors import ScadvInputError

DataKind = Literal["counts", "lognorm", "scaled"]

#: Largest value a log1p-normalised matrix plausibly holds (log1p(1e6) ≈ 13.8).
_MAX_LOGNORM = 30.0
#: A z-scored matrix has many negative values; fewer than this fraction means corruption.
_MIN_NEGATIVE_FRACTION = 0.01


def start(adata: AnnData, *, copy: bool, modifies: bool = True) -> AnnData:
    """Validate the AnnData a public function received and return the object to work on.

    With ``copy=True`` the work happens on a copy (a view is fine then); otherwise a view is
    refused when the function modifies ``adata``, because writing into a view silently copies
    it and the caller's object would not see the results.
    """
    if not isinstance(adata, AnnData):
        raise ScadvInputError(
            f"expected an AnnData as first argument, got {type(adata).__name__}. "
            "Read your data with anndata.read_h5ad / scanpy.read_10x_mtx first."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ScadvInputError(
            f"the AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes). "
            "Check the filtering that produced it."
        )
    if copy:
        return adata.copy()
    if modifies and adata.is_view:
        raise ScadvInputError(
            "adata is a view (a subset such as adata[mask]); results written into a view would "
            "not reach your object. Make it real first: adata = adata[mask].copy(), "
            "or pass copy=True."
        )
    return adata


def matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """``adata.X`` or ``adata.layers[layer]``, with a clear error for an unknown layer."""
    if layer is None:
        if adata.X is None:
            raise ScadvInputError("adata.X is empty (None). Put the expression matrix in X.")
        return adata.X
    if layer not in adata.layers:
        raise ScadvInputError(
            f"layer {layer!r} not found; adata.layers has {sorted(adata.layers)}. "
            "Pass one of those, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def is_sparse(x: object) -> TypeGuard[sparse.spmatrix]:
    """:func:`scipy.sparse.issparse` as a type guard: scipy ships no type information, so its
    own ``issparse`` does not tell the type checker which branch holds the sparse matrix."""
    return bool(sparse.issparse(x))


def dense(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """A dense float32 copy-free view where possible: ``toarray()`` of a sparse matrix, the
    array itself otherwise."""
    if is_sparse(x):
        return np.asarray(x.toarray(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def _values(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """The stored values of a matrix (the non-zeros of a sparse one)."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def check_finite(
    x: np.ndarray | sparse.spmatrix, *, what: str, adata: AnnData | None = None
) -> None:
    """Raise if ``x`` holds NaN or infinite values, naming the first offending cell and gene."""
    vals = _values(x)
    if vals.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(vals)
    if not bad.any():
        return
    n_nan = int(np.isnan(vals).sum())
    n_inf = int(bad.sum()) - n_nan
    where = ""
    if adata is not None:
        if sparse.issparse(x):
            coo = sparse.coo_matrix(x)
            first = int(np.flatnonzero(~np.isfinite(coo.data))[0])
            i, j = int(coo.row[first]), int(coo.col[first])
        else:
            i, j = (int(v) for v in np.argwhere(~np.isfinite(np.asarray(x)))[0])
        where = f" (first at cell {adata.obs_names[i]!r}, gene {adata.var_names[j]!r})"
    raise ScadvInputError(
        f"{what} contains {n_nan} NaN and {n_inf} infinite values{where}. "
        "scadv needs finite expression values: remove those cells/genes or fix the upstream step "
        "that produced them (e.g. a division by a zero library size)."
    )


def is_integer_valued(x: np.ndarray | sparse.spmatrix) -> bool:
    """True when every stored value is a whole number."""
    vals = _values(x)
    if vals.dtype.kind in "iub":
        return True
    return bool(np.all(vals == np.round(vals)))


def check_counts(x: np.ndarray | sparse.spmatrix, *, what: str) -> None:
    """Raise unless ``x`` holds non-negative whole numbers (raw UMI / read counts)."""
    vals = _values(x)
    if vals.size and vals.min() < 0:
        raise ScadvInputError(
            f"{what} has negative values (min {vals.min():.3g}), but raw counts are needed here. "
            "Pass the count matrix (e.g. layer='counts') or the raw AnnData."
        )
    if not is_integer_valued(x):
        frac = vals[vals != np.round(vals)]
        raise ScadvInputError(
            f"{what} has non-integer values (e.g. {frac[0]:.4g}), but raw counts are needed here. "
            "Pass the count matrix (e.g. layer='counts'), not normalised or log-transformed data."
        )


def detect_kind(x: np.ndarray | sparse.spmatrix, *, what: str) -> DataKind:
    """Classify a matrix as raw ``'counts'``, ``'lognorm'`` (log1p-normalised) or ``'scaled'``.

    Rules: negative values (at least 1% of the stored values) → scaled (z-scored); a few
    stray negatives → error; non-negative whole numbers → counts;
    non-negative fractional values up to 30 → log-normalised. Anything else (e.g. normalised
    but not log-transformed) is refused, since guessing would silently mis-transform it.
    """
    vals = _values(x)
    if vals.size == 0:
        return "counts"
    n_neg = int((vals < 0).sum())
    if n_neg:
        if n_neg < _MIN_NEGATIVE_FRACTION * vals.size:
            raise ScadvInputError(
                f"{what} has {n_neg} negative values among {vals.size} otherwise non-negative "
                "ones: it is neither counts (never negative) nor z-scored data (about half "
                "negative). Check how it was made; pass raw counts if you have them."
            )
        return "scaled"
    if is_integer_valued(x):
        return "counts"
    if vals.max() <= _MAX_LOGNORM:
        return "lognorm"
    raise ScadvInputError(
        f"{what} holds non-negative, non-integer values up to {vals.max():.4g}: it looks "
        "normalised but not log-transformed. Pass raw counts, or run sc.pp.log1p first."
    )


def labels(adata: AnnData, label_key: str) -> pd.Series:
    """``adata.obs[label_key]`` as strings with missing labels as NaN, with clear errors."""
    if not isinstance(label_key, str):
        raise ScadvInputError(f"label_key must be the name of an obs column, got {label_key!r}.")
    if label_key not in adata.obs:
        raise ScadvInputError(
            f"label key {label_key!r} not found in adata.obs (columns: {list(adata.obs.columns)}). "
            "Pass the column holding cell types or clusters, e.g. label_key='leiden' after "
            "sc.tl.leiden(adata)."
        )
    col = adata.obs[label_key]
    out = col.astype(object).where(col.notna(), other=np.nan)
    return out.map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v))
