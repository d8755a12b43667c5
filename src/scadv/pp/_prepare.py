"""``scadv.pp.prepare``: counts (or scanpy-processed data) → the classifier's input space."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy as sc
import scanpy.logging as logg
from anndata import AnnData
from scipy import sparse

from .. import _keys as K
from .. import _provenance as P
from .. import _recipe as R
from .. import _validate as V
from .._errors import ScadvInputError
from .._results import write_results

Flavor = Literal["seurat_v3", "seurat", "cell_ranger"]


def prepare(
    adata: AnnData,
    *,
    n_top_genes: int = 2000,
    target_sum: float = 1e4,
    max_value: float = 10.0,
    flavor: Flavor | None = None,
    include_genes: Sequence[str] = (),
    expect: Literal["auto", "counts", "lognorm", "scaled"] = "auto",
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Bring expression into the classifier's input space and record how, for new cells.

    The input kind is detected (and logged):

    raw counts (non-negative whole numbers)
        Counts are kept in ``layers['counts']``, each cell is normalised to ``target_sum``
        and ``log1p``-transformed; the full log-normalised matrix is kept in ``.raw`` (as in
        scanpy's tutorials); ``n_top_genes`` highly variable genes are selected; each gene is
        z-scored and clipped to ``±max_value``.
    log-normalised values (non-negative, fractional)
        Nothing is normalised again: gene selection, z-scoring and clipping only.
    already-scaled values (negative values present, e.g. :func:`scanpy.datasets.pbmc68k_reduced`)
        ``X`` is used unchanged as the model input with all its genes. Statistics to scale new
        data come from a log-normalised ``.raw`` when there is one.

    Running ``prepare`` on data it already prepared changes nothing.

    Parameters
    ----------
    adata
        Cells × genes. Modified in place unless ``copy=True``.
    n_top_genes
        Number of highly variable genes that become the model's input.
    target_sum
        Library size each cell is normalised to (counts input).
    max_value
        Z-scores are clipped to ``[-max_value, max_value]``; 0 disables clipping.
    flavor
        Gene selection method of :func:`scanpy.pp.highly_variable_genes`. ``None`` (default)
        picks ``'seurat_v3'`` (Seurat's *vst*, computed on counts) when counts are available and
        ``'seurat'`` (dispersion-based, on log data) otherwise; if ``seurat_v3``'s loess fit
        fails on unusual counts, the automatic choice falls back to ``'seurat'`` (logged).
        Genes detected in fewer than 3 cells are never selected.
    include_genes
        Genes always kept as model input in addition to the highly variable ones (e.g. known
        markers). Unknown names are an error.
    expect
        What the input is: ``'auto'`` (default) detects it; naming it (e.g. ``'counts'``)
        turns a mismatch into an error instead of a different processing path.
    layer
        Read the input from ``adata.layers[layer]`` instead of ``adata.X``.
    copy
        Return a prepared copy instead of modifying ``adata``.

    Returns
    -------
    The prepared copy if ``copy=True``, else ``None``. Writes (counts / log-normalised input):

    ``adata.X``
        Dense float32 z-scores of the model genes (the AnnData is subset to these genes).
    ``adata.layers['counts']``
        Raw counts of the model genes (counts input, or a ``'counts'`` layer already present).
    ``adata.raw``
        Log-normalised values of all genes (only when no ``.raw`` existed).
    ``adata.obs['scadv_library_size']``
        Total counts per cell over all genes (counts input).
    ``adata.uns['scadv']['prepare']``
        The recipe (genes, means, standard deviations, target sum, clip, zero levels, observed
        ranges, gene selection) and its provenance; see :func:`scadv.pp.transform`.
    """
    V.options(locals())
    V.positive_int("n_top_genes", n_top_genes)
    V.positive("target_sum", target_sum)
    V.nonneg("max_value", max_value)
    V.choice("flavor", flavor, (None, "seurat_v3", "seurat", "cell_ranger"))
    V.names("include_genes", include_genes, allow_empty=True, single=False)
    V.choice("expect", expect, ("auto", "counts", "lognorm", "scaled"))
    start = logg.info("preparing data for scadv")
    params = P.call_params(locals(), prepare)
    adata = V.start(adata, copy=copy)
    _check_options(n_top_genes=n_top_genes, target_sum=target_sum, max_value=max_value,
                   expect=expect)

    existing = R.stored(adata)
    if existing is not None and np.array_equal(np.asarray(existing["genes"]).astype(str),
                                               np.asarray(adata.var_names)) and layer is None:
        logg.info("    adata was already prepared by scadv (uns['scadv']['prepare']); "
                  "nothing to do")
        return adata if copy else None

    x = V.matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    V.check_finite(x, what=where, adata=adata)
    if expect == "counts":
        V.check_counts(x, what=where)
    kind = V.detect_kind(x, what=where)
    if expect not in ("auto", kind):
        raise ScadvInputError(
            f"expect={expect!r}, but {where} looks like {_KIND_TEXT[kind].split(':')[0]}. "
            "Pass the matching matrix (layer=...), or expect='auto'."
        )
    logg.info(f"    {where} looks like {_KIND_TEXT[kind]}")
    missing = [g for g in include_genes if g not in adata.var_names]
    if missing:
        raise ScadvInputError(
            f"include_genes names {len(missing)} genes that are not in adata.var_names "
            f"(e.g. {missing[:8]}). Check the spelling and the gene naming (symbols vs IDs)."
        )

    if kind == "scaled":
        recipe = _recipe_for_scaled(adata, x, max_value=max_value)
        recipe.update(flavor="none", n_top_genes=adata.n_vars, include_genes=list(include_genes))
        write_results(adata, step="prepare", start=start,
                      uns={K.PREPARE: {**recipe, "provenance": P.record(params)}})
        return adata if copy else None

    counts = x if kind == "counts" else _counts_layer(adata)
    if kind == "counts":
        library_size = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
        lognorm = R.lognormalize(x, target_sum=target_sum, library_size=library_size)
    else:
        library_size = None
        lognorm = sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else x

    auto = flavor is None
    flavor = _choose_flavor(flavor, counts)
    selected, flavor = _select_genes(adata.var_names, lognorm, counts, n_top_genes=n_top_genes,
                                     flavor=flavor, auto=auto, include_genes=include_genes)
    genes = adata.var_names[selected]
    mean, std = R.zscore_stats(lognorm[:, selected])
    recipe = {
        "input_kind": kind,
        "genes": np.asarray(genes, dtype=str),
        "mean": mean,
        "std": std,
        "has_stats": True,
        "max_value": float(max_value),
        "target_sum": float(target_sum),
        "log1p": True,
        "flavor": flavor,
        "n_top_genes": int(n_top_genes),
        "include_genes": list(include_genes),
    }
    z = R.lognorm_to_model(lognorm[:, selected], recipe)
    recipe.update(zero_level=R.zero_level(recipe), x_min=z.min(axis=0), x_max=z.max(axis=0))

    if adata.raw is None:
        adata.raw = AnnData(X=lognorm, obs=pd.DataFrame(index=adata.obs_names), var=adata.var)
        raw_note = "log-normalised values of all genes are kept in adata.raw"
    else:
        raw_note = "adata.raw already existed and was left unchanged"
    logg.info(f"    {raw_note}")
    layers = {}
    if counts is not None:
        layers[K.COUNTS_LAYER] = sparse.csr_matrix(counts[:, selected], dtype=np.float32)
    adata._inplace_subset_var(selected)
    adata.X = z
    obs = {K.LIBRARY_SIZE: library_size} if library_size is not None else None
    write_results(adata, step=f"prepare ({len(genes)} genes, {flavor} selection)", start=start,
                  uns={K.PREPARE: {**recipe, "provenance": P.record(params)}},
                  obs=obs, layers=layers)
    return adata if copy else None


