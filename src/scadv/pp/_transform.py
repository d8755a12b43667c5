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
    with the reference's recipe and ``subset=True``.

    You rarely need this: every scadv tool applies a model's recipe to raw counts or
    log-normalised data itself, batch by batch, without changing ``X``. ``transform`` is for
    when you want the model input in ``X`` (it holds it in memory, densely).

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
    if layer is None and own is not None and R.same(own, recipe) and \
            R.x_is_model_input(adata, own):
        logg.info("    adata already uses this recipe; nothing to do")
        return adata if copy else None

    src = R.source(adata, recipe, layer=layer, missing_genes=missing_genes)
    logg.info(f"    built from {src.label} ({src.kind})")
    x = src.dense(what="the transformed data (transform writes it into X)")
    genes = np.asarray(recipe["genes"]).astype(str)
    has_missing = bool(src.missing.any())

    var = pd.DataFrame(index=pd.Index(genes))
    present = adata.var_names.intersection(genes)
    var = var.join(adata.var.loc[present]) if len(present) else var
    from_raw = src.label.endswith(".raw")
    layers: dict[str, Any] = {}
    library_size = None
    raw = adata.raw
    if src.kind in ("counts", "lognorm") and not from_raw:
        full = V.matrix(adata, layer)
        if src.kind == "counts":
            library_size = np.asarray(full.sum(axis=1), dtype=np.float64).ravel()
            if not has_missing:
                layers[K.COUNTS_LAYER] = sparse.csr_matrix(full[:, src.present],
                                                           dtype=np.float32)
        if raw is None:
            lognorm = (R.lognormalize(full, target_sum=float(recipe["target_sum"]),
                                      library_size=library_size)
                       if src.kind == "counts" else full)
            raw = AnnData(X=lognorm, obs=pd.DataFrame(index=adata.obs_names), var=adata.var)
    uns = dict(adata.uns)
    uns.pop(K.UNS, None)
    new = AnnData(X=x, obs=adata.obs.copy(), var=var, uns=uns, obsm=dict(adata.obsm),
                  obsp=dict(adata.obsp), raw=raw)
    scadv_ns = {k: v for k, v in (adata.uns.get(K.UNS) or {}).items() if k != K.PREPARE}
    if scadv_ns:
        new.uns[K.UNS] = scadv_ns
    adata._init_as_actual(new)
    obs = {}
    if library_size is not None:
        obs[K.LIBRARY_SIZE] = library_size
    prepare_rec = {k: v for k, v in recipe.items() if k != "provenance"}
    prepare_rec.update(layer="None", x_is_model_input=True)
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
