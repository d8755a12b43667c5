"""``scadv.pl.flip_rate``: per cell type, how often an attack flips the prediction."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys as K
from .. import _records as REC
from .. import _validate as V
from . import _utils as U


@U.doc_ax_show_save
def flip_rate(
    adata: AnnData,
    *,
    key: str = "pgd",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Per-class flip rate at each budget, next to per-class clean accuracy.

    One row per class (labelled with its number of attacked cells): a grey bar for the clean
    accuracy and one bar per ε for the fraction of cells whose predicted class the attack
    changed. Colour a UMAP by the flips with
    ``sc.pl.umap(adata, color='scadv_pgd_eps0.1_flipped_to')``.

    Parameters
    ----------
    adata
        Holds an attack run from :func:`scadv.tl.pgd` or :func:`scadv.tl.fgsm`.
    key
        Name of the attack run (its ``key_added``).
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    rec = U.record(adata, key, needs=("flip_rate_per_class", "eps", "classes"),
                   made_by="scadv.tl.pgd / scadv.tl.fgsm", schema={
                       "classes": REC.Field("strs", ("n_classes",)),
                       "eps": REC.Field("floats", ("n_eps",), low=0.0),
                       "flip_rate_per_class": REC.Field("floats", ("n_eps", "n_classes"),
                                                        finite="nan", low=0.0, high=1.0),
                       "clean_accuracy_per_class": REC.Field("floats", ("n_classes",),
                                                             finite="nan", low=0.0, high=1.0),
                       "n_cells_per_class": REC.Field("ints", ("n_classes",), low=0),
                       "n_cells": REC.Field("int", low=0),
                       "steps": REC.Field("int", low=1, optional=True),
                       "norm": REC.Field("str", optional=True),
                       "method": REC.Field("str", optional=True)})
    classes = [str(c) for c in np.asarray(rec["classes"])]
    eps = np.atleast_1d(np.asarray(rec["eps"], dtype=float))
    flips = np.atleast_2d(np.asarray(rec["flip_rate_per_class"], dtype=float))
    clean = np.asarray(rec["clean_accuracy_per_class"], dtype=float)
    n = np.asarray(rec["n_cells_per_class"])
    shown = np.flatnonzero(n > 0)

    ax = U.axes(ax, figsize=(6.5, 0.45 * len(shown) * (1 + len(eps) / 4) + 1.2))
    n_bars = len(eps) + 1
    height = 0.8 / n_bars
    ypos = np.arange(len(shown))
    colors = plt.get_cmap("Reds")(np.linspace(0.45, 0.9, len(eps)))
    ax.barh(ypos - 0.4 + height / 2, clean[shown], height=height, color="0.65",
            label="clean accuracy")
    for i, e in enumerate(eps):
        ax.barh(ypos - 0.4 + height * (i + 1.5), flips[i, shown], height=height,
                color=colors[i], label=f"flip rate, ε={K.format_eps(e)}")
    ax.set_yticks(ypos, [f"{classes[c]} (n={n[c]})" for c in shown])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of cells")
    norm = {"linf": "L∞", "l2": "L2"}.get(str(rec.get("norm")), str(rec.get("norm")))
    steps = int(np.asarray(rec.get("steps", 1)))
    U.set_title(ax, f"{str(rec.get('method', key)).upper()} ({norm}, {steps} step"
                 f"{'s' if steps != 1 else ''}) on {int(np.asarray(rec['n_cells']))} cells")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return U.finish(ax, show=show, save=save, name="flip_rate")
