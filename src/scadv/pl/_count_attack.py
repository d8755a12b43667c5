"""``scadv.pl.count_attack``, ``count_genes`` and ``fragility``: the count-space threat model
in pictures (flip rate against UMIs per cell type, the genes attackers use, per-cell
fragility per cell type), and their section of the HTML report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .. import _keys as K
from .. import _validate as V
from .._colors import NOT_ATTACKED_COLOR, fragility_colors
from .._errors import ScadvInputError
from . import _utils as U
from ._report import Context, esc, kv, section, table

#: Line styles of the runs compared in :func:`count_attack` (first run solid).
STYLES = ("-", "--", ":", "-.")


def _count_record(adata: AnnData, key: str) -> Mapping[str, Any]:
    rec = U.record(adata, key, needs=("budgets", "flip_rate_per_class", "classes"),
                   made_by="scadv.tl.count_attack")
    if str(rec.get("method", "")) != "count_attack":
        raise ScadvInputError(f"adata.uns['scadv'][{key!r}] is not a scadv.tl.count_attack run.")
    return rec


@U.doc_ax_show_save
def count_attack(
    adata: AnnData,
    *,
    key: str | Sequence[str] = K.COUNT_ATTACK,
    labels: Sequence[str] | None = None,
    per_class: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Fraction of cells flipped against the number of UMIs the attacker may edit.

    One line per cell type (in its ``sc.pl.umap`` colour) and a thick black line for all
    attacked cells. Pass several runs (e.g. the same cells attacked on a plain and on a
    hardened model: ``key=['count_attack', 'count_attack_robust']``) to compare them: each
    run gets its own line style. A model that needs more UMIs has its lines further right.

    Parameters
    ----------
    adata
        Holds results of :func:`scadv.tl.count_attack`.
    key
        The run (its ``key_added``), or several runs to compare.
    labels
        Legend names of the runs (default: their keys, with the model attacked).
    per_class
        Draw a line per cell type (``False``: only the overall line of each run).
    {ax_show_save}
    """
    V.options(locals())
    keys = list(V.names("key", key) or ())
    V.names("labels", labels, allow_none=True)
    V.flag("per_class", per_class)
    if not keys or len(keys) > len(STYLES):
        raise ScadvInputError(f"pass one to {len(STYLES)} count-attack runs, got {keys}.")
    recs = [_count_record(adata, k) for k in keys]
    if labels is None:
        labels = [f"{k} (model {r.get('model', '?')})" for k, r in zip(keys, recs, strict=True)]
    elif len(labels) != len(keys):
        raise ScadvInputError(f"labels needs one name per run ({len(keys)}), got {labels!r}.")
    ax = U.axes(ax, figsize=(7.2, 4.2))
    shown: dict[str, str] = {}
    top = 1
    for style, rec in zip(STYLES, recs, strict=False):
        budgets = np.atleast_1d(np.asarray(rec["budgets"], dtype=float))
        top = max(top, int(budgets.max()))
        classes = [str(c) for c in np.asarray(rec["classes"])]
        label_key = str(rec.get("grouped_by", ""))
        palette = U.palette(adata, classes, label_key)
        n = np.asarray(rec["n_cells_per_class"])
        flips = np.atleast_2d(np.asarray(rec["flip_rate_per_class"], dtype=float))
        if per_class:
            for c in np.flatnonzero(n > 0):
                ax.plot(budgets, flips[:, c], ls=style, color=palette[c], lw=1.4, marker="o",
                        ms=3)
                shown.setdefault(classes[c], palette[c])
        ax.plot(budgets, np.asarray(rec["flip_rate"], dtype=float), ls=style, color="black",
                lw=2.6, marker="o", ms=4)
    ax.set_xscale("log")
    ticks = sorted({int(b) for r in recs for b in np.atleast_1d(np.asarray(r["budgets"]))})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(min(ticks) / 1.25, top * 1.25)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("UMIs the attacker may add or remove (budget)")
    ax.set_ylabel("fraction of cells flipped")
    ax.grid(alpha=0.3)
    runs = [Line2D([], [], color="black", lw=2.6, ls=s, label=f"{lab}: all cells")
            for s, lab in zip(STYLES, labels, strict=False)]
    types = [Line2D([], [], color=c, lw=1.4, label=name) for name, c in shown.items()]
    ax.legend(handles=runs + types, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize="small", frameon=False)
    n_cells = int(np.asarray(recs[0]["n_cells"]))
    what = "Count-space attack" if len(recs) == 1 else "Count-space attack, runs compared"
    U.set_title(ax, f"{what}: flipped cells per UMI budget ({n_cells} {recs[0].get('cells', '')}"
                    f" cells)")
    return U.finish(ax, show=show, save=save, name="count_attack")


