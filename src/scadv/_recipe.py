"""The preprocessing recipe: how expression becomes the model's input, for old and new cells.

A recipe is the plain dictionary :func:`scadv.pp.prepare` stores in
``adata.uns['scadv']['prepare']`` and every classifier carries a copy of. Both ``prepare`` and
the application to new data go through :func:`lognorm_to_model`, so a cell transformed later
is transformed exactly like the training cells were.

Keys
----
``input_kind``
    What ``prepare`` received: ``'counts'``, ``'lognorm'`` or ``'scaled'``.
``genes``
    Model genes, in the model's input order.
``mean``, ``std``
    Per-gene z-score statistics of the log-normalised data (``std`` of constant genes is 1).
``has_stats``
    False only for already-scaled input without a log-normalised ``.raw`` to take statistics
    from; such a model can only be applied to data scaled the same way.
``max_value``
    Clip of the z-scores to ``[-max_value, max_value]`` (0: no clip).
``clip``
    Optional: ``'both'`` (default when absent) clips to ``[-max_value, max_value]``;
    ``'upper'`` only caps at ``max_value``, as CellTypist does.
``target_sum``
    Library size each cell is normalised to before ``log1p`` (counts input).
``zero_level``
    Per gene, the model-space value of zero expression (for "keep zeros at zero" attacks).
``x_min``, ``x_max``
    Per gene, the observed range in model space over the prepared cells.
``std_floor``, ``min_detection``, ``zscore``
    Robust preprocessing options of :func:`scadv.pp.prepare` (absent in older recipes: no
    floor, no detection threshold, z-scored). They change only the stored statistics: the
    floor is already applied to ``std``; with ``zscore=False`` ``mean`` and ``std`` are 0 and
    1. :func:`lognorm_to_model` is the same function for every option.
``lognorm_mean``, ``lognorm_std``
    The genes' log-normalised mean and standard deviation as measured (before any floor;
    equal to ``mean`` / ``std`` for the default options). Absent in older recipes.
``detection``
    Per model gene, the fraction of the prepared cells with a value > 0.
``library_min``, ``library_max``, ``library_median``
    The observed range and median of the library sizes of the prepared cells (counts input;
    the default library-size range of :func:`scadv.tl.count_attack`).
``layer``
    The matrix :func:`scadv.pp.prepare` read (``'None'``: ``X``); the model input of the
    prepared AnnData itself is computed from it.
``x_is_model_input``
    Whether ``prepare`` wrote the model input into ``X`` (``subset=True``, or already-scaled
    input). Absent in recipes of scadv 0.1, whose ``prepare`` always did.

The model input of any AnnData is computed batch by batch by :func:`source`, never as a whole
unless asked (:func:`model_input`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from scipy import sparse

from . import _keys as K
from . import _records as REC
from . import _rows as RW
from . import _validate as V
from ._errors import ScadvInputError

MissingGenes = Literal["error", "mean"]


def lognormalize(counts: np.ndarray | sparse.spmatrix, *, target_sum: float,
                 library_size: np.ndarray | None = None) -> sparse.csr_matrix | np.ndarray:
    """``log1p(counts / library_size * target_sum)``, sparse in, sparse out.

    ``library_size`` defaults to each cell's total over all columns of ``counts``.
    """
    if library_size is None:
        library_size = np.asarray(counts.sum(axis=1)).ravel()
    library_size = np.asarray(library_size, dtype=np.float64)
    empty = library_size <= 0
    if empty.any():
        raise ScadvInputError(
            f"{int(empty.sum())} cells have zero total counts, so they cannot be normalised. "
            "Remove them first: sc.pp.filter_cells(adata, min_counts=1)."
        )
    scale = (target_sum / library_size).astype(np.float32)
    if sparse.issparse(counts):
        out = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
        out = sparse.csr_matrix(sparse.diags(scale) @ out)
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(counts, dtype=np.float32) * scale[:, None])


def lognorm_to_model(lognorm: np.ndarray | sparse.spmatrix, recipe: Mapping[str, Any]
                     ) -> np.ndarray:
    """Z-score and clip log-normalised expression of the model genes (columns aligned)."""
    x = lognorm.toarray() if V.is_sparse(lognorm) else np.array(lognorm, dtype=np.float32)
    x = x.astype(np.float32, copy=False)
    mean = np.asarray(recipe["mean"], dtype=np.float32)
    std = np.asarray(recipe["std"], dtype=np.float32)
    x -= mean
    x /= std
    max_value = float(recipe["max_value"])
    if max_value > 0:
        if clip_mode(recipe) == "upper":
            np.minimum(x, max_value, out=x)
        else:
            np.clip(x, -max_value, max_value, out=x)
    return x


def clip_mode(recipe: Mapping[str, Any]) -> str:
    """``'both'`` (clip to ``±max_value``; the default) or ``'upper'`` (cap at ``max_value``)."""
    return str(recipe.get("clip", "both"))


def zscore_stats(lognorm: np.ndarray | sparse.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (ddof=1, as :func:`scanpy.pp.scale`; 0 → 1)."""
    n = lognorm.shape[0]
    if V.is_sparse(lognorm):
        mean = np.asarray(lognorm.mean(axis=0), dtype=np.float64).ravel()
        sq = np.asarray(lognorm.multiply(lognorm).mean(axis=0), dtype=np.float64).ravel()
    else:
        arr = np.asarray(lognorm, dtype=np.float64)
        mean = arr.mean(axis=0)
        sq = (arr * arr).mean(axis=0)
    var = np.maximum(sq - mean**2, 0.0) * (n / max(n - 1, 1))
    std = np.sqrt(var)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def zero_level(recipe: Mapping[str, Any]) -> np.ndarray:
    """Model-space value of zero expression per gene."""
    z = -np.asarray(recipe["mean"], dtype=np.float32) / np.asarray(recipe["std"], dtype=np.float32)
    max_value = float(recipe["max_value"])
    if max_value <= 0:
        return z
    return np.minimum(z, max_value) if clip_mode(recipe) == "upper" else np.clip(
        z, -max_value, max_value)


