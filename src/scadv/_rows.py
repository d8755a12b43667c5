"""Reading rows (cells) of any expression matrix, a batch at a time.

scadv never needs a whole cells × genes matrix in memory: every tool reads the cells it works
on in batches. The matrix may be

* in memory: a numpy array or a scipy sparse matrix (CSR is read fastest; CSC works),
* on disk: the ``X`` or a layer of an AnnData opened with ``read_h5ad(..., backed='r')``
  (an h5py dataset or anndata's backed sparse dataset), or
* lazy: a dask array (e.g. from :func:`anndata.experimental.read_lazy`).

:func:`read` returns the requested rows as an in-memory CSR matrix or numpy array, in the
requested order; :func:`chunks` splits a selection of cells into contiguous runs so that
disk reads are sequential.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import sparse

from ._errors import ScadvInputError

#: Default number of cells per batch when streaming over a matrix (a batch of 8,192 cells of
#: 2,000 model genes is 64 MB as dense float32; of 30,000 sparse genes a few MB of non-zeros).
BATCH = 8192


def is_dask(x: object) -> bool:
    """Whether ``x`` is a dask array (without importing dask)."""
    return type(x).__module__.split(".")[0] == "dask"


def is_backed(x: object) -> bool:
    """Whether ``x`` lives on disk (an h5py / zarr dataset or anndata's backed sparse matrix)."""
    mod = type(x).__module__
    return mod.startswith(("h5py", "zarr", "anndata._core.sparse_dataset")) or \
        type(x).__name__.endswith("Dataset")


def in_memory(x: object) -> bool:
    """Whether ``x`` is a numpy array or a scipy sparse matrix."""
    return isinstance(x, np.ndarray) or sparse.issparse(x)


def n_rows(x: Any) -> int:
    return int(x.shape[0])


def read(x: Any, idx: np.ndarray | slice) -> np.ndarray | sparse.csr_matrix:
    """Rows ``idx`` of ``x`` (in that order) as a numpy array or a CSR matrix.

    ``idx`` is a slice or an array of row positions (any order, repeats allowed). Disk and
    dask matrices are read in ascending order (as their formats require) and reordered here.
    """
    if isinstance(idx, slice):
        out = x[idx]
        return _materialise(out)
    idx = np.asarray(idx, dtype=np.int64)
    if in_memory(x):
        out = x[idx]
        return sparse.csr_matrix(out) if sparse.issparse(out) and out.format != "csr" else out
    if idx.size == 0:
        return _materialise(x[0:0])
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    uniq, inverse = np.unique(sorted_idx, return_inverse=True)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo == len(uniq):  # a contiguous run: one sequential read
        block = _materialise(x[lo:hi])
    else:
        block = _materialise(x[uniq])
    rows = np.empty(len(idx), dtype=np.int64)
    rows[order] = inverse
    return block[rows]


def _materialise(out: Any) -> np.ndarray | sparse.csr_matrix:
    if is_dask(out):
        out = out.compute()
    if sparse.issparse(out):
        return out if out.format == "csr" else sparse.csr_matrix(out)
    return np.asarray(out)


def chunks(idx: np.ndarray, batch_size: int = BATCH) -> Iterator[np.ndarray]:
    """Split sorted row positions into batches of at most ``batch_size`` rows."""
    for lo in range(0, len(idx), batch_size):
        yield idx[lo:lo + batch_size]


def sample_rows(n: int, k: int = 2000) -> np.ndarray:
    """A deterministic spread of at most ``k`` row positions among ``n`` (for quick checks of a
    large matrix's kind: counts, log-normalised or scaled)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).astype(np.int64))


def stored_values(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """The stored values of an in-memory matrix (the non-zeros of a sparse one)."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def physical_memory() -> int:
    """Bytes of physical memory of this machine (0 if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0


def fits(n_bytes: int) -> bool:
    """Whether ``n_bytes`` may be allocated at once (at most half of the machine's memory)."""
    limit = physical_memory() // 2
    return not limit or n_bytes <= limit


def check_fits(n_bytes: int, *, what: str, hint: str) -> None:
    """Refuse to allocate more than half of the machine's memory at once, saying how much the
    step would take and how to avoid it."""
    limit = physical_memory() // 2
    if limit and n_bytes > limit:
        raise ScadvInputError(
            f"{what} would need {size(n_bytes)} in memory at once, more than half of this "
            f"machine's {size(2 * limit)}. {hint}"
        )


def size(n_bytes: float) -> str:
    """A number of bytes for people: ``'1.5 GiB'``, ``'320 MiB'``, ``'12 KiB'``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}" if unit == "GiB" else \
                f"{n_bytes / scale:.0f} {unit}"
    return f"{int(n_bytes)} B"
