"""Plots of gene attributions and of the checks that tell whether they hold up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _records as REC
from .. import _validate as V
from .._errors import ScadvInputError
from ..tl._explain import _rankings as RK
from . import _utils as U


def _heatmap(ax: Axes, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], *,
             cmap: str, vmin: float | None, vmax: float | None, label: str,
             annotate: bool) -> None:
    """A labelled heatmap with a colour bar (NaN cells blank), values written in when small."""
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(np.arange(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(rows)), rows)
    if annotate:
        U.annotate_cells(ax, im, values, lambda v: f"{v:.2f}", fontsize="x-small")
    ax.figure.colorbar(im, ax=ax, label=label, fraction=0.046, pad=0.04)


@U.doc_ax_show_save
def top_genes(
    adata: AnnData,
    *,
    key: str = "attr_integrated_gradients",
    n_genes: int = 5,
    classes: Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Each class's top attributed genes, and how much every class relies on them.

    Rows: the top ``n_genes`` of each class (grouped by class); columns: classes; colour: the
    class's mean attribution of the gene, divided by the largest absolute value in that
    column so classes are comparable.

    Parameters
    ----------
    adata
        Holds the attribution run ``key`` (from :func:`scadv.tl.attribute`).
    key
        The attribution run.
    n_genes
        Top genes per class.
    classes
        Classes to show (default: every class explained).
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.positive_int("n_genes", n_genes)
    V.names("classes", classes, allow_none=True)
    rec = RK.record(adata, key)
    scores, all_classes, genes = RK.scores(rec)
    shown = [c for c in (classes or all_classes) if c in all_classes
             and not np.isnan(scores[all_classes.index(c)]).all()]
    if not shown:
        raise ScadvInputError(f"none of the classes {list(classes or [])} is explained in "
                              f"{key!r} (classes: {all_classes}).")
    ci = [all_classes.index(c) for c in shown]
    rows = []
    for c in ci:
        rows += [g for g in RK.top_k(scores[c], int(n_genes)) if g not in rows]
    vals = scores[np.ix_(ci, rows)].T
    vals = vals / np.nanmax(np.abs(vals), axis=0, keepdims=True).clip(min=1e-12)
    ax = U.axes(ax, figsize=(0.55 * len(shown) + 2.5, 0.22 * len(rows) + 1.5))
    signed = bool(rec.get("signed", True))
    _heatmap(ax, vals, list(genes[rows]), shown, cmap="RdBu_r" if signed else "Reds",
             vmin=-1 if signed else 0, vmax=1, label="mean attribution (÷ column max)",
             annotate=False)
    model = rec.get("model", "the model")  # optional in attribution records
    U.set_title(ax, f"{rec['method']} on {model!s}: top {n_genes} genes per class")
    return U.finish(ax, show=show, save=save, name="top_genes")


@U.doc_ax_show_save
def attribution_stability(
    adata: AnnData,
    *,
    key: str = "attr_integrated_gradients_stability",
    metric: Literal["jaccard", "spearman"] = "jaccard",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Per class, how much of its top-k ranking survives each perturbation.

    Parameters
    ----------
    adata
        Holds a record of :func:`scadv.tl.attribution_stability`.
    key
        Its ``key_added``.
    metric
        ``'jaccard'`` (Jaccard@k of the top genes) or ``'spearman'`` (rank correlation).
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("metric", metric)
    rec = U.record(adata, key, needs=("jaccard", "spearman", "perturbations", "classes"),
                   schema={m: REC.Field("floats", ("n_perturbations", "n_classes"),
                                        finite="nan") for m in ("jaccard", "spearman")}
                   | {"perturbations": REC.Field("strs", ("n_perturbations",)),
                      "classes": REC.Field("strs", ("n_classes",)),
                      "noise": REC.Field("float"), "downsample": REC.Field("float"),
                      "eps": REC.Field("float"), "k": REC.Field("int", low=1),
                      "method": REC.Field("str"), "attribution_key": REC.Field("str")},
                   made_by="scadv.tl.attribution_stability")
    if metric not in ("jaccard", "spearman"):
        raise ScadvInputError(f"metric must be 'jaccard' or 'spearman', got {metric!r}.")
    vals = np.atleast_2d(np.asarray(rec[metric], dtype=float))
    perts = [str(p) for p in np.asarray(rec["perturbations"])]
    classes = [str(c) for c in np.asarray(rec["classes"])]
    shown = [i for i in range(len(classes)) if np.isfinite(vals[:, i]).any()]
    ax = U.axes(ax, figsize=(6.5, 0.4 * len(shown) * (1 + len(perts) / 4) + 1.2))
    height = 0.8 / len(perts)
    ypos = np.arange(len(shown))
    colors = plt.get_cmap("tab10")
    labels = {"noise": f"noise (SD {rec['noise']:g})",
              "downsample": f"down-sampling to {rec['downsample']:g}",
              "adversarial": f"PGD ε={rec['eps']:g}"}
    for p, name in enumerate(perts):
        ax.barh(ypos - 0.4 + height * (p + 0.5), vals[p, shown], height=height,
                color=colors(p), label=labels.get(name, name))
    ax.set_yticks(ypos, [classes[i] for i in shown])
    ax.invert_yaxis()
    ax.set_xlim(0 if metric == "jaccard" else min(0, np.nanmin(vals)), 1)
    k = int(np.asarray(rec["k"]))
    ax.set_xlabel(f"Jaccard@{k} with the clean ranking" if metric == "jaccard"
                  else "Spearman correlation with the clean ranking")
    U.set_title(ax, f"Stability of {rec['method']} rankings ({rec['attribution_key']})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return U.finish(ax, show=show, save=save, name="attribution_stability")


@U.doc_ax_show_save
def attribution_agreement(
    adata: AnnData,
    *,
    key: str = "attr_agreement",
    metric: Literal["jaccard", "spearman"] = "jaccard",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Pairwise agreement of attribution runs (mean over classes), as an annotated heatmap.

    Parameters
    ----------
    adata
        Holds a record of :func:`scadv.tl.attribution_agreement`.
    key
        Its ``key_added``.
    metric
        ``'jaccard'`` (Jaccard@k of the top genes) or ``'spearman'``.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("metric", metric)
    rec = U.record(adata, key, needs=("jaccard_mean", "spearman_mean", "keys"),
                   schema={m: REC.Field("floats", ("n_keys", "n_keys"), finite="nan")
                           for m in ("jaccard_mean", "spearman_mean")}
                   | {"keys": REC.Field("strs", ("n_keys",)), "k": REC.Field("int", low=1)},
                   made_by="scadv.tl.attribution_agreement")
    if metric not in ("jaccard", "spearman"):
        raise ScadvInputError(f"metric must be 'jaccard' or 'spearman', got {metric!r}.")
    vals = np.asarray(rec[f"{metric}_mean"], dtype=float)
    keys = [str(k) for k in np.asarray(rec["keys"])]
    ax = U.axes(ax, figsize=(0.7 * len(keys) + 3, 0.6 * len(keys) + 1.5))
    k = int(np.asarray(rec["k"]))
    _heatmap(ax, vals, keys, keys, cmap="viridis", vmin=0 if metric == "jaccard" else -1,
             vmax=1, label=f"Jaccard@{k}" if metric == "jaccard" else "Spearman",
             annotate=True)
    U.set_title(ax, "Agreement of attribution rankings (mean over classes)")
    return U.finish(ax, show=show, save=save, name="attribution_agreement")


@U.doc_ax_show_save
def marker_overlap(
    adata: AnnData,
    *,
    key: str = "marker_overlap",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Per attribution run and class, the fraction of top-k genes that are DE markers.

    Parameters
    ----------
    adata
        Holds a record of :func:`scadv.tl.marker_overlap`.
    key
        Its ``key_added``.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    rec = U.record(adata, key, needs=("overlap", "keys", "classes"),
                   schema={"overlap": REC.Field("floats", ("n_keys", "n_classes"), finite="nan"),
                           "keys": REC.Field("strs", ("n_keys",)),
                           "classes": REC.Field("strs", ("n_classes",)),
                           "k": REC.Field("int", low=1)},
                   made_by="scadv.tl.marker_overlap")
    vals = np.atleast_2d(np.asarray(rec["overlap"], dtype=float))
    keys = [str(k) for k in np.asarray(rec["keys"])]
    classes = [str(c) for c in np.asarray(rec["classes"])]
    ax = U.axes(ax, figsize=(0.6 * len(classes) + 3, 0.5 * len(keys) + 1.8))
    k = int(np.asarray(rec["k"]))
    _heatmap(ax, vals, keys, classes, cmap="viridis", vmin=0, vmax=1,
             label=f"top-{k} genes among top-{k} DE markers", annotate=True)
    U.set_title(ax, "Overlap of attributions with rank_genes_groups markers")
    return U.finish(ax, show=show, save=save, name="marker_overlap")


@U.doc_ax_show_save
def enrichment(
    adata: AnnData,
    *,
    key: str = "attr_integrated_gradients_enrichment",
    n_sets: int = 3,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """−log10 FDR of the most enriched gene sets of each class (heatmap; dots mark FDR < 0.05).

    Parameters
    ----------
    adata
        Holds a record of :func:`scadv.tl.gene_set_enrichment`.
    key
        Its ``key_added``.
    n_sets
        Gene sets shown per class (its most significant ones).
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.positive_int("n_sets", n_sets)
    rec = U.record(adata, key, needs=("table", "n_universe"),
                   schema={"table": REC.Field("table", min_rows=1, columns=(
                               "class", "gene_set", "pval", "fdr", "k"))},
                   made_by="scadv.tl.gene_set_enrichment")
    table = pd.DataFrame(rec["table"])
    table["class"] = table["class"].astype(str)
    classes = list(dict.fromkeys(table["class"]))
    sets: list[str] = []
    for c in classes:
        best = table[table["class"] == c].sort_values("pval").head(int(n_sets))["gene_set"]
        sets += [s for s in best if s not in sets]
    wide = table.pivot_table(index="gene_set", columns="class", values="fdr", aggfunc="min")
    wide = wide.reindex(index=sets, columns=classes)
    vals = -np.log10(wide.to_numpy(dtype=float).clip(min=1e-300))
    ax = U.axes(ax, figsize=(0.6 * len(classes) + 4, 0.3 * len(sets) + 1.8))
    _heatmap(ax, vals, sets, classes, cmap="Reds", vmin=0, vmax=None, label="−log10 FDR",
             annotate=False)
    sig = np.argwhere(wide.to_numpy(dtype=float) < 0.05)
    ax.scatter(sig[:, 1], sig[:, 0], s=12, color="black", marker="o", label="FDR < 0.05")
    if len(sig):
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.25), fontsize="small", frameon=False)
    U.set_title(ax, f"Gene-set enrichment of the top {int(np.asarray(table['k'].iloc[0]))} genes")
    return U.finish(ax, show=show, save=save, name="enrichment")