def fill_value(recipe: Mapping[str, Any]) -> np.ndarray:
    """Per model gene, the log-normalised value that stands for a missing gene: its training
    mean (``lognorm_mean``; ``mean`` in recipes without it)."""
    return np.asarray(recipe.get("lognorm_mean", recipe["mean"]), dtype=np.float32)


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two recipes transform data identically."""
    if a is None or b is None:
        return False
    ga, gb = np.asarray(a["genes"]).astype(str), np.asarray(b["genes"]).astype(str)
    if ga.shape != gb.shape or not np.array_equal(ga, gb):
        return False
    return (np.allclose(np.asarray(a["mean"]), np.asarray(b["mean"]))
            and np.allclose(np.asarray(a["std"]), np.asarray(b["std"]))
            and float(a["max_value"]) == float(b["max_value"])
            and clip_mode(a) == clip_mode(b)
            and float(a.get("target_sum", 1e4)) == float(b.get("target_sum", 1e4))
            and str(a["input_kind"]) == str(b["input_kind"]))


def stored(adata: AnnData) -> dict | None:
    """The recipe stored in ``adata`` by :func:`scadv.pp.prepare`, if any (validated by
    :func:`scadv._records.recipe`: a malformed one is an error, not silently ignored)."""
    ns = adata.uns.get(K.UNS)
    if isinstance(ns, Mapping) and K.PREPARE in ns:
        return dict(REC.recipe(ns[K.PREPARE]))
    return None


def align(x: np.ndarray | sparse.spmatrix, names: Sequence[str] | np.ndarray,
          genes: Sequence[str] | np.ndarray, *,
          missing_genes: MissingGenes, what: str, fill: float | np.ndarray = 0.0,
          ) -> tuple[np.ndarray | sparse.spmatrix, np.ndarray]:
    """Columns of ``x`` in the order of ``genes``; returns ``(matrix, missing_mask)``.

    Missing genes raise unless ``missing_genes='mean'``, in which case their columns are
    filled with ``fill`` (the caller chooses the value that means "training mean").
    """
    index = pd.Index(np.asarray(names).astype(str))
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ScadvInputError(
            f"{what} has duplicated gene names (e.g. {dup}); genes are matched by name. "
            "Run adata.var_names_make_unique() first."
        )
    pos = index.get_indexer(np.asarray(genes).astype(str))
    missing = pos < 0
    if missing.any():
        examples = np.asarray(genes)[missing][:8].tolist()
        if missing_genes != "mean":
            raise ScadvInputError(
                f"{int(missing.sum())} of the model's {len(genes)} genes are missing from {what} "
                f"(e.g. {examples}). Use data that measured these genes with the same gene "
                "naming (var_names), or pass missing_genes='mean' to set them to their training "
                "mean (a neutral value; predictions then rest on the remaining genes)."
            )
        logg.warning(
            f"{int(missing.sum())} of {len(genes)} model genes are missing from {what} "
            f"(e.g. {examples}); they are set to their training mean."
        )
    cols = x[:, np.where(missing, 0, pos)]
    if missing.any():
        cols = cols.toarray() if V.is_sparse(cols) else np.array(cols, dtype=np.float32)
        cols[:, missing] = np.broadcast_to(fill, (len(genes),))[missing] if np.ndim(fill) else fill
    return cols, missing



# ---- the model input of any AnnData, streamed ------------------------------------------------

SourceKind = Literal["model", "counts", "lognorm", "scaled"]


class Source:
    """The model input (cells × model genes, float32 z-scores) of an AnnData, read in batches.

    Built by :func:`source`. Nothing is computed up front: :meth:`rows` reads the requested
    cells from the underlying matrix (in memory, backed on disk, or dask), normalises counts
    by each cell's library size over all its genes, takes ``log1p``, z-scores and clips the
    model genes with the recipe — exactly :func:`lognorm_to_model` — so memory grows with the
    batch, never with the whole matrix.
    """

    def __init__(self, matrix: Any, *, kind: SourceKind, recipe: Mapping[str, Any],
                 present: np.ndarray, missing: np.ndarray, label: str, obs_names: pd.Index,
                 library_size: np.ndarray | None = None, renormalise: bool = False) -> None:
        self.matrix = matrix
        #: ``'model'`` (already model input: a classic prepared ``X`` or a model-space layer),
        #: ``'counts'``, ``'lognorm'`` or ``'scaled'`` (scaled like the training data).
        self.kind: SourceKind = kind
        self.recipe = recipe
        self.genes = np.asarray(recipe["genes"]).astype(str)
        #: Column of each present model gene in ``matrix`` (``-1``: missing gene).
        self.present = present
        #: Model genes the source lacks (filled with their training mean: z-score 0).
        self.missing = missing
        #: Where it comes from, e.g. ``'adata.X'`` or ``'adata.layers['counts']'``.
        self.label = label
        self.obs_names = obs_names
        self._library_size = library_size
        self._mean = fill_value(recipe)
        #: Log-normalised values normalised to another total than the recipe's ``target_sum``
        #: (CPM, scanpy's median normalisation, ...): each cell is brought to ``target_sum``
        #: (its values over all genes of the matrix) before the recipe is applied.
        self.renormalise = renormalise

    @property
    def n_obs(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def in_memory(self) -> bool:
        return RW.in_memory(self.matrix)

    def __repr__(self) -> str:
        gap = f", {int(self.missing.sum())} missing" if self.missing.any() else ""
        n = "?" if self.matrix is None else self.n_obs
        return (f"Source({self.label}, {self.kind}, {n} cells × {self.n_genes} model "
                f"genes{gap})")

    def template(self, cells: np.ndarray) -> Source:
        """This source restricted to the cells at positions ``cells``, without its matrix:
        what a worker needs (with :meth:`bind`) to compute their model input from their rows
        read elsewhere (e.g. a block of a dask array computed on a Dask worker)."""
        cells = np.asarray(cells, dtype=np.int64)
        lib = None if self._library_size is None else self._library_size[cells]
        return Source(None, kind=self.kind, recipe=self.recipe, present=self.present,
                      missing=self.missing, label=self.label, obs_names=self.obs_names[cells],
                      library_size=lib)

    def bind(self, block: Any) -> Source:
        """A :meth:`template` bound to its cells' rows of the underlying matrix (all its genes,
        in memory): ``bind(block).rows(np.arange(n))`` is exactly ``rows(cells)`` of the full
        source."""
        return Source(block, kind=self.kind, recipe=self.recipe, present=self.present,
                      missing=self.missing, label=self.label, obs_names=self.obs_names,
                      library_size=self._library_size)

    # ---- reading ------------------------------------------------------------------------------

    def _block(self, idx: np.ndarray | slice) -> tuple[Any, np.ndarray | None]:
        """Rows of the underlying matrix (all its genes) and their library sizes."""
        block = RW.read(self.matrix, idx)
        vals = RW.stored_values(block)
        if vals.dtype.kind in "fc" and not np.isfinite(vals).all():
            bad = _first_bad_row(block)
            cells = np.arange(self.n_obs)[idx] if isinstance(idx, slice) else np.asarray(idx)
            raise ScadvInputError(
                f"{self.label} contains NaN or infinite values (first in cell "
                f"{self.obs_names[int(cells[bad])]!r}). scadv needs finite expression values: "
                "remove those cells or fix the step that produced them.")
        lib = None
        if self.kind == "counts":
            if self._library_size is not None:
                lib = self._library_size[idx]
            else:
                lib = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        return block, lib

    def _model_genes(self, block: Any) -> np.ndarray | sparse.spmatrix:
        """The present model genes of a block, in model order, missing genes left out."""
        cols = self.present[~self.missing]
        return block[:, cols]

    def lognorm(self, idx: np.ndarray | slice) -> np.ndarray:
        """Log-normalised values of the model genes (dense float32; missing genes at their
        training mean) — the input of :func:`lognorm_to_model`."""
        if self.kind in ("model", "scaled"):
            raise ScadvInputError(
                f"{self.label} holds model-space values, not counts or log-normalised data.")
        block, lib = self._block(idx)
        sub = self._model_genes(block)
        if self.kind == "counts":
            sub = lognormalize(sub, target_sum=float(self.recipe["target_sum"]),
                               library_size=lib)
        elif self.renormalise:
            totals = lognorm_totals(block)
            factor = float(self.recipe["target_sum"]) / np.where(totals > 0, totals, 1.0)
            sub = renormalise_rows(sub, np.where(totals > 0, factor, 1.0))
        dense = sub.toarray() if V.is_sparse(sub) else np.array(sub, dtype=np.float32)
        dense = dense.astype(np.float32, copy=False)
        if not self.missing.any():
            return dense
        out = np.empty((dense.shape[0], self.n_genes), dtype=np.float32)
        out[:, ~self.missing] = dense
        out[:, self.missing] = self._mean[self.missing]
        return out

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        """Model input of cells ``idx`` (positions, any order; or a slice): dense float32,
        cells × model genes."""
        if self.kind in ("model", "scaled"):
            block, _ = self._block(idx)
            sub = self._model_genes(block)
            dense = sub.toarray() if V.is_sparse(sub) else np.asarray(sub)
            out = np.zeros((dense.shape[0], self.n_genes), dtype=np.float32)
            out[:, ~self.missing] = dense
            return out
        return lognorm_to_model(self.lognorm(idx), self.recipe)

    def batches(self, idx: np.ndarray | None = None, *, batch_size: int = RW.BATCH
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(cell positions, model input)`` for consecutive batches of the selected cells
        (all cells by default; positions are read in ascending order)."""
        cells = np.arange(self.n_obs) if idx is None else np.sort(np.asarray(idx, np.int64))
        for chunk in RW.chunks(cells, batch_size):
            lo, hi = int(chunk[0]), int(chunk[-1]) + 1
            sel: np.ndarray | slice = slice(lo, hi) if hi - lo == len(chunk) else chunk
            yield chunk, self.rows(sel)

    def dense(self, idx: np.ndarray | None = None, *, what: str = "this step",
              batch_size: int = RW.BATCH,
              hint: str = "Select fewer cells (cells=...), or use a machine with more memory."
              ) -> np.ndarray:
        """The model input of the selected cells (all by default) as one dense matrix, built
        batch by batch; a clear error (ending with ``hint``) if it would not fit in memory."""
        cells = np.arange(self.n_obs) if idx is None else np.asarray(idx, np.int64)
        RW.check_fits(len(cells) * self.n_genes * 4, what=what, hint=hint)
        out = np.empty((len(cells), self.n_genes), dtype=np.float32)
        order = np.argsort(cells, kind="stable")
        for lo in range(0, len(cells), batch_size):
            part = order[lo:lo + batch_size]
            out[part] = self.rows(cells[part])
        return out

    def counts(self, idx: np.ndarray | slice) -> tuple[sparse.csr_matrix, np.ndarray]:
        """Raw counts of the model genes of cells ``idx`` (CSR float32, missing genes as empty
        columns) and their library sizes (total counts over all the source's genes)."""
        if self.kind != "counts":
            raise ScadvInputError(
                f"raw counts are needed here, but {self.label} holds "
                f"{'model-space' if self.kind in ('model', 'scaled') else 'log-normalised'} "
                "values. Pass the AnnData with its raw counts in X or in a layer (layer=...).")
        block, lib = self._block(idx)
        sub = sparse.csr_matrix(self._model_genes(block), dtype=np.float32)
        if self.missing.any():
            pos = np.flatnonzero(~self.missing)
            sub = sparse.csr_matrix((sub.data, pos[sub.indices], sub.indptr),
                                    shape=(sub.shape[0], self.n_genes))
        if lib is None:  # pragma: no cover - counts sources always have library sizes
            raise RuntimeError("internal: a counts source without library sizes")
        return sub, lib


