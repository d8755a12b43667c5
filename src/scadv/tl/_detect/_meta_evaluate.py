"""``scadv.tl.meta_evaluate``: re-score and re-evaluate a stored detector on the layers present."""

from __future__ import annotations

from collections.abc import Sequence

import scanpy.logging as logg
from anndata import AnnData

from ... import _device as D
from ... import _keys as K
from ... import _recipe as R
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from .._attacks import _attack as A
from . import _common as MC
from ._meta_detect import _split


def meta_evaluate(
    adata: AnnData,
    *,
    key: str = K.DEFAULT_DETECTOR,
    layers: Sequence[str] | None = None,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Evaluate a stored detector again, on every adversarial and benign layer now present.

    :func:`scadv.tl.meta_detect` evaluates the perturbations present when it runs. Attacks
    made afterwards (another budget, :func:`scadv.tl.adaptive_pgd` or
    :func:`scadv.tl.adaptive_count_attack` against the detector itself) or new
    :func:`scadv.tl.benign_perturb` perturbations are evaluated by this function, with the
    same stored detector, thresholds and baselines: nothing is retrained. Test-split cells
    only; every flag at the stored threshold.

    Parameters
    ----------
    adata
        The AnnData the detector was trained on (it needs the classifier's split).
    key
        Key of the stored detector.
    layers
        Layers to (re-)evaluate; their entries are added to the stored evaluation and the
        others kept. Default: every adversarial layer of attacks on the detector's classifier
        and every benign layer, replacing the stored evaluation.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show progress bars.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes the same per-cell columns as
    :func:`scadv.tl.meta_detect` (``obs['scadv_<key>_score' / '_flag']`` and
    ``obs['<layer>_<key>_score' / '_flag']``) and updates ``evaluation``, ``table`` and
    ``scored`` (whether the realism gate checked the count lattice on this data) in
    ``adata.uns['scadv'][key]``.
    """
    V.options(locals())
    V.name("key", key)
    V.names("layers", layers, allow_none=True)
    start = logg.info(f"evaluating scadv meta-detector {key!r}")
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    det = MC.load(adata, key, source=None, device=dev)
    model = str(det.record["model"])
    split = _split(adata, det.classifier, model)
    infos = MC.find_layers(adata, model, layers)
    if not infos:
        raise ScadvInputError(
            f"adata holds no adversarial layer of classifier {model!r} and no benign layer to "
            "evaluate the detector on: make some with scadv.tl.pgd, scadv.tl.fgsm, "
            "scadv.tl.adaptive_pgd or scadv.tl.benign_perturb first."
        )
    src = R.source(adata, det.classifier["prepare"], what="adata")
    obs, evaluation, note = MC.score_adata(adata, det, key=key, layers=infos, src=src,
                                           test=split == K.SPLIT_TEST, progress=progress,
                                           device=device)
    record = dict(det.record)
    if layers is not None:
        evaluation = {**dict(record.get("evaluation") or {}), **evaluation}
    record["evaluation"] = evaluation
    record["table"] = MC.table(evaluation)
    record["scored"] = note
    write_results(adata, step=f"meta-detector evaluation on {len(infos)} layers", start=start,
                  uns={key: record}, obs=obs, update={key},
                  colors={col: [A.UNCHANGED_COLOR, A.FLIPPED_COLOR] for col in obs
                          if col.endswith("_flag")})
    return adata if copy else None
