"""``scadv.tl.add_model``: store a CellTypist or scikit-learn model, as plain arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import scanpy.logging as logg
from anndata import AnnData

from ... import _model as M
from ... import _provenance as P
from ... import _recipe as R
from ... import _validate as V
from ... import models as MD
from ..._errors import ScadvInputError
from ..._results import write_results
from . import _resolve as RS


def add_model(
    adata: AnnData,
    model: MD.Model | Any,
    *,
    label_key: str | None = None,
    split_key: str | None = None,
    observed_range: bool = True,
    layer: str | None = None,
    missing_genes: R.MissingGenes = "error",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Store a classifier you already use, so every ``model=<key>`` tool can audit it.

    The model is stored as plain arrays (never a pickle), like the classifiers of
    :func:`scadv.tl.train_classifier`, and survives ``write_h5ad`` / ``read_h5ad``: its genes,
    its own preprocessing recipe, its weights, classes and decision rule.
    :func:`scadv.models.from_record` (or :func:`scadv.models.from_adata`) rebuilds it.

    Parameters
    ----------
    adata
        The AnnData to store it in.
    model
        A :class:`scadv.models.Model` made by :func:`scadv.models.from_celltypist` or
        :func:`scadv.models.from_sklearn` or :func:`scadv.models.from_torch`, or a CellTypist
        ``Model`` object. For a torch module held in memory only its description is stored
        (genes, classes, preprocessing, output rule, a digest of its weights; record kind
        ``'scadv.torch'``): the tools then take the object itself as ``model=``, and read its
        ``label_key`` / ``split_key`` from this record.
    label_key
        ``obs`` column of true labels, recorded so that :func:`scadv.tl.predict` reports
        accuracy and attacks can use ``away_from='label'``.
    split_key
        ``obs`` column of a train / val / test split (e.g. ``'scadv_split'`` of scadv's MLP),
        recorded so that ``cells='test'`` selects the same test cells for this model.
    observed_range
        Measure each gene's range of the model input over ``adata``'s cells (the box of
        ``clip='observed'`` attacks). ``False``: the lowest possible value (zero
        expression) and the model's clip (or no upper bound).
    layer, missing_genes
        Where to read the expression for ``observed_range`` (counts or log-normalised values;
        see :meth:`scadv.models.Model.model_input`).
    key_added
        Key of the stored model; default the model's own (``'celltypist'``,
        ``'logistic_regression'``, ``'linear_svc'``, ``'mlp_classifier'``, …).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes:

    ``adata.uns['scadv'][key_added]``
        The model record: ``kind`` (``'scadv.linear'``, ``'scadv.sklearn_mlp'`` or
        ``'scadv.torch'``),
        ``weights``, ``arch``, ``genes``, ``classes``, ``prepare`` (its preprocessing recipe),
        ``output`` (how logits become probabilities), ``decision_rule``, ``name``, ``source``
        (library, estimator, CellTypist's description), ``label_key`` / ``split_key`` when
        given, and provenance.
    """
    V.options(locals())
    start = logg.info("storing a classifier")
    params = P.call_params(locals(), add_model)
    params["model"] = type(model).__name__
    converted = MD.as_model(model)
    if converted is None:
        if hasattr(model, "fit") or hasattr(model, "classes_"):
            raise ScadvInputError(
                f"a scikit-learn {type(model).__name__} needs its genes and preprocessing "
                "first: add_model(adata, scadv.models.from_sklearn(estimator, genes=..., "
                "preprocessing=...)).")
        raise ScadvInputError(
            f"model must be a scadv.models.Model or a CellTypist Model, got "
            f"{type(model).__name__}.")
    record = converted.to_record() if converted.storable else RS.memory_record(converted)
    adata = V.start(adata, copy=copy)
    for what, key in (("label_key", label_key), ("split_key", split_key)):
        if key is not None and key not in adata.obs:
            raise ScadvInputError(f"{what}={key!r} is not a column of adata.obs.")
    key = key_added or converted.default_key
    if not isinstance(key, str) or not key or "/" in key:
        raise ScadvInputError(f"key_added must be a non-empty string without '/', got {key!r}.")
    recipe = dict(record["prepare"])
    note = "none"
    if observed_range:  # streamed: a batch of cells at a time
        src = R.source(adata, recipe, layer=layer, missing_genes=missing_genes)
        low = np.full(src.n_genes, np.inf, dtype=np.float32)
        high = np.full(src.n_genes, -np.inf, dtype=np.float32)
        for _, xb in src.batches():
            if len(xb):
                low = np.minimum(low, xb.min(axis=0))
                high = np.maximum(high, xb.max(axis=0))
        recipe["x_min"] = low.astype(np.float32)
        recipe["x_max"] = high.astype(np.float32)
        note = f"{adata.n_obs} cells"
    recipe["observed_range"] = note
    record["prepare"] = recipe
    record["key"] = key
    if label_key is not None:
        record["label_key"] = label_key
    if split_key is not None:
        record["split_key"] = split_key
    record["provenance"] = P.record(params)
    M.check_record(record)
    write_results(adata, step=f"stored {converted.name} as {key!r}", start=start,
                  uns={key: record})
    return adata if copy else None