def _first_bad_row(block: Any) -> int:
    if V.is_sparse(block):
        csr = sparse.csr_matrix(block)
        bad = np.flatnonzero(~np.isfinite(csr.data))[0]
        return int(np.searchsorted(csr.indptr, bad, side="right") - 1)
    return int(np.argwhere(~np.isfinite(np.asarray(block)))[0][0])


#: Largest median relative deviation of the cells' totals from the recipe's ``target_sum`` that
#: is still the recipe's own normalisation (float32 log1p values sum back to within 1e-4).
TOTAL_RTOL = 0.01
#: Spread (sd of log totals) below which cells count as normalised to one common total.
COMMON_TOTAL_SD = 0.01
#: Fewest genes a log-normalised matrix needs for its cells to be re-normalised over them when
#: they were not normalised to a common total (a whole transcriptome, not a gene selection).
RENORMALISE_MIN_GENES = 5000


def lognorm_totals(block: Any) -> np.ndarray:
    """Per row of log1p-normalised values, the total they were normalised to:
    ``Σ_genes expm1(value)`` (float64)."""
    if V.is_sparse(block):
        csr = sparse.csr_matrix(block)
        level = sparse.csr_matrix((np.expm1(csr.data.astype(np.float64)), csr.indices,
                                   csr.indptr), shape=csr.shape)
        return np.asarray(level.sum(axis=1)).ravel()
    return np.expm1(np.asarray(block, dtype=np.float64)).sum(axis=1)


