"""``scadv.pl.meta_scores``: detector scores of clean and attacked test cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys as K
from .. import _validate as V
from . import _meta_common as PM
from . import _utils as U


@U.doc_ax_show_save
def meta_scores(
    adata: AnnData,
    *,
    key: str = K.DEFAULT_DETECTOR,
    layers: Sequence[str] | None = None,
    bins: int = 40,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Histograms of the detector score: clean test cells against each attack's flipped cells.

    Clean test cells are the filled grey histogram; each attack layer is a line (only its
    successful attacks: test cells whose prediction flipped). The dashed line is the
    calibrated threshold: cells at or right of it are flagged. Cells caught by the realism
    gate score 1.

    Parameters
    ----------
    adata
        Holds a detector from :func:`scadv.tl.meta_detect`.
    key
        Key of the detector.
    layers
        Layers to show; default every evaluated adversarial layer. Benign layers (from
        :func:`scadv.tl.benign_perturb`) may be named too: all their perturbed test cells
        are shown.
    bins
        Number of bins over [0, 1].
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.names("layers", layers, allow_none=True)
    V.positive_int("bins", bins)
    rec = PM.detector(adata, key)
    test = PM.test_mask(adata, rec)
    clean = PM.clean_scores(adata, key)[test]
    cells = PM.layers(adata, key, rec, layers)
    ax = U.axes(ax, figsize=(7, 4))
    edges = np.linspace(0, 1, int(bins) + 1).tolist()
    ax.hist(clean, bins=edges, density=True, color="0.75", label=f"clean (n={len(clean)})")
    colors = plt.get_cmap("tab10")(np.arange(len(cells)) % 10)
    for c, color in zip(cells, colors, strict=True):
        rows = c.rows if c.kind == "benign" else c.flipped
        what = "perturbed" if c.kind == "benign" else "flipped"
        ax.hist(c.score[rows], bins=edges, density=True, histtype="step", linewidth=1.6,
                color=color, label=f"{c.label} ({what} n={int(rows.sum())})")
    thr = float(rec["threshold"])
    ax.axvline(thr, color="k", linestyle="--", linewidth=1, label=f"threshold {thr:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("detector score (1: flagged by the realism gate)")
    ax.set_ylabel("density")
    ax.set_title(f"meta-detector {key!r}, test cells")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return U.finish(ax, show=show, save=save)
