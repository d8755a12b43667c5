"""``scadv.pl.meta_confusion``: the classifier on clean and attacked cells, and the detector."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys as K
from .. import _validate as V
from .._errors import ScadvInputError
from ..tl import _common as C
from . import _meta_common as PM
from . import _utils as U


def meta_confusion(
    adata: AnnData,
    *,
    key: str = K.DEFAULT_DETECTOR,
    layer: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> list[Axes]:
    """Three confusion matrices on test cells: classifier clean, classifier attacked, detector.

    1. True label × the classifier's prediction on clean test cells.
    2. True label × its prediction on the attacked versions of the same cells (``layer``).
    3. The detector: clean test cells and the attack's successful (flipped) test cells ×
       passed / flagged (the evaluation's ``confusion_matrix``).

    Colours are row fractions; numbers are cell counts.

    Parameters
    ----------
    adata
        Holds a detector from :func:`scadv.tl.meta_detect` and the attack layer.
    key
        Key of the detector.
    layer
        Adversarial layer; default the first evaluated one.
    ax
        Three axes to draw into; a new figure by default.
    show
        Show the figure; ``None`` follows :attr:`scanpy.settings.autoshow`.
    save
        Save the figure (as every scadv plot; see :func:`scadv.pl.flip_rate`).

    Returns
    -------
    The three axes.
    """
    V.options(locals())
    V.name("key", key)
    rec = PM.detector(adata, key)
    evaluation = rec["evaluation"]
    adversarial = [n for n, ev in evaluation.items() if str(ev.get("kind")) == "adversarial"]
    if layer is None:
        if not adversarial:
            raise ScadvInputError(f"detector {key!r} has no evaluated adversarial layer.")
        layer = adversarial[0]
    if layer not in adversarial or "detector" not in evaluation[layer]:
        raise ScadvInputError(f"layer {layer!r} is not among the layers detector {key!r} was "
                              f"evaluated on ({adversarial}); run scadv.tl.meta_evaluate.")
    model = str(rec["model"])
    classifier = C.model_record(adata, model)
    classes = [str(c) for c in np.asarray(classifier["classes"])]
    label_key = str(classifier.get("label_key", ""))
    test = PM.test_mask(adata, rec)
    y = (C.class_index(V.labels(adata, label_key), classes) if label_key in adata.obs
         else np.full(adata.n_obs, -1))
    clean_pred = C.class_index(adata.obs[K.pred(model)].astype(str), classes)
    adv_col = adata.obs[K.layer_pred(layer)]
    adv_pred = C.class_index(adv_col.astype(str).where(adv_col.notna()), classes)
    attacked = test & (adv_pred >= 0) & (y >= 0)
    labelled = test & (y >= 0)

    if ax is None:
        _, axes = plt.subplots(1, 3, figsize=(17, 5.2), layout="constrained",
                               gridspec_kw={"width_ratios": [1, 1, 0.45]})
        axes = list(axes)
    else:
        axes = list(ax)
        if len(axes) != 3:
            raise ScadvInputError(f"ax must be three axes, got {len(axes)}.")
    label = str(evaluation[layer].get("label", layer))
    for a, pred, rows, title in (
        (axes[0], clean_pred, labelled, f"classifier, clean (n={int(labelled.sum())})"),
        (axes[1], adv_pred, attacked, f"classifier, {label} (n={int(attacked.sum())})"),
    ):
        cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
        np.add.at(cm, (y[rows], pred[rows]), 1)
        _heatmap(a, cm, classes, classes, title)
        a.set_ylabel(f"true label ({label_key})")
        a.set_xlabel("predicted")
    det = np.asarray(evaluation[layer]["detector"]["confusion_matrix"], dtype=np.int64)
    _heatmap(axes[2], det, ["clean", "flipped"], ["passed", "flagged"],
             f"detector {key!r}, {label}")
    axes[2].set_ylabel("test cell")
    axes[2].set_xlabel("detector verdict")
    U.finish(axes[0], show=show, save=save, name="meta_confusion")
    return axes


def _heatmap(ax: Axes, counts: np.ndarray, rows: Sequence[str], cols: Sequence[str],
             title: str) -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    U.annotate_cells(ax, im, counts, lambda v: str(int(v)), skip_zero=True)
    ax.set_xticks(np.arange(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(rows)), rows)
    U.set_title(ax, title)
