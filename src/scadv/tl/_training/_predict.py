"""``scadv.tl.predict``: apply a stored classifier, from this AnnData or another one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData

from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _provenance as P
from ... import _recipe as R
from ... import _store as ST
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from .. import _common as C
from . import _train as T


def predict(
    adata: AnnData,
    *,
    model: str = K.DEFAULT_MODEL,
    source: AnnData | Mapping[str, Any] | str | os.PathLike | None = None,
    layer: str | None = None,
    missing_genes: R.MissingGenes = "error",
    key_added: str | None = None,
    batch_size: int = 4096,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Predict cell types with a stored classifier, rebuilt from its plain arrays.

    The model comes from ``adata`` itself or from ``source`` (e.g. a colleague's ``.h5ad``).
    ``adata`` may be the prepared training data, new raw counts, or new log-normalised data:
    genes are matched by name and the model's own preprocessing recipe is applied batch by
    batch (see :func:`scadv.pp.transform`); ``adata.X`` is never modified. ``adata`` may be
    backed on disk (``read_h5ad(..., backed='r')``) or dask-backed: it is read a batch of
    cells at a time.

    Parameters
    ----------
    adata
        Cells to classify.
    model
        Key of the stored classifier (``uns['scadv'][model]``).
    source
        AnnData (or model record) holding the classifier; default ``adata``. Or the path of an
        ``.h5ad`` file: only the classifier's record (``uns['scadv'][model]``) is read from it,
        never its cells, however large the atlas. The record is copied into
        ``adata.uns['scadv'][key_added]`` so later scadv calls on ``adata`` find it.
    layer
        Read the expression from ``adata.layers[layer]``, or predict the cells of a stored
        perturbation of that name (e.g. ``'scadv_pgd_eps0.1'``, see
        :func:`scadv.get.perturbations`).
    missing_genes
        ``'error'`` (default) or ``'mean'`` (set absent model genes to their training mean).
    key_added
        Key for the outputs; default ``model``.
    batch_size
        Cells per forward pass.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show a progress bar over the cells.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes (``p`` = ``'scadv'`` for
    ``key_added='classifier'``, else ``'scadv_<key_added>'``):

    ``adata.obs['<p>_pred']``
        Predicted class.
    ``adata.obsm['<p>_proba']``
        Class probabilities (columns in the model's class order), by the model's own rule
        (``record['output']``: a softmax for scadv's MLP; CellTypist's per-class sigmoids).
    ``adata.obsm['X_<p>_emb']``
        Cell embedding (last hidden layer; the logits for a linear model).
    ``adata.uns['scadv'][key_added]``
        A copy of the model record when it came from ``source``.
    """
    V.options(locals())
    V.name("model", model)
    V.choice("missing_genes", missing_genes, ("error", "mean"))
    if source is not None and not isinstance(source, (AnnData, Mapping, str, os.PathLike)):
        raise ScadvInputError(f"source must be an AnnData, the path of an .h5ad, a stored "
                              f"classifier record or None, got {type(source).__name__}.")
    start = logg.info(f"predicting with scadv classifier {model!r}")
    adata = V.start(adata, copy=copy)
    record = C.model_record(adata, model, source)
    key_added = key_added or model
    dev = D.resolve(device)
    change = None
    if layer is not None and ST.entry(adata, layer) is not None:
        # a stored perturbation (e.g. an adversarial version of the cells)
        clean = R.source(adata, record["prepare"], missing_genes=missing_genes)
        src, change = ST.plan(adata, layer, clean)
        label = f"perturbation {layer!r}"
    else:
        src = R.source(adata, record["prepare"], layer=layer, missing_genes=missing_genes)
        label = src.label
    net = M.from_record(record, dev)
    emb, logits = T.predict_all(net, src, device=device, progress=progress,
                                batch_size=batch_size, change=change)
    classes = [str(c) for c in np.asarray(record["classes"])]
    pred = logits.argmax(axis=1)
    label_key = str(record.get("label_key", ""))
    if label_key in adata.obs:
        y = C.class_index(V.labels(adata, label_key), classes)
        if (y >= 0).any():
            acc = float((pred[y >= 0] == y[y >= 0]).mean())
            logg.info(f"    accuracy against obs[{label_key!r}] on {(y >= 0).sum()} labelled "
                      f"cells: {acc:.3f}")
    uns = None
    if source is not None or key_added != model:
        uns = {key_added: {**dict(record), "provenance": {
            **dict(record.get("provenance", {})),
            "copied_by_predict": P.record({"model": model, "input": label}),
        }}}
    write_results(
        adata, step=f"prediction from {label}", start=start, uns=uns,
        obs={K.pred(key_added): pd.Categorical.from_codes(pred, categories=classes)},
        obsm={K.proba(key_added): M.probabilities(logits, M.output_rule(record)),
              K.embedding(key_added): emb},
    )
    return adata if copy else None
