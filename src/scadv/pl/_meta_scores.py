"""``scadv.pl.meta_scores``: detector scores of clean and attacked test cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys as K
from .. import _validate as V
from .._colors import CLEAN_COLOR, series_colors
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
    save: str | Path | bool | None = None,
) -> Axes:
    """Histograms of the detector score: clean test cells and each attack's flipped cells,
    one row each.

    Every series gets its own row (a ridgeline), so none hides another even where they
    coincide (unconstrained PGD typically scores 1 for every cell): the top row is the clean
    test cells (grey), each further row one attack layer (only its successful attacks: test
    cells whose prediction flipped), each histogram scaled to its row. The dashed line is the
    calibrated threshold: cells at or right of it are flagged, and each row says which
    fraction that is. Cells caught by the realism gate score 1.

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
    thr = float(rec["threshold"])
    series = [(f"clean (n={len(clean)})", clean, CLEAN_COLOR)]
    for c, color in zip(cells, series_colors(len(cells)), strict=True):
        rows = c.rows if c.kind == "benign" else c.flipped
        what = "perturbed" if c.kind == "benign" else "flipped"
        series.append((f"{c.label} ({what} n={int(rows.sum())})", c.score[rows], color))
    ax = U.axes(ax, figsize=(7, 0.75 * len(series) + 1.4))
    edges = np.linspace(0, 1, int(bins) + 1)
    for row, (label, scores, color) in enumerate(series):
        base = float(len(series) - 1 - row)  # first series on top
        counts, _ = np.histogram(scores[np.isfinite(scores)], bins=edges)
        height = counts / counts.max() * 0.85 if counts.max() > 0 else counts.astype(float)
        ax.stairs(base + height, edges, baseline=base, fill=True, color=color, alpha=0.75,
                  label=label)
        ax.stairs(base + height, edges, baseline=base, color=color, linewidth=1.2)
        flagged = float((scores >= thr).mean()) if len(scores) else float("nan")
        ax.text(1.01, base + 0.3, f"{flagged:.0%} flagged" if len(scores) else "no cells",
                transform=ax.get_yaxis_transform(), fontsize="small", va="center")
    ax.axvline(thr, color="k", linestyle="--", linewidth=1)
    ax.set_yticks(np.arange(len(series))[::-1] + 0.3, [lab for lab, _, _ in series])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.05, len(series) - 0.05)
    ax.set_xlabel(f"detector score (dashed: threshold {thr:.3f}; 1: flagged by the realism "
                  "gate)")
    U.set_title(ax, f"meta-detector {key!r}: test cells (each row scaled to its own maximum)")
    return U.finish(ax, show=show, save=save, name="meta_scores")
