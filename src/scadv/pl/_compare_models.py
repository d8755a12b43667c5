"""``scadv.pl.compare_models``: several classifiers side by side, with 95% intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _validate as V
from .._errors import ScadvInputError
from ..tl._models import _compare as CM
from . import _utils as U

_LABELS = {
    "clean_accuracy": "clean accuracy",
    "flip_rate": "flip rate (PGD)",
    "single_gene_flip_fraction": "fraction of (gene, modification) pairs that flip a cluster",
    "detector_auroc": "detector AUROC",
}


@U.doc_ax_show_save
def compare_models(
    adata: AnnData,
    *,
    key: str = "compare_models",
    metric: str = "flip_rate",
    group: str = "all",
    eps: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """One metric of :func:`scadv.tl.compare_models` for every model, with its 95% interval.

    ``metric='flip_rate'`` draws the flip rate against ε, one line per white-box model (error
    bars: Wilson intervals); black-box models have no flip rate and are named in the legend as
    ``'black-box: n/a'``. The other metrics are drawn as one horizontal bar per model with its
    interval (``detector_auroc`` at ``eps``, default the largest budget).

    Parameters
    ----------
    adata
        Holds a :func:`scadv.tl.compare_models` result.
    key
        Its ``key_added``.
    metric
        ``'flip_rate'``, ``'clean_accuracy'``, ``'single_gene_flip_fraction'`` or
        ``'detector_auroc'``.
    group
        ``'all'`` (default) or one class.
    eps
        The budget of ``detector_auroc`` bars.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("metric", metric)
    V.name("group", group)
    if eps is not None:
        V.positive("eps", eps)
    table = CM.table(adata, key)
    if metric not in CM.METRICS:
        raise ScadvInputError(f"metric must be one of {list(CM.METRICS)}, got {metric!r}.")
    rows = table[(table["metric"] == metric) & (table["group"] == str(group))]
    if rows.empty:
        groups = sorted(set(table.loc[table["metric"] == metric, "group"]))
        raise ScadvInputError(f"no {metric!r} rows for group {group!r} in {key!r} (groups: "
                              f"{groups}).")
    models = list(dict.fromkeys(table["model"]))
    colors = dict(zip(models, plt.get_cmap("tab10")(np.arange(len(models)) % 10), strict=True))
    title_group = "all cells" if group == "all" else str(group)
    if metric == "flip_rate":
        ax = U.axes(ax, figsize=(5.5, 3.8))
        for m in models:
            r = rows[rows["model"] == m].sort_values("eps")
            if r.empty:
                continue
            if r["value"].isna().all():
                ax.plot([], [], ls="none", label=f"{m} (black-box: n/a)")
                continue
            v = r["value"].to_numpy()
            err = np.clip(np.vstack([v - r["ci_low"].to_numpy(), r["ci_high"].to_numpy() - v]),
                          0, None)  # (rounding: a bound may sit a hair inside the value)
            ax.errorbar(r["eps"].to_numpy(), v, yerr=err, marker="o", capsize=3,
                        color=colors[m], label=m)
        ax.set_xlabel("ε (each model's own input units)")
        ax.set_ylabel("flip rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  frameon=False)
        U.set_title(ax, f"PGD flip rate, {title_group} (95% Wilson intervals)")
        return U.finish(ax, show=show, save=save, name="compare_models")
    if metric == "detector_auroc":
        budgets = np.sort(rows["eps"].dropna().unique())
        at = float(budgets[-1]) if eps is None else float(eps)
        rows = rows[np.isclose(rows["eps"], at)]
        if rows.empty:
            raise ScadvInputError(f"no detector AUROC at ε={eps}; budgets: {budgets.tolist()}.")
    rows = rows.drop_duplicates("model")
    ax = U.axes(ax, figsize=(5.5, 0.45 * len(rows) + 1.2))
    ypos = np.arange(len(rows))
    v = rows["value"].to_numpy(dtype=float)
    err = np.vstack([v - rows["ci_low"].to_numpy(dtype=float),
                     rows["ci_high"].to_numpy(dtype=float) - v])
    ax.barh(ypos, np.nan_to_num(v), xerr=np.clip(np.nan_to_num(err), 0, None), capsize=3,
            color=[colors[m] for m in rows["model"]])
    ax.set_yticks(ypos, [f"{m} ({a})" for m, a in zip(rows["model"], rows["access"],
                                                      strict=True)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(_LABELS[metric])
    ax.grid(axis="x", alpha=0.3)
    extra = f" at ε={rows['eps'].iloc[0]:g}" if metric == "detector_auroc" else ""
    U.set_title(ax, f"{_LABELS[metric]}{extra}, {title_group} (95% intervals)")
    return U.finish(ax, show=show, save=save, name="compare_models")
