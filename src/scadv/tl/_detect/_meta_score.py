"""``scadv.tl.meta_score``: apply a stored meta-detector to any AnnData."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scanpy.logging as logg
from anndata import AnnData

from ... import _device as D
from ... import _keys as K
from ... import _provenance as P
from ... import _recipe as R
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from .._attacks import _attack as A
from . import _common as MC


def meta_score(
    adata: AnnData,
    *,
    key: str = K.DEFAULT_DETECTOR,
    source: AnnData | str | os.PathLike | None = None,
    layer: str | None = None,
    layers: Sequence[str] | None = (),
    missing_genes: R.MissingGenes = "error",
    key_added: str | None = None,
    model: Any = None,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Score cells with a stored meta-detector: new cells, a reloaded ``.h5ad``, any layer.

    The detector and its classifier are rebuilt from their plain arrays (from ``adata`` or
    from ``source``, e.g. a colleague's ``.h5ad``); the detector refuses a classifier other
    than the one it was trained for. ``adata`` may be prepared data, raw counts or
    log-normalised values of any genes (matched by name, transformed with the classifier's
    recipe, ``X`` untouched), exactly as for :func:`scadv.tl.predict`; log-normalised data
    normalised to another total (CPM, scanpy's median normalisation) are converted to the
    recipe's first, with a warning. No labels are read: every feature comes from the model's
    own prediction. When more than 1% of the scored cells hold values that are not whole counts
    (corrected or imputed counts), the realism gate checks only for values below zero
    expression, with a warning.

    Parameters
    ----------
    adata
        Cells to score.
    key
        Key of the stored detector (``uns['scadv'][key]``).
    source
        AnnData holding the detector and its classifier; default ``adata``. Or the path of an
        ``.h5ad`` file: only the two records are read from it, never its cells. Both records
        are copied into ``adata.uns['scadv']`` so later calls find them.
    layer
        Score ``adata.layers[layer]`` instead of ``X`` / ``.raw`` (counts, log-normalised or
        model-space values).
    layers
        Model-space layers (e.g. adversarial layers) to score as well, each into its own
        columns; ``None`` scores every adversarial and benign layer scadv wrote for the
        detector's classifier. Default: none.
    missing_genes
        ``'error'`` (default) or ``'mean'`` (absent model genes set to their training mean;
        the realism gate does not check them, so they raise no alarm).
    key_added
        Names the output columns; default ``key``.
    model
        Only for a detector of a PyTorch classifier held in memory
        (:func:`scadv.models.from_torch`, whose network is not stored): that
        :class:`scadv.models.Model` object. Stored classifiers of every kind are rebuilt from
        their record.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show progress bars.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes (``k`` = ``key_added``):

    ``adata.obs['scadv_<k>_score']``, ``adata.obs['scadv_<k>_flag']``
        Detector score (the method's probability, 1 where the realism gate fires) and
        whether it reaches the stored threshold (categorical ``False`` / ``True``).
    ``adata.obs['<layer>_<k>_score']``, ``adata.obs['<layer>_<k>_flag']``
        The same for each layer in ``layers`` (NaN for cells the layer did not change).
    ``adata.uns['scadv'][key]``, ``adata.uns['scadv'][<classifier key>]``
        Copies of the detector and classifier records when they came from ``source``.
    """
    V.options(locals())
    V.name("key", key)
    V.names("layers", layers, allow_none=True, allow_empty=True)
    V.choice("missing_genes", missing_genes, ("error", "mean"))
    if source is not None and not isinstance(source, (AnnData, str, os.PathLike)):
        raise ScadvInputError(f"source must be an AnnData holding the detector, the path of "
                              f"its .h5ad, or None, got {type(source).__name__}.")
    start = logg.info(f"scoring with scadv meta-detector {key!r}")
    params = P.call_params(locals(), meta_score)
    params["source"] = ("None" if source is None else "AnnData" if isinstance(source, AnnData)
                        else os.fspath(source))
    params["model"] = "None" if model is None else repr(model)
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    det = MC.load(adata, key, source=source, device=dev, model=model)
    key_added = key_added or key
    model = str(det.record["model"])
    src = R.source(adata, det.classifier["prepare"], layer=layer,
                   missing_genes=missing_genes)
    infos = MC.find_layers(adata, model, None if layers is None else list(layers))
    obs, _, _ = MC.score_adata(adata, det, key=key_added, layers=infos, src=src, test=None,
                               progress=progress, device=device)
    uns: dict[str, Mapping[str, Any]] = {}
    if source is not None:
        _check_no_conflict(adata, key, det.record, model, det.classifier)
        uns[key] = {**dict(det.record), "provenance": {
            **dict(det.record.get("provenance", {})),
            "copied_by_meta_score": P.record(params),
        }}
        uns[model] = det.classifier
    n_flag = int(np.asarray(obs[K.meta_flag(key_added)] == True).sum())  # noqa: E712
    write_results(
        adata, step=f"meta-detector scores from {src.label} ({n_flag} of {adata.n_obs} cells "
                    "flagged)",
        start=start, uns=uns or None, obs=obs, update=set(uns),
        colors={col: [A.UNCHANGED_COLOR, A.FLIPPED_COLOR] for col in obs
                if col.endswith("_flag")},
    )
    return adata if copy else None


def _check_no_conflict(adata: AnnData, key: str, record: Mapping[str, Any], model: str,
                       classifier: Mapping[str, Any]) -> None:
    """Refuse to overwrite a different detector or classifier already stored in ``adata``."""
    ns = adata.uns.get(K.UNS)
    if not isinstance(ns, Mapping):
        return
    mine = ns.get(key)
    if isinstance(mine, Mapping) and mine is not record and (
            MC.detector_fingerprint(mine) != MC.detector_fingerprint(record)):
        raise ScadvInputError(
            f"adata already holds a different entry under uns['scadv'][{key!r}]; scoring with "
            "the source's detector would overwrite it. Score a copy, or rename yours first "
            f"(adata.uns['scadv']['mine'] = adata.uns['scadv'].pop({key!r}))."
        )
    theirs = ns.get(model)
    if isinstance(theirs, Mapping) and theirs is not classifier and (
            MC.classifier_fingerprint(theirs) != MC.fingerprint(classifier)):
        raise ScadvInputError(
            f"adata already holds a different classifier under uns['scadv'][{model!r}]; scoring "
            "with the source's detector would overwrite it. Score a copy, or rename yours first."
        )
