"""Compact storage of perturbed cells: adversarial, benign and gene-level results.

A perturbation (e.g. PGD at ε = 0.1, named ``scadv_pgd_eps0.1``) changes some cells' input. It
is stored as the CHANGE of those cells only, never as a copy of the whole matrix, in one of two
formats chosen by how dense the change is:

``adata.obsm[name]`` (sparse changes, e.g. attacks that keep zeros at zero)
    A CSR float32 matrix, cells × the model genes of the classifier it was made for, holding
    ``perturbed − clean`` for the cells it changed (other rows are empty). Being per-cell, it
    follows the cells through subsetting and concatenation.
``uns['scadv']['perturbations'][name]['delta']`` (dense changes, e.g. unconstrained PGD)
    The rows of the changed cells only (float32, changed cells × model genes), with their
    names in ``['cells']``: half the size of the sparse format when every gene moves.

``uns['scadv']['perturbations'][name]`` also holds ``space`` (``'model'``: a change of the
model input, z-scores; ``'counts'``: a change of the raw counts of the model genes, whole
numbers, with the library size changing with them; ``'var'``: a change of a matrix of the
AnnData itself, ``X`` or the layer named in ``matrix``, all its genes — what gene-level
attacks on a classifier of the user's own data make), ``model`` (the classifier whose recipe
defines the model input; ``''``: the AnnData's own ``uns['scadv']['prepare']``), ``run``
(the ``uns['scadv']`` record that made it) and ``format`` (``'obsm'`` / ``'rows'``).
``adata.obs[name + '_pred']`` is the class predicted for the perturbed cell; NaN for cells the
perturbation did not touch.

Everything survives ``write_h5ad`` → ``read_h5ad``. The perturbed input of any cell is rebuilt
on demand by :func:`model_rows` (public: :func:`scadv.get.perturbed`), bit for bit what the
tool that made it evaluated. Dense ``layers[name]`` written by scadv 0.1 (or by hand) are
still read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from . import _keys as K
from . import _recipe as R
from . import _records as REC
from . import _rows as RW
from . import _validate as V
from ._errors import ScadvInputError

Space = Literal["model", "counts", "var"]

#: Changes denser than this are stored as rows of the changed cells, sparser ones as CSR.
DENSE_ROWS_ABOVE = 0.5


@dataclass
class Perturbation:
    """One perturbation to store (see the module docstring)."""

    name: str
    #: Positions of the changed cells (ascending).
    cells: np.ndarray
    #: ``perturbed − clean`` of those cells (float32, cells × model genes): CSR, or a dense
    #: array when most entries change (see :func:`compact`).
    rows: sparse.csr_matrix | np.ndarray
    space: Space
    model: str
    run: str
    #: For ``space='var'``: the matrix it changes (``'X'`` or a layer name); for
    #: ``space='counts'``: the matrix the clean counts were read from.
    matrix: str = "X"

    def storage(self, adata: AnnData) -> tuple[dict[str, Any], sparse.csr_matrix | None]:
        """``(registry entry, obsm matrix or None)`` in the more compact format."""
        ent: dict[str, Any] = {"space": self.space, "model": self.model, "run": self.run}
        if self.space in ("var", "counts"):
            ent["matrix"] = self.matrix
        n_cells, n_genes = self.rows.shape
        if isinstance(self.rows, np.ndarray):
            dense, nnz = self.rows, int(np.count_nonzero(self.rows))
            rows = None
        else:
            dense, nnz, rows = None, self.rows.nnz, self.rows
        if nnz / max(n_cells * n_genes, 1) > DENSE_ROWS_ABOVE:
            ent.update(format="rows", cells=np.asarray(adata.obs_names[self.cells], dtype=str),
                       delta=np.asarray(dense if rows is None else rows.toarray(),
                                        dtype=np.float32))
            return ent, None
        ent["format"] = "obsm"
        if rows is None:
            rows = sparse.csr_matrix(dense)
            rows.eliminate_zeros()
        return ent, place(adata.n_obs, self.cells, rows)


def compact(delta: np.ndarray) -> np.ndarray | sparse.csr_matrix:
    """A block of changes (cells × genes) as it is cheapest to hold: the float32 array itself
    when most entries change (a CSR copy would take twice its memory), else CSR."""
    delta = np.asarray(delta, dtype=np.float32)
    if np.count_nonzero(delta) > DENSE_ROWS_ABOVE * delta.size:
        return delta
    block = sparse.csr_matrix(delta)
    block.eliminate_zeros()
    return block


def collect(parts: list[tuple[np.ndarray, sparse.csr_matrix | np.ndarray]], n_genes: int
            ) -> tuple[np.ndarray, sparse.csr_matrix | np.ndarray]:
    """``(cell positions, rows)`` from pieces computed batch by batch, cells ascending: one
    dense float32 array when every piece is dense (see :func:`compact`), else CSR.

    ``parts`` is emptied as its pieces are copied into the result, so a caller that holds no
    other reference to them never holds the pieces and the result whole at the same time.
    """
    if not parts:
        return np.empty(0, np.int64), sparse.csr_matrix((0, n_genes), dtype=np.float32)
    cells = np.concatenate([np.asarray(c, np.int64) for c, _ in parts])
    rows: sparse.csr_matrix | np.ndarray
    if all(isinstance(b, np.ndarray) for _, b in parts):
        rows = np.empty((len(cells), n_genes), dtype=np.float32)
        lo = 0
        parts.reverse()
        while parts:
            _, b = parts.pop()
            rows[lo:lo + len(b)] = b
            lo += len(b)
    else:
        rows = sparse.csr_matrix(sparse.vstack([sparse.csr_matrix(b) for _, b in parts],
                                               format="csr"), dtype=np.float32)
        parts.clear()
    order = np.argsort(cells, kind="stable")
    if (np.diff(order) != 1).any():
        cells, rows = cells[order], rows[order]
    return cells, rows


def from_dense(cells: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, sparse.csr_matrix]:
    """``(cell positions, CSR rows)`` of dense changes (exact zeros not stored)."""
    rows = sparse.csr_matrix(np.asarray(delta, dtype=np.float32))
    rows.eliminate_zeros()
    return collect([(np.asarray(cells, np.int64), rows)], rows.shape[1])


def place(n_obs: int, cells: np.ndarray, block: sparse.csr_matrix) -> sparse.csr_matrix:
    """Scatter the rows of ``block`` to positions ``cells`` of an ``n_obs``-row CSR matrix."""
    cells = np.asarray(cells, dtype=np.int64)
    if len(cells) and (np.diff(cells) <= 0).any():
        order = np.argsort(cells, kind="stable")
        cells, block = cells[order], block[order]
    counts = np.zeros(n_obs + 1, dtype=np.int64)
    counts[cells + 1] = np.diff(block.indptr)
    indptr = np.cumsum(counts)
    return sparse.csr_matrix((block.data.astype(np.float32, copy=False), block.indices, indptr),
                             shape=(n_obs, block.shape[1]))


def registry(adata: AnnData) -> Mapping[str, Any]:
    """``uns['scadv']['perturbations']`` (empty if absent)."""
    ns = adata.uns.get(K.UNS)
    reg = ns.get(K.PERTURBATIONS) if isinstance(ns, Mapping) else None
    if reg is not None and not isinstance(reg, Mapping):
        raise ScadvInputError(
            f"adata.uns[{K.UNS!r}][{K.PERTURBATIONS!r}] holds a {type(reg).__name__}, not the "
            "registry of stored perturbations (a dictionary); it was changed or damaged after "
            f"scadv wrote it. Delete it (del adata.uns[{K.UNS!r}][{K.PERTURBATIONS!r}]) and "
            "run the attacks again.")
    return reg if isinstance(reg, Mapping) else {}


def entry(adata: AnnData, name: str) -> Mapping[str, Any] | None:
    """The registry entry of a compact perturbation stored in ``adata`` (None if there is
    none, e.g. a dense layer, or the registry names it but its ``obsm`` matrix was deleted).
    A malformed entry is a :class:`~scadv.ScadvInputError` (:func:`scadv._records.perturbation`).
    """
    reg = registry(adata)
    if name not in reg:
        return None
    ent = REC.perturbation(name, reg[name], n_obs=adata.n_obs, stored=adata.obsm.get(name))
    if str(ent.get("format", "obsm")) != "rows" and name not in adata.obsm:
        return None
    return ent


def missing(adata: AnnData, name: str) -> str:
    """Why ``name`` is not a stored perturbation, for error messages."""
    if name in registry(adata):
        return (f"perturbation {name!r} is registered in adata.uns['scadv']['perturbations'] "
                f"but its change, adata.obsm[{name!r}], is missing (deleted?); run the step "
                "that made it again")
    return (f"no perturbation or layer {name!r} in adata (stored perturbations: "
            f"{names(adata) or 'none'})")


def exists(adata: AnnData, name: str) -> bool:
    """Whether ``name`` is a stored perturbation (compact) or a layer."""
    return entry(adata, name) is not None or name in adata.layers


def names(adata: AnnData) -> list[str]:
    """Every compact perturbation stored in ``adata``, then every layer, in storage order."""
    found = [n for n in registry(adata) if entry(adata, n) is not None]
    return found + [n for n in adata.layers if n not in found]


def changed(adata: AnnData, name: str) -> np.ndarray:
    """Boolean mask of the cells a perturbation touched: ``obs[name + '_pred']`` is set; else
    the cells it stores a change for; for a layer without such a column, every cell."""
    col = K.layer_pred(name)
    if col in adata.obs:
        return adata.obs[col].notna().to_numpy()
    ent = entry(adata, name)
    if ent is None:
        return np.ones(adata.n_obs, dtype=bool)
    if str(ent.get("format", "obsm")) == "rows":
        return adata.obs_names.isin(np.asarray(ent["cells"]).astype(str))
    return np.diff(sparse.csr_matrix(adata.obsm[name]).indptr) > 0


def recipe_of(adata: AnnData, name: str) -> Mapping[str, Any]:
    """The recipe that defines a perturbation's model input: its classifier's copy, or the
    AnnData's own (for perturbations made on the prepared input without a stored model)."""
    from .tl import _common as C

    ent = entry(adata, name)
    model = str(ent["model"]) if ent is not None else K.DEFAULT_MODEL
    if model == "":
        recipe = R.stored(adata)
        if recipe is None:
            raise ScadvInputError(
                f"perturbation {name!r} was made on the prepared model input, but adata holds "
                "no recipe (uns['scadv']['prepare']) any more.")
        return recipe
    return C.model_record(adata, model)["prepare"]