_KIND_TEXT = {
    "counts": "raw counts: normalise, log1p, select genes, z-score, clip",
    "lognorm": "log-normalised data: no normalisation; select genes, z-score, clip",
    "scaled": "already-scaled data (negative values): used unchanged as the model input",
}


def _check_options(*, n_top_genes: int, target_sum: float, max_value: float, expect: str) -> None:
    if expect not in ("auto", "counts", "lognorm", "scaled"):
        raise ScadvInputError(
            f"expect must be 'auto', 'counts', 'lognorm' or 'scaled', got {expect!r}.")
    if int(n_top_genes) < 1:
        raise ScadvInputError(f"n_top_genes must be a positive number, got {n_top_genes}.")
    if not target_sum > 0:
        raise ScadvInputError(f"target_sum must be positive, got {target_sum}.")
    if max_value < 0:
        raise ScadvInputError(f"max_value must be ≥ 0 (0 disables clipping), got {max_value}.")


def _counts_layer(adata: AnnData) -> sparse.spmatrix | np.ndarray | None:
    """A 'counts' layer holding whole non-negative numbers, if the user kept one."""
    counts = adata.layers.get(K.COUNTS_LAYER)
    if counts is None:
        return None
    V.check_counts(counts, what=f"adata.layers[{K.COUNTS_LAYER!r}]")
    return counts


