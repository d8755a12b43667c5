"""The matrix a gene-level attack modifies, read without holding it densely in memory.

For scadv's own classifiers it is the model input (the z-scores of the model genes, computed
from counts batch by batch by the stored recipe); for any other classifier it is ``adata.X``
or the layer given, as stored (dense, sparse, backed or dask).

Two things are needed from it: the rows of one cluster (dense, the block the attack modifies),
and per gene the values over ALL cells (the percentiles, ranges and ranks adverSCarial's
modifications are defined by). The latter come from one pass over the cells that keeps, per
gene, only the values that differ from the gene's background value (its zero level in model
space, 0 for raw matrices): a sparse copy, from which dense columns of a few genes at a time
are rebuilt exactly.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def column_step(self, n_cols: int) -> int:
        """How many genes' columns over all cells to build at once."""
        return max(1, min(n_cols, COLUMN_BLOCK_BYTES // max(self.n_obs * 4, 1)))


def from_source(fetch: Callable[[np.ndarray], np.ndarray], n_obs: int, n_genes: int,
                zero_level: np.ndarray, label: str) -> AttackedMatrix:
    """The model input of a stored classifier (background: each gene's zero level)."""
    return AttackedMatrix(fetch, n_obs, n_genes, zero_level, label)


def from_matrix(x: Any, label: str) -> AttackedMatrix:
    """A matrix of the AnnData as stored (background 0)."""
    return AttackedMatrix(lambda idx: RW.read(x, idx), int(x.shape[0]), int(x.shape[1]),
                          np.zeros(int(x.shape[1]), dtype=np.float32), label)