def _delta(adata: AnnData, name: str, idx: np.ndarray | slice, n_genes: int) -> np.ndarray:
    """Stored change of cells ``idx`` (zeros for cells it did not change)."""
    ent = entry(adata, name)
    if ent is None:
        raise ScadvInputError(missing(adata, name) + ".")
    idx = np.arange(adata.n_obs)[idx] if isinstance(idx, slice) else np.asarray(idx, np.int64)
    if str(ent.get("format", "obsm")) == "rows":
        delta = np.asarray(ent["delta"], dtype=np.float32)
        if delta.ndim != 2 or delta.shape[1] != n_genes:
            raise ScadvInputError(
                f"the stored perturbation {name!r} has shape {delta.shape}, but the classifier "
                f"it belongs to has {n_genes} genes; it was made for another model.")
        names = pd.Index(np.asarray(ent["cells"]).astype(str))
        if not names.is_unique:
            raise REC.malformed(f"perturbation {name!r}", "'cells'", "repeats cell names",
                                f"delete it (del adata.uns['scadv']['perturbations'][{name!r}])"
                                " and run the step that made it again.")
        pos = names.get_indexer(adata.obs_names[idx])
        out = np.zeros((len(idx), n_genes), dtype=np.float32)
        hit = pos >= 0
        out[hit] = delta[pos[hit]]
        return REC.finite_change(name, out)
    stored = adata.obsm[name]
    if stored.shape[1] != n_genes:
        raise ScadvInputError(
            f"the stored perturbation obsm[{name!r}] has {stored.shape[1]} genes but the "
            f"classifier it belongs to has {n_genes}; it was made for another model.")
    return REC.finite_change(name, V.dense(RW.read(stored, idx)))


