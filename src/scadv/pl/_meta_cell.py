"""``scadv.pl.meta_cell``: one cell before and after an attack, and the detector's verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _device as D
from .. import _keys as K
from .. import _model as M
from .. import _store as ST
from .. import _validate as V
from .._errors import ScadvInputError
from ..tl import _common as C
from . import _meta_common as PM
from . import _utils as U


@U.doc_ax_show_save
def meta_cell(
    adata: AnnData,
    cell: str,
    *,
    layer: str | None = None,
    key: str = K.DEFAULT_DETECTOR,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Class probabilities of one cell before and after an attack, with the detector's verdict.

    Grey bars: the classifier's probabilities for the clean cell; red bars: for its version
    in ``layer``. The title gives the true label (when known), both predictions and, for
    each version, the detector's score against its threshold.

    Parameters
    ----------
    adata
        Holds a detector from :func:`scadv.tl.meta_detect` and the attack layer.
    cell
        Name of the cell (``adata.obs_names``).
    layer
        Adversarial (or benign) layer; default the first evaluated adversarial layer.
    key
        Key of the detector.
    {ax_show_save}
    """
    V.options(locals())
    V.name("cell", cell)
    V.name("key", key)
    V.unique_cells(adata, why=f"the cell {cell!r}")
    rec = PM.detector(adata, key)
    if cell not in adata.obs_names:
        raise ScadvInputError(f"cell {cell!r} is not in adata.obs_names.")
    if layer is None:
        names = [n for n, ev in rec["evaluation"].items() if str(ev.get("kind")) == "adversarial"]
        if not names:
            raise ScadvInputError(f"detector {key!r} has no evaluated adversarial layer; pass "
                                  "layer=...")
        layer = names[0]
    score_col = K.meta_score(key, layer)
    if not ST.exists(adata, layer) or score_col not in adata.obs:
        raise ScadvInputError(f"layer {layer!r} has not been scored by detector {key!r}; run "
                              f"scadv.tl.meta_evaluate(adata, key={key!r}).")
    i = adata.obs_names.get_loc(cell)
    adv_score = float(adata.obs[score_col].iloc[i])
    if not np.isfinite(adv_score):
        raise ScadvInputError(f"cell {cell!r} was not changed in layer {layer!r} (e.g. not a "
                              "test cell); pick an attacked cell.")
    model = str(rec["model"])
    classifier = C.model_record(adata, model)
    classes = [str(c) for c in np.asarray(classifier["classes"])]
    net = M.from_record(classifier, D.resolve("cpu"))
    x = np.vstack([ST.reader(adata, classifier["prepare"])[[i]],
                   ST.reader(adata, classifier["prepare"], layer=layer)[[i]]])
    _, logits = M.infer(net, x, device=D.resolve("cpu"))
    proba = M.softmax(logits)
    thr = float(rec["threshold"])
    clean_score = float(adata.obs[K.meta_score(key)].iloc[i])

    ax = U.axes(ax, figsize=(6.5, 0.35 * len(classes) + 1.8))
    pos = np.arange(len(classes))
    ax.barh(pos - 0.2, proba[0], height=0.4, color="0.6", label="clean")
    ax.barh(pos + 0.2, proba[1], height=0.4, color="#d62728", label=layer)
    ax.set_yticks(pos, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("class probability")
    label_key = str(classifier.get("label_key", ""))
    truth = (f"true {adata.obs[label_key].iloc[i]}; "
             if label_key in adata.obs and adata.obs[label_key].notna().iloc[i] else "")

    def verdict(s: float) -> str:
        return f"{s:.3f} → {'FLAGGED' if s >= thr else 'passed'}"

    U.set_title(ax, f"{cell}: {truth}{classes[int(proba[0].argmax())]} → "
                 f"{classes[int(proba[1].argmax())]}\ndetector (threshold {thr:.3f}): clean "
                 f"{verdict(clean_score)}, attacked {verdict(adv_score)}")
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    return U.finish(ax, show=show, save=save, name="meta_cell")