def renormalise_rows(lognorm: Any, factor: np.ndarray) -> Any:
    """``log1p(expm1(lognorm) · factor)`` per row (sparse in, sparse out; zeros stay zero)."""
    factor = np.asarray(factor, dtype=np.float64)
    if V.is_sparse(lognorm):
        csr = sparse.csr_matrix(lognorm, dtype=np.float32, copy=True)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        csr.data = np.log1p(np.expm1(csr.data.astype(np.float64)) * factor[rows]
                            ).astype(np.float32)
        return csr
    arr = np.asarray(lognorm, dtype=np.float64)
    return np.log1p(np.expm1(arr) * factor[:, None]).astype(np.float32)


def _other_total(x: Any, names: Any, genes: np.ndarray, recipe: Mapping[str, Any], *,
                 label: str) -> bool:
    """Whether log-normalised ``x`` must be brought to the recipe's ``target_sum`` first
    (logged), judged on :func:`probe`; a clear error when it cannot be done reliably."""
    if str(recipe.get("input_kind")) != "counts":
        return False  # the recipe was computed from log-normalised values as they came
    target = float(recipe["target_sum"])
    totals = lognorm_totals(probe(x))
    totals = totals[totals > 0]
    if not len(totals) or np.median(np.abs(totals / target - 1.0)) <= TOTAL_RTOL:
        return False
    log_sd = float(np.std(np.log(totals)))
    typical = float(np.median(totals))
    if log_sd <= COMMON_TOTAL_SD:
        logg.warning(
            f"{label} is log-normalised to about {typical:.4g} counts per cell (e.g. CPM, or "
            f"scanpy's normalize_total without target_sum), but the classifier's recipe "
            f"normalises to {target:.4g}: each cell is converted to {target:.4g} before the "
            "recipe is applied. Pass raw counts to skip the conversion.")
        return True
    n_genes = len(np.asarray(names))
    if n_genes >= RENORMALISE_MIN_GENES:
        logg.warning(
            f"{label} looks log-transformed but its cells were not normalised to one total "
            f"(totals {np.quantile(totals, 0.05):.4g}–{np.quantile(totals, 0.95):.4g}; e.g. "
            f"log1p of raw counts or size-factor normalisation): each cell is converted to the "
            f"recipe's {target:.4g} counts over its {n_genes} genes before the recipe is "
            "applied. Pass raw counts to skip the conversion.")
        return True
    raise ScadvInputError(
        f"{label} looks log-normalised, but not to the classifier's {target:.4g} counts per cell "
        f"and not to any common total over its {n_genes} genes (totals "
        f"{np.quantile(totals, 0.05):.4g}–{np.quantile(totals, 0.95):.4g}): a selection of genes, "
        "or values normalised another way, which scadv cannot convert reliably and would "
        "silently mis-score. Pass the raw counts, or the log-normalised values of all genes "
        "(e.g. adata.raw, or layer=...), normalised with sc.pp.normalize_total and "
        "sc.pp.log1p.")