@U.doc_ax_show_save
def count_genes(
    adata: AnnData,
    *,
    key: str = K.COUNT_ATTACK,
    top: int = 15,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """The genes a count-space attacker edits most, next to how often they are detected.

    One bar per gene (most UMIs first) over the cells the attack flipped at its largest
    budget: UMIs that switched on a gene the cell did not express, other UMIs added, and UMIs
    removed. Each bar is labelled with the gene's detection rate (fraction of the reference
    cells with a count > 0); the title compares the edited genes' median detection rate with
    that of all model genes. Rarely detected genes with tiny standard deviations are the
    preprocessing's weak spot: one UMI moves them by many SD.

    Parameters
    ----------
    adata
        Holds a result of :func:`scadv.tl.count_attack`.
    key
        Its ``key_added``.
    top
        Number of genes shown.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.positive_int("top", top)
    rec = _count_record(adata, key)
    genes: pd.DataFrame = rec["genes"]
    if not isinstance(genes, pd.DataFrame) or genes.empty:
        raise ScadvInputError(f"the count attack {key!r} flipped no cell, so no gene was edited "
                              "(try larger budgets).")
    rows = genes.head(int(top))
    y = np.arange(len(rows))
    ax = U.axes(ax, figsize=(6.4, 0.28 * max(len(rows), 3) + 1.4))
    on = rows["switched_on"].to_numpy(dtype=float)
    added = rows["added"].to_numpy(dtype=float) - on
    removed = rows["removed"].to_numpy(dtype=float)
    colors = fragility_colors(5)
    ax.barh(y, on, color=colors[0], label="switched on a silent gene")
    ax.barh(y, added, left=on, color=colors[1], label="added to an expressed gene")
    ax.barh(y, removed, left=on + added, color=colors[4], label="removed")
    total = on + added + removed
    for yi, t, d in zip(y, total, rows["detection"].to_numpy(dtype=float), strict=True):
        ax.text(t + 0.01 * total.max(), float(yi), f"detected in {100 * d:.1f}%", va="center",
                fontsize="x-small")
    ax.set_xlim(0, total.max() * 1.45)
    ax.set_yticks(y, [str(g) for g in rows["gene"]], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("UMIs edited in the flipped cells")
    ax.legend(loc="lower right", fontsize="x-small", frameon=False)
    share = float(rec.get("switched_on_fraction", np.nan))
    U.set_title(ax, f"Genes the attack edits ({100 * share:.0f}% of UMIs switch on a silent "
                    f"gene); median detection {100 * float(rec['edited_detection_median']):.1f}%"
                    f" vs {100 * float(rec['detection_median']):.1f}% for all model genes")
    return U.finish(ax, show=show, save=save, name="count_genes")


@U.doc_ax_show_save
def fragility(
    adata: AnnData,
    *,
    key: str = K.COUNT_ATTACK,
    groupby: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Per-cell fragility per cell type: how many UMIs (or how large an ε) flip each cell.

    One row per cell type: every attacked cell as a dot in the type's ``sc.pl.umap`` colour,
    with a box over its quartiles and the median marked; cells not flipped within the
    largest budget sit in a separate column on the right ("not flipped"), with their number.
    Meant to sit beside ``sc.pl.umap(adata, color='scadv_min_umis_bin')`` (or
    ``'scadv_min_eps'``), e.g. ``fig, axs = plt.subplots(1, 2)`` and ``ax=axs[1]``.

    Parameters
    ----------
    adata
        Holds a result of :func:`scadv.tl.count_attack` (fewest UMIs per cell) or of
        :func:`scadv.tl.fragility` (smallest ε per cell).
    key
        Its ``key_added`` (default: the count attack's).
    groupby
        ``obs`` column to group cells by (default: the classifier's labels, or its
        predictions for cells without one).
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("groupby", groupby, allow_none=True)
    rec = U.record(adata, key, needs=("method", "classes"),
                   made_by="scadv.tl.count_attack or scadv.tl.fragility")
    method = str(rec["method"])
    if method == "count_attack":
        column, top = K.min_umis(key), float(np.max(np.asarray(rec["budgets"])))
        xlabel, unit = "fewest UMIs that flip the cell", "UMIs"
    elif method == "fragility":
        column, top = K.min_eps(key), float(rec["eps_max"])
        xlabel, unit = "smallest L∞ ε that flips the cell (z-score units)", "ε"
    else:
        raise ScadvInputError(f"adata.uns['scadv'][{key!r}] is neither a count attack nor a "
                              "fragility run.")
    if column not in adata.obs:
        raise ScadvInputError(f"obs[{column!r}] is missing; run {method} again.")
    values = adata.obs[column].to_numpy(dtype=float)
    attacked = ~np.isnan(values)
    model = str(rec.get("model", K.DEFAULT_MODEL))
    if groupby is None:
        label_key = str(rec.get("grouped_by", ""))
        groups = _groups(adata, label_key, model)
        classes = [str(c) for c in np.asarray(rec["classes"])]
    else:
        if groupby not in adata.obs:
            raise ScadvInputError(f"groupby {groupby!r} is not an obs column.")
        groups = adata.obs[groupby].astype(object).where(adata.obs[groupby].notna(), None)
        groups = np.asarray([None if g is None else str(g) for g in groups], dtype=object)
        label_key = groupby
        classes = [c for c in pd.unique(groups[attacked]) if c is not None]
    palette = U.palette(adata, classes, label_key)
    present = [c for c in classes if ((groups == c) & attacked).any()]
    if not present:
        raise ScadvInputError(f"no attacked cell in obs[{column!r}].")
    med = {c: np.median(values[(groups == c) & attacked]) for c in present}
    order = sorted(present, key=lambda c: (med[c], c))
    finite = values[attacked & np.isfinite(values)]
    low = float(finite[finite > 0].min()) if (finite > 0).any() else top / 100
    beyond = top * 1.9  # the "not flipped" column
    ax = U.axes(ax, figsize=(6.0, 0.42 * len(order) + 1.5))
    rng = np.random.default_rng(0)
    for row, cls in enumerate(order):
        v = values[(groups == cls) & attacked]
        color = palette[classes.index(cls)]
        shown = np.where(np.isfinite(v), np.maximum(v, low / 1.5), beyond)
        jitter = rng.uniform(-0.25, 0.25, len(v))
        ax.scatter(shown, row + jitter, s=7, color=color, alpha=0.7, linewidths=0, zorder=2)
        fin = v[np.isfinite(v)]
        if len(fin) >= 2:
            q1, q3 = np.percentile(np.maximum(fin, low / 1.5), [25, 75])
            ax.plot([q1, q3], [row, row], color="0.15", lw=5, alpha=0.35, solid_capstyle="butt",
                    zorder=1)
        if np.isfinite(med[cls]):
            ax.plot([med[cls]], [row], marker="|", ms=14, mew=2.5, color="0.1", zorder=3)
        n_out = int((~np.isfinite(v)).sum())
        if n_out:
            ax.text(beyond * 1.12, row, str(n_out), va="center", fontsize="x-small")
    ax.set_xscale("log")
    ax.axvline(top * 1.35, color=NOT_ATTACKED_COLOR, lw=1)
    ax.set_xlim(low / 2.2, beyond * 1.6)
    ticks = [t for t in (0.01, 0.03, 0.1, 0.3, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500)
             if low / 2.2 < t <= top]
    ax.set_xticks([*ticks, beyond], [*(f"{t:g}" for t in ticks), "not\nflipped"])
    ax.minorticks_off()
    n = [int(((groups == c) & attacked).sum()) for c in order]
    ax.set_yticks(np.arange(len(order)), [f"{c} (n={k})" for c, k in zip(order, n, strict=True)],
                  fontsize="small")
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    overall = np.median(values[attacked])
    U.set_title(ax, f"Fragility per cell type\nmedian {overall:.3g} {unit}, "
                    f"{int(attacked.sum())} cells (bar: median, band: quartiles)")
    return U.finish(ax, show=show, save=save, name="fragility")


def _groups(adata: AnnData, label_key: str, model: str) -> np.ndarray:
    """Each cell's true label, else the model's prediction (as the records group them)."""
    pred = adata.obs.get(K.pred(model))
    out = np.full(adata.n_obs, None, dtype=object)
    if pred is not None:
        out = np.asarray([None if pd.isna(p) else str(p) for p in pred], dtype=object)
    if label_key and label_key in adata.obs:
        lab = adata.obs[label_key]
        has = lab.notna().to_numpy()
        out[has] = lab[has].astype(str).to_numpy()
    return out


# ---- the report's section ---------------------------------------------------------------------


def _is_count(rec: Mapping[str, Any]) -> bool:
    return str(rec.get("method", "")) == "count_attack" and "budgets" in rec


def _is_fragility(rec: Mapping[str, Any]) -> bool:
    return str(rec.get("method", "")) == "fragility" and "median_min_eps" in rec


@section("Count-space attacks and fragility", order=35)
def _report(adata: AnnData, ctx: Context) -> str | None:
    counts = list(ctx.records(_is_count))
    frags = list(ctx.records(_is_fragility))
    if not counts and not frags:
        return None
    parts = []
    if counts:
        parts.append(
            "<p>Attacks on the raw counts: single UMIs added or removed, pushed through the "
            "model's own preprocessing (the library size changes with them). The fewest UMIs "
            "that flip a cell is a number a biologist can weigh: a cell that flips with a "
            "handful of molecules is not reliably classified.</p>")
    for key, rec in counts:
        budgets = np.atleast_1d(np.asarray(rec["budgets"]))
        df = pd.DataFrame({"UMIs": budgets.astype(int),
                           "flip rate": np.asarray(rec["flip_rate"], dtype=float)})
        lim = rec.get("limits", {})
        lib = lim.get("library", "None") if isinstance(lim, Mapping) else "None"
        lib_text = ("any" if isinstance(lib, str)
                    else f"{float(np.asarray(lib)[0]):g}–{float(np.asarray(lib)[1]):g}")
        rows = [("model", rec.get("model", "?")),
                ("cells", f"{int(np.asarray(rec['n_cells']))} ({rec.get('cells', '')})"),
                ("median fewest UMIs to flip", f"{float(rec['median_min_umis']):g}"),
                ("per-gene caps", f"+{lim.get('cap_add', '?')} / −{lim.get('cap_remove', '?')}"
                 if isinstance(lim, Mapping) else "?"),
                ("library size kept in", lib_text),
                ("UMIs switching on a silent gene",
                 f"{100 * float(rec.get('switched_on_fraction', np.nan)):.0f}%"),
                ("edited genes' median detection",
                 f"{100 * float(rec.get('edited_detection_median', np.nan)):.1f}% of cells "
                 f"(all model genes {100 * float(rec.get('detection_median', np.nan)):.1f}%)")]
        parts.append(f"<h3>Count attack {esc(key)}</h3>" + kv(rows) + table(df)
                     + ctx.figure(partial(count_attack, adata, key=key, show=False),
                                  alt=f"flip rate against UMIs, {key}")
                     + ctx.figure(partial(fragility, adata, key=key, show=False),
                                  alt=f"fewest UMIs per cell type, {key}"))
        genes = rec.get("genes")
        if isinstance(genes, pd.DataFrame) and not genes.empty:
            parts.append(ctx.figure(partial(count_genes, adata, key=key, show=False),
                                    alt=f"genes edited, {key}"))
        column = K.min_umis_bin(key)
        if "X_umap" in adata.obsm and column in adata.obs:
            from ._report import _umap

            parts.append(ctx.figure(partial(_umap, adata, column),
                                    alt=f"UMAP coloured by {column}"))
    if len(counts) > 1:
        groups: dict[tuple[int, str], list[str]] = {}
        for key, rec in counts:
            groups.setdefault((int(np.asarray(rec["n_cells"])), str(rec.get("cells", ""))),
                              []).append(key)
        for keys in groups.values():
            if len(keys) > 1:
                parts.append("<h3>Runs compared</h3>" + ctx.figure(
                    partial(count_attack, adata, key=keys[:len(STYLES)], show=False),
                    alt="count attack runs compared"))
    for key, rec in frags:
        classes = [str(c) for c in np.asarray(rec["classes"])]
        df = pd.DataFrame({"class": classes,
                           "cells": np.asarray(rec["n_cells_per_class"]).astype(int),
                           "median minimal ε": np.asarray(rec["median_min_eps_per_class"],
                                                          dtype=float)})
        parts.append(f"<h3>Fragility in model space ({esc(key)})</h3>"
                     f"<p>Smallest L∞ budget ε (z-score units) at which PGD flips each cell; "
                     f"median {float(rec['median_min_eps']):.3g} over "
                     f"{int(np.asarray(rec['n_cells']))} cells.</p>"
                     + table(df[df["cells"] > 0])
                     + ctx.figure(partial(fragility, adata, key=key, show=False),
                                  alt=f"minimal ε per cell type, {key}"))
    return "\n".join(parts)
