"""``scadv.pl.roc``: ROC curves of the detector, one per attack."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from sklearn.metrics import roc_auc_score, roc_curve

from .. import _keys as K
from .. import _validate as V
from .._colors import series_colors
from . import _meta_common as PM
from . import _utils as U


@U.doc_ax_show_save
def roc(
    adata: AnnData,
    *,
    key: str = K.DEFAULT_DETECTOR,
    layers: Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """ROC curve of the detector per attack layer, on test cells.

    Negatives are the clean test cells, positives the test cells each attack flipped (the
    convention of the evaluation's ``auroc``). A dot marks the calibrated threshold.

    Parameters
    ----------
    adata
        Holds a detector from :func:`scadv.tl.meta_detect`.
    key
        Key of the detector.
    layers
        Adversarial layers to show; default every evaluated one.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.names("layers", layers, allow_none=True)
    rec = PM.detector(adata, key)
    test = PM.test_mask(adata, rec)
    clean = PM.clean_scores(adata, key)[test]
    thr = float(rec["threshold"])
    ax = U.axes(ax, figsize=(5.5, 5))
    cells = [c for c in PM.layers(adata, key, rec, layers) if c.flipped.any()]
    colors = series_colors(len(cells))
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]
    n = len(cells)
    for i, (c, color) in enumerate(zip(cells, colors, strict=True)):
        adv = c.score[c.flipped]
        y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
        s = np.r_[clean, adv]
        fpr, tpr, _ = roc_curve(y, s)
        auc = roc_auc_score(y, s)
        # curves often coincide (several attacks all caught): earlier ones are drawn wider
        # and underneath, each with its own dash pattern, so every one stays visible
        ax.plot(fpr, tpr, color=color, linewidth=1.5 + 2.0 * (n - 1 - i) / max(n - 1, 1),
                linestyle=styles[i % len(styles)], zorder=2 + i,
                label=f"{c.label}: AUROC {auc:.3f} (n={len(adv)})")
        ax.plot([(clean >= thr).mean()], [(adv >= thr).mean()], "o", color=color,
                markersize=7 - 3 * i / max(n - 1, 1), markeredgecolor="white", zorder=20 + i)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    # a margin on every side: perfect curves run along x = 0 and y = 1, not under the spines
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false-positive rate (clean test cells flagged)")
    ax.set_ylabel("true-positive rate (flipped test cells flagged)")
    U.set_title(ax, f"meta-detector {key!r}; dots: threshold {thr:.3f}")
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    return U.finish(ax, show=show, save=save, name="roc")