def _choose_flavor(flavor: Flavor | None, counts: Any) -> Flavor:
    if flavor is None:
        return "seurat_v3" if counts is not None else "seurat"
    if flavor == "seurat_v3" and counts is None:
        raise ScadvInputError(
            "flavor='seurat_v3' needs raw counts (in X or layers['counts']); the input is "
            "log-normalised. Use flavor='seurat' or pass the counts."
        )
    if flavor not in ("seurat_v3", "seurat", "cell_ranger"):
        raise ScadvInputError(
            f"unknown flavor {flavor!r}; use 'seurat_v3', 'seurat' or 'cell_ranger'.")
    return flavor


#: Genes detected in fewer cells are never selected (as ``sc.pp.filter_genes(min_cells=3)``).
MIN_CELLS_PER_GENE = 3


def _select_genes(var_names: pd.Index, lognorm: Any, counts: Any, *, n_top_genes: int,
                  flavor: Flavor, auto: bool, include_genes: Sequence[str]
                  ) -> tuple[np.ndarray, Flavor]:
    """Boolean mask of the model genes (highly variable genes plus ``include_genes``) and the
    flavour actually used."""
    n_vars = len(var_names)
    detected = np.asarray((lognorm > 0).sum(axis=0)).ravel() >= MIN_CELLS_PER_GENE
    if n_top_genes >= detected.sum():
        logg.info(f"    n_top_genes={n_top_genes} ≥ {int(detected.sum())} detected genes: "
                  "all detected genes are used")
        mask = detected
    else:
        cand = np.flatnonzero(detected)
        try:
            hvg = _hvg(var_names[cand], lognorm, counts, cand, n_top_genes, flavor)
        except ValueError as err:  # scanpy's seurat_v3 loess can fail on unusual count data
            if not (auto and flavor == "seurat_v3"):
                raise
            logg.warning(f"seurat_v3 gene selection failed ({err}); using flavor='seurat'")
            flavor = "seurat"
            hvg = _hvg(var_names[cand], lognorm, counts, cand, n_top_genes, flavor)
        mask = np.zeros(n_vars, dtype=bool)
        mask[cand[hvg]] = True
    if include_genes:
        mask |= var_names.isin(list(include_genes))
    return mask, flavor


def _hvg(names: pd.Index, lognorm: Any, counts: Any, cols: np.ndarray, n_top_genes: int,
         flavor: Flavor) -> np.ndarray:
    tmp = AnnData(X=(counts if flavor == "seurat_v3" else lognorm)[:, cols],
                  var=pd.DataFrame(index=names.copy()))
    if flavor != "seurat_v3":
        tmp.uns["log1p"] = {"base": None}
    hvg = sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor=flavor, inplace=False)
    return np.asarray(hvg["highly_variable"], dtype=bool)


def _recipe_for_scaled(adata: AnnData, x: Any, *, max_value: float) -> dict[str, Any]:
    """Recipe for input that is already z-scored: statistics from a log-normalised ``.raw``."""
    genes = np.asarray(adata.var_names, dtype=str)
    z = x.toarray() if sparse.issparse(x) else np.asarray(x)
    recipe: dict[str, Any] = {"input_kind": "scaled", "genes": genes, "target_sum": 1e4,
                              "log1p": True, "max_value": float(max_value),
                              "x_min": z.min(axis=0).astype(np.float32),
                              "x_max": z.max(axis=0).astype(np.float32)}
    raw_ok = False
    if adata.raw is not None and set(genes) <= set(adata.raw.var_names):
        raw_x = adata.raw[:, list(genes)].X
        try:
            raw_ok = V.detect_kind(raw_x, what="adata.raw") == "lognorm"
        except ScadvInputError:
            raw_ok = False
    if raw_ok:
        mean, std = R.zscore_stats(raw_x)
        recipe.update(mean=mean, std=std, has_stats=True)
        recipe["zero_level"] = R.zero_level(recipe)
        rebuilt = R.lognorm_to_model(raw_x, recipe)
        gap = float(np.abs(rebuilt - z).max())
        logg.info("    statistics to scale new data are taken from adata.raw (log-normalised)")
        if gap > 1e-3:
            logg.warning(
                f"adata.X differs from the z-scored adata.raw by up to {gap:.3g} (e.g. made with "
                "sc.pp.regress_out or other statistics): new cells scaled with the stored recipe "
                "will only approximate this X."
            )
    else:
        recipe.update(mean=np.zeros(len(genes), np.float32), std=np.ones(len(genes), np.float32),
                      has_stats=False, zero_level=recipe["x_min"].copy())
        logg.warning(
            "adata.X is already scaled and there is no log-normalised adata.raw to learn how it "
            "was scaled: the model can only be applied to new data scaled the same way."
        )
    return recipe