def x_is_model_input(adata: AnnData, recipe: Mapping[str, Any]) -> bool:
    """Whether ``adata.X`` holds the model input of ``recipe`` itself: data prepared with
    ``subset=True`` (or by scadv 0.1, which always did), already-scaled input, or the output
    of :func:`scadv.pp.transform`."""
    flag = recipe.get("x_is_model_input")
    if flag is not None:
        return bool(np.asarray(flag))
    genes = np.asarray(recipe["genes"]).astype(str)
    return adata.n_vars == len(genes) and np.array_equal(np.asarray(adata.var_names), genes)


def _positions(names: Any, genes: np.ndarray, *, missing_genes: MissingGenes, what: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Column of each model gene among ``names`` and the mask of missing ones."""
    index = pd.Index(np.asarray(names).astype(str))
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ScadvInputError(
            f"{what} has duplicated gene names (e.g. {dup}); genes are matched by name. "
            "Run adata.var_names_make_unique() first."
        )
    pos = index.get_indexer(genes)
    missing = pos < 0
    if missing.any():
        examples = genes[missing][:8].tolist()
        if missing_genes != "mean":
            raise ScadvInputError(
                f"{int(missing.sum())} of the model's {len(genes)} genes are missing from {what} "
                f"(e.g. {examples}). Use data that measured these genes with the same gene "
                "naming (var_names), or pass missing_genes='mean' to set them to their training "
                "mean (a neutral value; predictions then rest on the remaining genes)."
            )
        logg.warning(
            f"{int(missing.sum())} of {len(genes)} model genes are missing from {what} "
            f"(e.g. {examples}); they are set to their training mean."
        )
    return pos, missing


def probe(x: Any) -> Any:
    """All values of a small in-memory matrix, or a deterministic sample of rows of a large,
    backed or lazy one: what kind checks look at."""
    if RW.in_memory(x) and (x.nnz if V.is_sparse(x) else np.asarray(x).size) <= 20_000_000:
        return x
    return RW.read(x, RW.sample_rows(RW.n_rows(x)))


def _sample_kind(x: Any, *, label: str, adata: AnnData | None = None) -> V.DataKind:
    """Counts, log-normalised or scaled, judged on :func:`probe`. With ``adata`` (whose cells
    and genes are ``x``'s), a non-finite value is reported with its cell and gene."""
    block = probe(x)
    V.check_finite(block, what=label, adata=adata if block is x else None)
    return V.detect_kind(block, what=label)


def source(adata: AnnData, recipe: Mapping[str, Any], *, layer: str | None = None,
           missing_genes: MissingGenes = "error", what: str = "adata") -> Source:
    """Where the model input of ``adata`` comes from, for a classifier's ``recipe``.

    Tried in this order; the first that applies is used:

    1. ``adata.X`` already holds this recipe's model input (prepared with ``subset=True``,
       already-scaled input, or :func:`scadv.pp.transform`); with ``layer``, a layer holding
       model-space values (e.g. an adversarial layer of scadv 0.1).
    2. ``layers[layer]`` if given; else, for the AnnData the recipe was made from, the matrix
       :func:`scadv.pp.prepare` read (``X`` or its ``layer``); else ``adata.X`` then
       ``adata.raw``: whichever holds raw counts or log-normalised values covering the model
       genes. The recipe is then applied batch by batch (normalise counts to ``target_sum``
       using each cell's total over all its genes, log1p, z-score, clip).
    3. Already-scaled ``X`` when the model itself was trained on already-scaled input (logged
       as an assumption).

    Anything else is an error that says which input would work.
    """
    genes = np.asarray(recipe["genes"]).astype(str)
    own = stored(adata)
    mine = same(own, recipe)
    obs_names = adata.obs_names

    def build(matrix: Any, names: Any, kind: SourceKind, label: str,
              library_size: np.ndarray | None = None, how: MissingGenes = missing_genes,
              renorm: bool = False) -> Source:
        pos, missing = _positions(names, genes, missing_genes=how, what=label)
        return Source(matrix, kind=kind, recipe=recipe, present=pos, missing=missing,
                      label=label, obs_names=obs_names, library_size=library_size,
                      renormalise=renorm)

    if mine and own is not None and x_is_model_input(adata, own):
        if layer is None:
            return build(adata.X, adata.var_names, "model", f"{what}.X", how="error")
        x = V.matrix(adata, layer)
        if _sample_kind(x, label=f"{what}.layers[{layer!r}]") == "scaled":
            return build(x, adata.var_names, "model", f"{what}.layers[{layer!r}]", how="error")

    sources: list[tuple[Any, Any, str]] = []
    if layer is not None:
        sources.append((V.matrix(adata, layer), adata.var_names, f"{what}.layers[{layer!r}]"))
    else:
        own_layer = str(own.get("layer", "None")) if mine and own is not None else "None"
        if own_layer != "None" and own_layer in adata.layers:
            sources.append((adata.layers[own_layer], adata.var_names,
                            f"{what}.layers[{own_layer!r}]"))
        if adata.X is not None:
            sources.append((adata.X, adata.var_names, f"{what}.X"))
        if adata.raw is not None:
            sources.append((adata.raw.X, adata.raw.var_names, f"{what}.raw"))

    tried = []
    for i, (x, names, label) in enumerate(sources):
        try:
            kind = _sample_kind(x, label=label,
                                adata=None if label.endswith(".raw") else adata)
        except ScadvInputError as err:
            # a matrix of no known kind (e.g. whole numbers with negatives) is refused, unless a
            # later candidate (.raw) can be used instead
            if i == len(sources) - 1 or "finite" in str(err):
                raise
            tried.append(f"{label} is not usable ({err})")
            continue
        tried.append(f"{label} looks {kind}")
        if kind == "scaled":
            if str(recipe["input_kind"]) == "scaled" and own is None and label.endswith(".X"):
                logg.warning(
                    f"{label} is already scaled; assuming it was scaled like the model's "
                    "training data (same genes, same statistics)."
                )
                return build(x, names, "scaled", label)
            continue
        if not bool(recipe["has_stats"]):
            raise ScadvInputError(
                "the model was trained on already-scaled data without a log-normalised .raw, so "
                "scadv does not know how to scale new counts or log-normalised values. Pass new "
                "data scaled the same way (same genes), or prepare the training data from counts."
            )
        library_size = None
        if kind == "counts":
            if len(names) == len(genes) and K.LIBRARY_SIZE in adata.obs:
                # a counts layer of the model genes only (data prepared with subset=True)
                library_size = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)
            elif len(names) <= len(genes):
                logg.warning(
                    f"{label} has only {len(names)} genes; library sizes are computed from "
                    "these alone, which differs from normalising by all genes."
                )
        renorm = kind == "lognorm" and _other_total(x, names, genes, recipe, label=label)
        return build(x, names, kind, label, library_size, renorm=renorm)
    raise ScadvInputError(
        f"cannot build the model's input from {what}: {'; '.join(tried) or 'it has no X'}, and "
        "none is raw counts or log-normalised data covering the model genes. Pass counts or "
        "log1p-normalised data (all genes), e.g. the AnnData as read from disk, or use "
        "layer=... to point at them."
    )


@dataclass
class ModelInput:
    """The whole model-space matrix of an AnnData (see :func:`model_input`)."""

    x: np.ndarray
    #: Where it came from, e.g. ``'adata.X'`` or ``'adata.raw'``.
    source: str
    #: Kind of that source: ``'prepared'``, ``'counts'``, ``'lognorm'`` or ``'scaled'``.
    kind: str
    #: Model genes the source lacked (filled with their training mean).
    missing: np.ndarray | None = None


def model_input(adata: AnnData, recipe: Mapping[str, Any], *, layer: str | None = None,
                missing_genes: MissingGenes = "error", what: str = "adata",
                cells: np.ndarray | None = None) -> ModelInput:
    """The model-space matrix (cells × model genes, float32) of ``adata`` — or of the cells at
    positions / the boolean mask ``cells`` — in one piece, built batch by batch by
    :func:`source`. For the whole of a large AnnData prefer streaming with
    ``source(...).batches()``."""
    src = source(adata, recipe, layer=layer, missing_genes=missing_genes, what=what)
    idx = None
    if cells is not None:
        arr = np.asarray(cells)
        idx = np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.int64)
    x = src.dense(idx, what=f"the model input of {what}")
    kind = "prepared" if src.kind == "model" else src.kind
    return ModelInput(x, source=src.label, kind=kind, missing=src.missing)