def model_rows(adata: AnnData, name: str, idx: np.ndarray | slice, src: R.Source
               ) -> np.ndarray:
    """The perturbed model input of cells ``idx`` (dense float32, cells × model genes).

    ``src`` is the clean model input of ``adata`` for the classifier the perturbation was made
    for (:func:`scadv._recipe.source`)."""
    ent = entry(adata, name)
    if ent is None:
        if name not in adata.layers:
            raise ScadvInputError(missing(adata, name) + ".")
        layer = R.source(adata, src.recipe, layer=name, what="adata")
        return layer.rows(idx)
    if str(ent["space"]) == "var":
        raise ScadvInputError(
            f"{name!r} changed adata's own matrix ({ent.get('matrix', 'X')}), not a "
            "classifier's model input; read it with scadv.get.perturbed(adata, name).")
    space = str(ent["space"])
    if space == "counts":
        src = count_source(adata, ent, src)
    return apply(space, src, idx, _delta(adata, name, idx, src.n_genes))


def apply(space: str, src: R.Source, idx: np.ndarray | slice, delta: np.ndarray) -> np.ndarray:
    """The perturbed model input of cells ``idx`` of ``src`` from their stored change
    ``delta`` (dense float32, cells × model genes) of a ``'model'`` or ``'counts'``
    perturbation: what :func:`model_rows` returns, computed from the change alone (e.g. on a
    Dask worker that holds the cells' rows). For ``'counts'``, ``src`` holds the clean counts
    the change was made on (:func:`count_source`)."""
    if space == "model":
        return src.rows(idx) + delta
    counts, lib = add_counts(*src.counts(idx), delta)
    if counts.nnz and counts.data.min() < 0:
        raise ScadvInputError(
            "a stored count-space perturbation makes counts negative: it was changed or damaged "
            "after scadv wrote it, or belongs to other data. Delete it (adata.uns['scadv']"
            "['perturbations'] and adata.obsm) and run the attack again.")
    return counts_model_input(counts, lib, src)


