"""``scadv.get.perturbed`` and ``scadv.get.perturbations``: the stored perturbations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _recipe as R
from .. import _store as ST
from .. import _validate as V
from .._errors import ScadvInputError
from ._cells import positions


def perturbations(adata: AnnData) -> pd.DataFrame:
    """Every perturbation stored in ``adata`` (adversarial, benign, gene-level), one row each.

    Parameters
    ----------
    adata
        An AnnData scadv wrote perturbations into.

    Returns
    -------
    A DataFrame indexed by name with ``run`` (the ``uns['scadv']`` record that made it),
    ``space`` (``'model'``: a change of the model input; ``'counts'``: a change of the raw
    counts; ``'var'``: a change of the AnnData's own matrix; ``'layer'``: a dense layer),
    ``model`` and ``n_cells`` (cells it changed). Writes nothing.
    """
    V.options(locals())
    rows = []
    for name in ST.names(adata):
        ent = ST.entry(adata, name)
        rows.append({"name": name,
                     "run": str(ent["run"]) if ent is not None else "",
                     "space": str(ent["space"]) if ent is not None else "layer",
                     "model": str(ent["model"]) if ent is not None else "",
                     "n_cells": int(ST.changed(adata, name).sum())})
    cols = ["name", "run", "space", "model", "n_cells"]
    return pd.DataFrame(rows, columns=cols).set_index("name")


def perturbed(
    adata: AnnData,
    name: str,
    *,
    cells: Sequence[str] | np.ndarray | None = None,
    space: Literal["model", "counts"] | None = None,
) -> np.ndarray | sparse.csr_matrix:
    """The perturbed version of cells, rebuilt from the compact stored change.

    Parameters
    ----------
    adata
        The AnnData the perturbation was stored in (or a subset / reloaded copy of it).
    name
        The perturbation, e.g. ``'scadv_pgd_eps0.1'`` (see :func:`perturbations`).
    cells
        Cell names, a boolean mask or positions; default the cells it changed.
    space
        ``None`` (default): the space the perturbation lives in — a classifier's input
        (z-scores of its genes, dense) for model-space and count-space perturbations, the
        AnnData's own matrix (dense, all its genes) for gene-level attacks on a classifier of
        that matrix. ``'model'``: the classifier's input. ``'counts'``: the perturbed raw
        counts of the model genes (CSR), for count-space perturbations.

    Returns
    -------
    Dense float32 array or (``space='counts'``) CSR matrix, one row per requested cell.
    Writes nothing.
    """
    V.options(locals())
    V.name("name", name)
    V.choice("space", space, (None, "model", "counts"))
    ent = ST.entry(adata, name)
    if ent is None and name not in adata.layers:
        raise ScadvInputError(ST.missing(adata, name) + ".")
    if space not in (None, "model", "counts"):
        raise ScadvInputError(f"space must be None, 'model' or 'counts', got {space!r}.")
    idx = (np.flatnonzero(ST.changed(adata, name)) if cells is None
           else positions(adata, cells))
    if isinstance(ent, Mapping) and str(ent["space"]) == "var":
        if space is not None:
            raise ScadvInputError(f"{name!r} changed adata's own matrix; pass space=None.")
        return ST.var_rows(adata, name, idx)
    src = R.source(adata, ST.recipe_of(adata, name), what="adata")
    if space == "counts":
        counts, _ = ST.count_rows(adata, name, idx, src)
        return counts
    return ST.LazyRows(lambda i: ST.model_rows(adata, name, i, src), adata.n_obs,
                       src.n_genes)[idx]
