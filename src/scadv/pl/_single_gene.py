"""``scadv.pl.single_gene``: the genes whose modification alone changes a cluster's label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from .. import _records as REC
from .. import _validate as V
from .._errors import ScadvInputError
from . import _utils as U

NOT_FLIPPED = "#b0b0b0"  # a grey no scanpy palette uses


@U.doc_ax_show_save
def single_gene(
    adata: AnnData,
    *,
    key: str = "single_gene",
    target: str | None = None,
    top: int = 20,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """The genes that hurt a cluster's label most when modified alone, flips highlighted.

    One bar per (gene, modification), the most harmful first: it runs from the unmodified mean
    probability of the cluster's label (dotted line) to the mean probability after the
    modification, on an axis that spans the values shown. Bars of genes that flip the cluster
    are coloured by the new label (its colour in ``sc.pl.umap``); the others are grey.

    Parameters
    ----------
    adata
        Holds a result of :func:`scadv.tl.single_gene`.
    key
        Its ``key_added``.
    target
        The cluster to show (default: the first one attacked).
    top
        Number of bars.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("target", target, allow_none=True)
    V.positive_int("top", top)
    rec = U.record(adata, key, needs=("table", "summary", "targets"),
                   schema={"table": REC.Field("table", columns=(
                               "cluster", "modification", "gene", "flipped", "new_label",
                               "original_score")),
                           "summary": REC.Field("table", columns=(
                               "cluster", "modification", "original_score", "original_label",
                               "n_flip_genes", "n_cells")),
                           "targets": REC.Field("strs", (None,), min_rows=1),
                           "classes": REC.Field("strs", (None,)),
                           "cluster_key": REC.Field("str", optional=True)},
                   made_by="scadv.tl.single_gene")
    table: pd.DataFrame = rec["table"]
    summary: pd.DataFrame = rec["summary"]
    targets = [str(t) for t in np.asarray(rec["targets"])]
    target = targets[0] if target is None else str(target)
    if target not in targets:
        raise ScadvInputError(f"cluster {target!r} was not attacked in {key!r} "
                              f"(attacked: {targets}).")
    rows = table[table["cluster"] == target].sort_values(["original_score", "gene"])
    rows = rows.head(int(top))
    info = summary[summary["cluster"] == target]
    new_labels = set(rows.loc[rows["flipped"].astype(bool), "new_label"].astype(str))
    if info.empty or not new_labels <= set(np.asarray(rec["classes"]).astype(str)):
        raise ScadvInputError(f"the stored scadv.tl.single_gene record {key!r} is malformed: "
                              "its summary or labels do not match its table. Run "
                              "scadv.tl.single_gene again.")
    base_score = float(info["original_score"].iloc[0])
    base_label = str(info["original_label"].iloc[0])
    classes = [str(c) for c in np.asarray(rec["classes"])]
    palette = U.palette(adata, classes, str(rec.get("cluster_key", "")))
    ax = U.axes(ax, figsize=(6.0, 0.28 * max(len(rows), 3) + 1.3))
    y = np.arange(len(rows))
    colors = [palette[classes.index(lab)] if flip else NOT_FLIPPED
              for lab, flip in zip(rows["new_label"], rows["flipped"], strict=True)]
    score = rows["original_score"].to_numpy(dtype=float)
    # bars start at the unmodified value: their length is the change, and the axis spans the
    # values shown (a 0-1 axis squeezes changes of a few thousandths into one pixel)
    ax.barh(y, score - base_score, left=base_score, color=colors, edgecolor=colors)
    ax.scatter(score, y, color=colors, s=14, zorder=3)  # zero-length bars stay visible
    ax.axvline(base_score, color="0.3", ls=":", lw=1, label="unmodified")
    lo, hi = min(score.min(), base_score), max(score.max(), base_score)
    pad = max(0.08 * (hi - lo), 1e-4)
    ax.set_xlim(lo - pad, hi + pad)
    names = [f"{g} ({m})" for g, m in zip(rows["gene"], rows["modification"], strict=True)]
    ax.set_yticks(y, names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel(f"mean P({base_label}) over the cluster after the modification "
                  f"(unmodified {base_score:.4g})")
    counts = ", ".join(f"{m}: {int(n)}" for m, n in zip(info["modification"],
                                                       info["n_flip_genes"], strict=True))
    U.set_title(ax, f"{target} (n={int(info['n_cells'].iloc[0])}): genes that flip it alone — "
                 f"{counts}")
    flipped_to = sorted(set(rows.loc[rows["flipped"], "new_label"]))
    handles = [Patch(color=palette[classes.index(c)], label=f"flips to {c}") for c in flipped_to]
    handles.append(Patch(color=NOT_FLIPPED, label="label unchanged"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
              frameon=False)
    return U.finish(ax, show=show, save=save, name="single_gene")
