"""``scadv.pl.robustness_curve``: accuracy against the attack budget, one line per model."""

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
def robustness_curve(
    adata: AnnData,
    *,
    key: str = K.ROBUSTNESS,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Accuracy against the true labels as the PGD budget ε grows, for several models.

    ε = 0 is the clean accuracy. Compute the curves first with
    :func:`scadv.tl.robust_accuracy` (e.g. ``models=['classifier', 'robust']``); a model that
    keeps its accuracy over a wider range of ε is more robust.

    Parameters
    ----------
    adata
        Holds a record of :func:`scadv.tl.robust_accuracy`.
    key
        Its ``key_added``.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    made_by = "scadv.tl.robust_accuracy"
    rec = U.record(adata, key, needs=("accuracy", "eps", "models"), made_by=made_by, schema={
        "eps": REC.Field("floats", ("n_eps",), low=0.0),
        "accuracy": REC.Field("floats", ("n_models", "n_eps"), finite="nan", low=0.0, high=1.0),
        "models": REC.Field("strs", ("n_models",)),
        "attack": REC.Field("map", optional=True),
        "same_cells": REC.Field("bool", optional=True)})
    if "attack" in rec:
        U.check(rec["attack"], {"steps": REC.Field("int", low=1, optional=True)}, key=key,
                made_by=made_by)
    eps = np.atleast_1d(np.asarray(rec["eps"], dtype=float))
    acc = np.atleast_2d(np.asarray(rec["accuracy"], dtype=float))
    models = [str(m) for m in np.atleast_1d(np.asarray(rec["models"]))]
    ax = U.axes(ax, figsize=(5.5, 4))
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(models):
        ax.plot(eps, acc[i], marker="o", color=colors(i), label=name)
    ax.set_xlabel("L∞ budget ε (z-score units)")
    ax.set_ylabel("accuracy under PGD (true labels)")
    ax.set_ylim(0, 1)
    attack = rec.get("attack", {})
    steps = int(np.asarray(attack.get("steps", 10)))
    same = bool(rec.get("same_cells", True))
    U.set_title(ax, f"Robustness ({steps}-step PGD away from the label"
                 + ("" if same else "; different test cells") + ")")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return U.finish(ax, show=show, save=save, name="robustness_curve")
