"""The matrix a gene-level attack modifies, read without holding it densely in memory.

For scadv's own classifiers it is the model input (the z-scores of the model genes, computed
from counts batch by batch by the stored recipe); for any other classifier it is ``adata.X``
or the layer given, as stored (dense, sparse, backed or dask).

Two things are needed from it: the rows of one cluster (dense, the block the attack modifies),
and per gene the values over ALL cells (the percentiles, ranges and ranks adverSCarial's
modifications are defined by). The latter come from one pass over the cells that keeps, per
gene, only the values that differ from the gene's background value (its zero level in model
space, 0 for raw matrices):

* :class:`GeneValues` holds them sorted per gene, without the cells they belong to (4 bytes per
  value). Order statistics, and so exact percentiles, ranges and ranks over all cells, come from
  it; this is what the built-in modifications use, so an atlas's gene statistics cost a fraction
  of its non-zeros in memory.
* :meth:`AttackedMatrix.columns` rebuilds dense columns of a few genes at a time, with their
  cells, from a sparse copy (8 bytes per value). Only function modifications need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy import sparse

from ... import _rows as RW
from ... import _validate as V

#: Dense (all cells × genes) blocks of columns are built up to this size.
COLUMN_BLOCK_BYTES = 256 * 2**20


class AttackedMatrix:
    """Cells × attacked genes, read by rows (clusters) or by columns (all cells)."""

    def __init__(self, fetch: Callable[[np.ndarray], np.ndarray | sparse.spmatrix], n_obs: int,
                 n_genes: int, background: np.ndarray, label: str) -> None:
        self._fetch = fetch
        self.n_obs, self.n_genes = int(n_obs), int(n_genes)
        #: Per gene, the value most cells hold (zero expression).
        self.background = np.asarray(background, dtype=np.float32)
        self.label = label
        self._columns: sparse.csc_matrix | None = None
        self._values: GeneValues | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_genes

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 rows of the cells at positions ``idx``."""
        RW.check_fits(len(idx) * self.n_genes * 4, what=f"{len(idx)} cells of {self.label}",
                      hint="Attack a smaller cluster, or subsample its cells.")
        out = np.empty((len(idx), self.n_genes), dtype=np.float32)
        for lo in range(0, len(idx), RW.BATCH):
            part = idx[lo:lo + RW.BATCH]
            out[lo:lo + len(part)] = V.dense(self._fetch(part))
        V.check_finite(out, what=self.label)
        return out

    def _store(self) -> sparse.csc_matrix:
        """Values that differ from the background, all cells × genes (one pass, cached)."""
        if self._columns is None:
            parts = []
            for lo in range(0, self.n_obs, RW.BATCH):
                block = self._fetch(np.arange(lo, min(lo + RW.BATCH, self.n_obs)))
                if V.is_sparse(block) and not self.background.any():
                    part = sparse.csr_matrix(block, dtype=np.float32)
                else:
                    dense = V.dense(block)
                    V.check_finite(dense, what=self.label)
                    keep = dense != self.background[None, :]
                    r, c = np.nonzero(keep)
                    part = sparse.csr_matrix((dense[r, c], (r, c)), shape=dense.shape,
                                             dtype=np.float32)
                parts.append(part)
            stacked = sparse.vstack(parts, format="csr") if parts else sparse.csr_matrix(
                (0, self.n_genes), dtype=np.float32)
            self._columns = sparse.csc_matrix(stacked)
        return self._columns

    def columns(self, cols: np.ndarray) -> np.ndarray:
        """Dense float32 values of genes ``cols`` over all cells (exactly as stored)."""
        RW.check_fits(self.n_obs * len(cols) * 4, what="these genes over all cells",
                      hint="Attack fewer genes at a time (genes=...).")
        store = self._store()[:, cols]
        out = np.empty((self.n_obs, len(cols)), dtype=np.float32)
        out[:] = self.background[cols][None, :]
        coo = store.tocoo()
        out[coo.row, coo.col] = coo.data
        return out

    def gene_values(self) -> GeneValues:
        """Every gene's values over all cells, sorted (one pass over the cells, cached)."""
        if self._values is None:
            self._values = GeneValues.collect(
                (self._fetch(np.arange(lo, min(lo + RW.BATCH, self.n_obs)))
                 for lo in range(0, self.n_obs, RW.BATCH)),
                n_obs=self.n_obs, background=self.background, label=self.label)
        return self._values

    def column_step(self, n_cols: int) -> int:
        """How many genes' columns over all cells to build at once."""
        return max(1, min(n_cols, COLUMN_BLOCK_BYTES // max(self.n_obs * 4, 1)))


class GeneValues:
    """Per gene, its values over all cells in sorted order, held without the background.

    Each gene's column is its ``n_background`` cells at the background value plus its other
    values (sorted, in one flat float32 array cut by ``offsets``). Any order statistic of the
    full column follows exactly, and so do :mod:`numpy`'s linear percentiles.
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray, n_obs: int,
                 background: np.ndarray) -> None:
        self.values = values
        self.offsets = offsets
        self.n_obs = int(n_obs)
        self.background = np.asarray(background, dtype=np.float32)
        n_other = np.diff(offsets)
        #: Per gene: its cells at the background value.
        self.n_background = self.n_obs - n_other
        #: Per gene: its values below the background (they come first in the sorted column).
        self.n_below = np.array([
            np.searchsorted(values[offsets[j]:offsets[j + 1]], self.background[j], side="left")
            for j in range(len(n_other))], dtype=np.int64)

    @classmethod
    def collect(cls, blocks: Iterator[np.ndarray | sparse.spmatrix], *, n_obs: int,
                background: np.ndarray, label: str) -> GeneValues:
        """One pass over row blocks; 4 bytes per non-background value are kept (plus 2–4 more
        per value of one block while it is placed)."""
        background = np.asarray(background, dtype=np.float32)
        n_genes = len(background)
        index_dtype = np.uint16 if n_genes <= np.iinfo(np.uint16).max + 1 else np.int32
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        counts = np.zeros(n_genes, dtype=np.int64)
        for block in blocks:
            if V.is_sparse(block) and not background.any():
                csr = sparse.csr_matrix(block, dtype=np.float32)
                csr.eliminate_zeros()
                V.check_finite(csr, what=label)
                col, val = csr.indices, csr.data
            else:
                dense = V.dense(block)
                V.check_finite(dense, what=label)
                r, col = np.nonzero(dense != background[None, :])
                val = dense[r, col]
            col = col.astype(index_dtype)
            counts += np.bincount(col, minlength=n_genes)
            parts.append((col, np.asarray(val, dtype=np.float32)))
        offsets = np.zeros(n_genes + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.float32)
        cursor = offsets[:-1].copy()
        while parts:  # place each block's values in its genes' segments, freeing it as we go
            col, val = parts.pop(0)
            order = np.argsort(col, kind="stable")
            col_sorted = col[order]
            per_gene = np.bincount(col_sorted, minlength=n_genes)
            first = np.zeros(n_genes, dtype=np.int64)
            np.cumsum(per_gene[:-1], out=first[1:])
            pos = cursor[col_sorted] + (np.arange(len(col_sorted)) - first[col_sorted])
            values[pos] = val[order]
            cursor += per_gene
        for j in range(n_genes):
            values[offsets[j]:offsets[j + 1]].sort()
        return cls(values, offsets, n_obs, background)

    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes)

    def order_stat(self, cols: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Values at sorted positions ``pos`` (…, len(cols)) of the genes ``cols``'s columns."""
        cols = np.asarray(cols, dtype=np.int64)
        pos = np.asarray(pos, dtype=np.int64)
        below = self.n_below[cols]
        n_bg = self.n_background[cols]
        in_bg = (pos >= below) & (pos < below + n_bg)
        other = np.where(pos < below, pos, pos - n_bg)
        other = np.clip(other, 0, np.maximum(np.diff(self.offsets)[cols] - 1, 0))
        flat = self.offsets[cols] + other
        got = self.values[np.clip(flat, 0, max(len(self.values) - 1, 0))] if len(
            self.values) else np.zeros(flat.shape, dtype=np.float32)
        return np.where(in_bg, self.background[cols], got).astype(np.float32)

    def percentile(self, cols: np.ndarray, q: float) -> np.ndarray:
        """Per gene, :func:`numpy.percentile` (linear) of its column: the same values."""
        h = (self.n_obs - 1) * (np.float64(q) / 100)
        lo = int(np.floor(h))
        hi = min(lo + 1, self.n_obs - 1)
        g = float(h - lo)  # a Python float, as numpy uses it: the arithmetic stays float32
        a = self.order_stat(cols, np.full(len(cols), lo))
        b = self.order_stat(cols, np.full(len(cols), hi))
        diff = b - a
        out = a + diff * g
        if g >= 0.5:
            out = b - diff * (1 - g)
        return np.asarray(out, dtype=np.float32)

    def minimum(self, cols: np.ndarray) -> np.ndarray:
        return self.order_stat(cols, np.zeros(len(cols)))

    def maximum(self, cols: np.ndarray) -> np.ndarray:
        return self.order_stat(cols, np.full(len(cols), self.n_obs - 1))

    def rank(self, cols: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(cells × genes) how many of all cells hold a strictly smaller value than ``x``."""
        out = np.empty(x.shape, dtype=np.int64)
        for j, c in enumerate(np.asarray(cols, dtype=np.int64)):
            seg = self.values[self.offsets[c]:self.offsets[c + 1]]
            out[:, j] = np.searchsorted(seg, x[:, j], side="left")
            out[:, j] += np.where(self.background[c] < x[:, j], self.n_background[c], 0)
        return out


def from_source(fetch: Callable[[np.ndarray], np.ndarray], n_obs: int, n_genes: int,
                zero_level: np.ndarray, label: str) -> AttackedMatrix:
    """The model input of a stored classifier (background: each gene's zero level)."""
    return AttackedMatrix(fetch, n_obs, n_genes, zero_level, label)


def from_matrix(x: Any, label: str) -> AttackedMatrix:
    """A matrix of the AnnData as stored (background 0)."""
    return AttackedMatrix(lambda idx: RW.read(x, idx), int(x.shape[0]), int(x.shape[1]),
                          np.zeros(int(x.shape[1]), dtype=np.float32), label)