def counts_model_input(counts: sparse.csr_matrix, library_size: np.ndarray, src: R.Source
                       ) -> np.ndarray:
    """The model input of (perturbed) counts of the model genes with the given library
    sizes: the recipe of ``src``, exactly as :func:`model_rows` rebuilds count-space
    perturbations (and as :func:`scadv.tl.count_attack` evaluates them)."""
    lognorm = R.lognormalize(counts, target_sum=float(src.recipe["target_sum"]),
                             library_size=library_size)
    dense = V.dense(lognorm)
    if src.missing.any():
        dense[:, src.missing] = R.fill_value(src.recipe)[src.missing]
    return R.lognorm_to_model(dense, src.recipe)


def add_counts(counts: sparse.csr_matrix, library_size: np.ndarray, delta: np.ndarray
               ) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Counts plus a (dense) change of them, and the library sizes that change with them."""
    adv = sparse.csr_matrix(counts.toarray() + delta, dtype=np.float32)
    adv.eliminate_zeros()
    return adv, library_size + delta.sum(axis=1, dtype=np.float64)


def count_source(adata: AnnData, ent: Mapping[str, Any], src: R.Source) -> R.Source:
    """The source of the clean counts a count-space perturbation was made on: ``src``, or the
    layer its counts were read from (``ent['matrix']``)."""
    which = str(ent.get("matrix", "X"))
    if which == "X":
        return src
    return R.source(adata, src.recipe, layer=which, what="adata")


#: A chunk's stored change, for :func:`rows_of`: ``(space, delta)``, or None for clean rows.
Change = tuple[str, np.ndarray] | None


def plan(adata: AnnData, name: str | None, src: R.Source
         ) -> tuple[R.Source, Callable[[np.ndarray], Change]]:
    """How to compute the model input of a perturbation chunk by chunk, anywhere: the source
    whose rows to read and, per chunk of cells, the change to apply to them (small, read from
    ``adata`` here). ``name=None``: the clean input of ``src`` itself. A dense layer (scadv 0.1)
    is read as a source of its own."""
    if name is None:
        return src, lambda idx: None
    ent = entry(adata, name)
    if ent is None:
        return R.source(adata, src.recipe, layer=name, what="adata"), lambda idx: None
    if str(ent["space"]) == "var":
        raise ScadvInputError(
            f"{name!r} changed adata's own matrix ({ent.get('matrix', 'X')}), not a "
            "classifier's model input; read it with scadv.get.perturbed(adata, name).")
    space = str(ent["space"])
    if space == "counts":
        src = count_source(adata, ent, src)
    return src, lambda idx: (space, REC.finite_change(
        name, _delta(adata, name, idx, src.n_genes), counts=space == "counts"))


def rows_of(src: R.Source, idx: np.ndarray | slice, change: Change) -> np.ndarray:
    """Model input of cells ``idx`` of ``src`` with the chunk's ``change`` (see :func:`plan`)."""
    if change is None:
        return src.rows(idx)
    return apply(change[0], src, idx, change[1])