@U.doc_ax_show_save
def attribution_truth(
    adata: AnnData,
    *,
    key: str = "attr_truth",
    metric: Literal["precision_at_k", "recall_at_k", "auprc"] = "precision_at_k",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Per class, how well each attribution run recovers the true markers.

    Parameters
    ----------
    adata
        Holds a record of :func:`scadv.tl.score_attributions`.
    key
        Its ``key_added``.
    metric
        ``'precision_at_k'``, ``'recall_at_k'`` or ``'auprc'`` (with the random ranking's
        AUPRC drawn as a dashed line per class).
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("metric", metric)
    rec = U.record(adata, key, needs=("precision_at_k", "auprc", "keys", "classes"),
                   schema={m: REC.Field("floats", ("n_keys", "n_classes"), finite="nan")
                           for m in ("precision_at_k", "recall_at_k", "auprc", "auprc_random")}
                   | {"keys": REC.Field("strs", ("n_keys",)),
                      "classes": REC.Field("strs", ("n_classes",)),
                      "k": REC.Field("int", low=1)},
                   made_by="scadv.tl.score_attributions")
    if metric not in ("precision_at_k", "recall_at_k", "auprc"):
        raise ScadvInputError("metric must be 'precision_at_k', 'recall_at_k' or 'auprc', got "
                              f"{metric!r}.")
    vals = np.atleast_2d(np.asarray(rec[metric], dtype=float))
    keys = [str(k) for k in np.asarray(rec["keys"])]
    classes = [str(c) for c in np.asarray(rec["classes"])]
    ax = U.axes(ax, figsize=(0.7 * len(classes) + 3, 4))
    width = 0.8 / len(keys)
    xpos = np.arange(len(classes))
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(keys):
        ax.bar(xpos - 0.4 + width * (i + 0.5), vals[i], width=width, color=colors(i),
               label=f"{name} (mean {np.nanmean(vals[i]):.2f})")
    if metric == "auprc":
        rand = np.nanmax(np.atleast_2d(np.asarray(rec["auprc_random"], dtype=float)), axis=0)
        ax.hlines(rand, xpos - 0.45, xpos + 0.45, colors="0.3", linestyles="dashed",
                  label="random ranking")
    ax.set_xticks(xpos, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    k = int(np.asarray(rec["k"]))
    ax.set_ylabel({"precision_at_k": f"precision@{k}", "recall_at_k": f"recall@{k}",
                   "auprc": "AUPRC"}[metric] + " of the true markers")
    U.set_title(ax, "Attributions against the ground truth")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return U.finish(ax, show=show, save=save, name="attribution_truth")
