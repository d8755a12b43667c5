"""``scadv.pp.transform``: bring new cells into a prepared reference's input space."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from scipy import sparse

from .. import _keys as K
from .. import _provenance as P
from .. import _recipe as R
from .. import _records as REC
from .. import _validate as V
from .._errors import ScadvInputError
from .._results import write_results


def transform(
    adata: AnnData,
    reference: AnnData | Mapping[str, Any],
    *,
    layer: str | None = None,
    missing_genes: R.MissingGenes = "error",
    copy: bool = False,
) -> AnnData | None:
    """Transform new cells exactly like the reference was prepared.

    Genes are matched by name (``var_names``). The new data may be raw counts (each cell is
    normalised by its own total over all its genes, then ``log1p``), log-normalised values, or
    a ``.raw`` holding either; the reference's gene list, means, standard deviations and clip
    are then applied. Afterwards ``adata`` looks as if :func:`scadv.pp.prepare` had produced it
    with the reference's recipe, so any scadv model or attack of the reference applies to it.

    Parameters
    ----------
    adata
        New cells × genes. Modified in place unless ``copy=True``.
    reference
        A prepared AnnData (``uns['scadv']['prepare']``) or such a recipe dictionary. An AnnData
        holding only a stored classifier works too (its copy of the recipe is used).
    layer
        Read the new data from ``adata.layers[layer]`` instead of ``X`` / ``.raw``.
    missing_genes
        ``'error'`` (default): model genes absent from the new data are an error.
        ``'mean'``: set them to their training mean (z-score 0) and log how many.
    copy
        Return a transformed copy instead of modifying ``adata``.

    Returns
    -------
    The transformed copy if ``copy=True``, else ``None``. Writes:

    ``adata.X``
        Dense float32 z-scores of the reference's genes, in its order (the AnnData's genes
        become exactly the reference's).
    ``adata.layers['counts']``
        Raw counts of those genes (counts input without missing genes).
    ``adata.raw``
        Log-normalised values of all original genes (counts / log-normalised input, only when no
        ``.raw`` existed).
    ``adata.obs['scadv_library_size']``
        Library sizes used for normalisation (counts input).
    ``adata.uns['scadv']['prepare']``
        A copy of the reference's recipe, with this call's provenance.
    """
    V.options(locals())
    V.choice("missing_genes", missing_genes, ("error", "mean"))
    start = logg.info("transforming new cells with a stored scadv recipe")
    params = P.call_params(locals(), transform)
    params["reference"] = "AnnData" if isinstance(reference, AnnData) else "recipe"
    adata = V.start(adata, copy=copy)
    recipe = _reference_recipe(reference)
    own = R.stored(adata)
    if layer is None and R.same(own, recipe):
        logg.info("    adata already uses this recipe; nothing to do")
        return adata if copy else None

    mi = R.model_input(adata, recipe, layer=layer, missing_genes=missing_genes)
    logg.info(f"    built from {mi.source} ({mi.kind})")
    genes = np.asarray(recipe["genes"]).astype(str)
    has_missing = mi.missing is not None and bool(mi.missing.any())

    var = pd.DataFrame(index=pd.Index(genes))
    present = adata.var_names.intersection(genes)
    var = var.join(adata.var.loc[present]) if len(present) else var
    from_raw = mi.source.endswith(".raw")
    layers: dict[str, Any] = {}
    if mi.kind == "counts" and not from_raw and not has_missing:
        cols = adata.var_names.get_indexer(genes)
        counts = V.matrix(adata, layer)[:, cols]
        layers[K.COUNTS_LAYER] = sparse.csr_matrix(counts, dtype=np.float32)
    raw = adata.raw
    if raw is None and mi.lognorm is not None and not from_raw:
        raw = AnnData(X=mi.lognorm, obs=pd.DataFrame(index=adata.obs_names), var=adata.var)
    uns = dict(adata.uns)
    uns.pop(K.UNS, None)
    new = AnnData(X=mi.x, obs=adata.obs.copy(), var=var, uns=uns, obsm=dict(adata.obsm),
                  obsp=dict(adata.obsp), raw=raw)
    scadv_ns = {k: v for k, v in (adata.uns.get(K.UNS) or {}).items() if k != K.PREPARE}
    if scadv_ns:
        new.uns[K.UNS] = scadv_ns
    adata._init_as_actual(new)
    obs = {}
    if mi.library_size is not None and not from_raw:
        obs[K.LIBRARY_SIZE] = np.asarray(mi.library_size, dtype=np.float64)
    prepare_rec = {k: v for k, v in recipe.items() if k != "provenance"}
    write_results(adata, step="transform", start=start, layers=layers, obs=obs,
                  uns={K.PREPARE: {**prepare_rec, "provenance": P.record(params)}})
    return adata if copy else None


def _reference_recipe(reference: AnnData | Mapping[str, Any]) -> Mapping[str, Any]:
    """The recipe of a prepared AnnData, of its stored classifier, or a recipe dict itself."""
    if isinstance(reference, AnnData):
        recipe = R.stored(reference)
        if recipe is None:
            ns = reference.uns.get(K.UNS)
            models = [v for v in (ns or {}).values() if isinstance(v, Mapping) and "prepare" in v]
            if models:
                recipe = dict(REC.recipe(models[0]["prepare"], what="classifier's recipe"))
        if recipe is None:
            raise ScadvInputError(
                "the reference AnnData holds no scadv recipe (uns['scadv']['prepare']). "
                "Run scadv.pp.prepare(reference) on the training data first."
            )
        return recipe
    if isinstance(reference, Mapping) and {"genes", "mean", "std"} <= set(reference):
        return REC.recipe(reference)
    raise ScadvInputError(
        "reference must be a prepared AnnData or a recipe dictionary "
        "(adata.uns['scadv']['prepare'])."
    )