def var_rows(adata: AnnData, name: str, idx: np.ndarray | slice) -> np.ndarray:
    """Rows of the AnnData's own matrix a ``space='var'`` perturbation changed, perturbed
    (dense float32, cells × all genes of that matrix)."""
    ent = entry(adata, name)
    if ent is None or str(ent["space"]) != "var":
        raise ScadvInputError(f"{name!r} is not a perturbation of adata's own matrix.")
    which = str(ent.get("matrix", "X"))
    matrix = V.matrix(adata, None if which == "X" else which)
    base = V.dense(RW.read(matrix, idx if isinstance(idx, slice) else np.asarray(idx, np.int64)))
    return base + _delta(adata, name, idx, base.shape[1])


def count_rows(adata: AnnData, name: str, idx: np.ndarray | slice, src: R.Source
               ) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Perturbed raw counts of the model genes of cells ``idx`` (CSR float32) and their
    library sizes, for a count-space perturbation."""
    ent = entry(adata, name)
    if ent is None or str(ent["space"]) != "counts":
        raise ScadvInputError(f"{name!r} is not a count-space perturbation.")
    src = count_source(adata, ent, src)
    delta = REC.finite_change(name, _delta(adata, name, idx, src.n_genes), counts=True)
    adv, lib = add_counts(*src.counts(idx), delta)
    if adv.nnz and adv.data.min() < 0:
        raise REC.malformed(f"perturbation {name!r}", "its change of counts",
                            "makes counts negative",
                            f"delete it (del adata.uns['scadv']['perturbations'][{name!r}]; "
                            f"adata.obsm.pop({name!r}, None)) and run the step that made it "
                            "again.")
    return adv, lib


class LazyRows:
    """A cells × model genes matrix whose rows are computed when indexed (``x[mask]``,
    ``x[positions]``): the model input of an AnnData, or of a perturbation of it."""

    def __init__(self, fetch: Callable[[np.ndarray], np.ndarray], n_obs: int, n_genes: int
                 ) -> None:
        self._fetch = fetch
        self.shape = (n_obs, n_genes)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    def batches(self, idx: np.ndarray | None = None, *, batch_size: int = RW.BATCH
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(cell positions, rows)`` for consecutive batches (as :meth:`R.Source.batches`)."""
        cells = np.arange(self.n_obs) if idx is None else np.sort(np.asarray(idx, np.int64))
        for chunk in RW.chunks(cells, batch_size):
            yield chunk, self._fetch(chunk)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            idx = np.arange(self.shape[0])[key]
        else:
            arr = np.asarray(key)
            idx = np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.int64)
        RW.check_fits(len(idx) * self.shape[1] * 4, what=f"the model input of {len(idx)} cells",
                      hint="Select fewer cells (e.g. cells=... or a smaller cluster).")
        out = np.empty((len(idx), self.shape[1]), dtype=np.float32)
        for lo in range(0, len(idx), RW.BATCH):
            out[lo:lo + RW.BATCH] = self._fetch(idx[lo:lo + RW.BATCH])
        return out


def reader(adata: AnnData, recipe: Mapping[str, Any], *, layer: str | None = None,
           missing_genes: R.MissingGenes = "error") -> LazyRows:
    """The model input of ``adata`` for ``recipe`` as :class:`LazyRows`; with ``layer``, of the
    stored perturbation of that name (or of ``layers[layer]``: counts, log-normalised or
    model-space values)."""
    if layer is not None and entry(adata, layer) is not None:
        clean = R.source(adata, recipe, missing_genes=missing_genes)
        return LazyRows(lambda idx: model_rows(adata, layer, idx, clean), clean.n_obs,
                        clean.n_genes)
    src = R.source(adata, recipe, layer=layer, missing_genes=missing_genes)
    return LazyRows(src.rows, src.n_obs, src.n_genes)
