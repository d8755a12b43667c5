"""How many molecules does it take? The count-space attack on PBMC3k, plain vs hardened.

Everything goes through scadv's public functions on PBMC3k raw counts (9 Seurat types):
``scadv.pp.prepare`` + ``scadv.tl.train_classifier(adata, 'cell_type', seed=s)`` is the
default ("plain") model of seed ``s``.

``--part main`` (per seed, test cells of the plain model)
    * ``scadv.tl.count_attack`` with the plain greedy search (``beam=1, top_k=1``) and the
      default search (beam 4, 16 candidates re-scored), budgets 1, 2, 5, 10, 20, 50 UMIs: the
      fraction flipped within each budget and the median of ``obs['scadv_min_umis']`` (cells
      not flipped within 50 count as more), overall and per cell type; which genes the attack
      edits next to their detection rate; the times of both.
    * z-space PGD rounded to counts: ``scadv.tl.pgd`` (default ε 0.05 / 0.1 / 0.15, and
      data-respecting ``keep_zeros=True, clip='observed'`` at ε 0.3 / 0.5); each adversarial
      model input is mapped back to counts (inverse z-score and log1p, the library size solved
      so that counts and library agree), rounded to whole counts ≥ 0 and re-run through the
      recipe: how far from whole numbers the implied counts sit and what fraction of the
      flips survive, next to the count attack in the same run.
    * ``scadv.tl.fragility`` (the smallest L∞ ε per cell) and its Spearman correlation with
      the fewest UMIs.

``--part hardening`` (per seed; options chosen on VALIDATION cells only)
    Each option is a model trained on the plain model's split (``split_key='scadv_split'``):
    robust preprocessing (``scadv.pp.prepare(std_floor=, max_value=, min_detection=,
    zscore=, target_sum=)``), count-space adversarial training
    (``scadv.tl.adversarial_train(space='counts', umis=, adv_ratio=)``) and combinations.
    For each: clean accuracy and ``scadv.tl.count_attack`` (beam 1, 16 candidates re-scored,
    budgets up to 200 UMIs) on the validation and on the test cells, medians per cell type
    on the test cells. The option "picked on val" has the highest validation median among
    the options within one point of the plain model's validation accuracy (ties: fewer
    validation cells flipped at 10 UMIs); the test columns are printed for the record and
    never used to choose.

``--part timing``
    The whole-test-split count attack at budgets 1–50 (default search and greedy), timed
    with the torch threads given by ``--threads``. On a shared machine times are upper bounds.

Results of each (seed, option) are cached as JSON in ``--cache`` so an interrupted run
resumes; ``--fresh`` ignores the cache.

Run::

    python benchmarks/count_attack.py --part main [--seeds 42 0 1] [--threads 1]
    python benchmarks/count_attack.py --part hardening [--options NAME ...]
    python benchmarks/count_attack.py --part timing --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from scipy.stats import spearmanr

import scadv
from scadv import _model as M
from scadv import _recipe as R
from scadv import _store as ST

BUDGETS = (1, 2, 5, 10, 20, 50)
HARD_BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200)
CPU = torch.device("cpu")
HERE = Path(__file__).resolve().parents[1]


# ---- data and models ----------------------------------------------------------------------

def plain(raw: ad.AnnData, seed: int, **prepare: Any) -> ad.AnnData:
    adata = raw.copy()
    scadv.pp.prepare(adata, progress=False, **prepare)
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    return adata


def mask(adata: ad.AnnData, split: str, key: str = "scadv_split") -> np.ndarray:
    return (adata.obs[key].astype(str) == split).to_numpy()


def attack(adata: ad.AnnData, cells: np.ndarray, *, key: str, model: str = "classifier",
           budgets: tuple[int, ...] = BUDGETS, beam: int = 4, top_k: int = 16
           ) -> tuple[np.ndarray, float]:
    """``scadv.tl.count_attack``; returns the attacked cells' minimal UMIs and the time."""
    t0 = time.perf_counter()
    scadv.tl.count_attack(adata, cells=cells, model=model, budgets=budgets, beam=beam,
                          top_k=top_k, key_added=key, progress=False, device="cpu")
    seconds = time.perf_counter() - t0
    col = "scadv_min_umis" if key == "count_attack" else f"scadv_{key}_min_umis"
    return adata.obs[col].to_numpy()[cells], seconds


def umi_summary(m: np.ndarray, budgets: tuple[int, ...] = BUDGETS) -> dict[str, float]:
    out = {f"flipped <= {b}": float((m <= b).mean()) for b in budgets}
    out["median UMIs"] = float(np.median(m))
    return out


def per_type(adata: ad.AnnData, cells: np.ndarray, m: np.ndarray) -> pd.DataFrame:
    labels = adata.obs["cell_type"].astype(str).to_numpy()[cells]
    rows = []
    for t in pd.unique(labels):
        sel = labels == t
        rows.append({"cell type": t, "cells": int(sel.sum()), "median UMIs": np.median(m[sel]),
                     "flipped <= 5": (m[sel] <= 5).mean(), "flipped <= 10": (m[sel] <= 10).mean(),
                     "flipped <= 50": (m[sel] <= 50).mean()})
    return pd.DataFrame(rows).sort_values("cells", ascending=False).set_index("cell type")


def gene_report(adata: ad.AnnData, key: str) -> dict[str, Any]:
    rec = adata.uns["scadv"][key]
    genes = rec["genes"]
    recipe = adata.uns["scadv"]["prepare"]
    std = pd.Series(np.asarray(recipe.get("lognorm_std", recipe["std"])),
                    index=np.asarray(recipe["genes"]).astype(str))
    top = genes.head(10)
    total = float(genes["umis"].sum())
    return {
        "UMIs added (fraction)": float(genes["added"].sum() / total) if total else np.nan,
        "UMIs switching on an undetected gene (fraction)": float(rec["switched_on_fraction"]),
        "detection rate of edited genes, UMI-weighted median": float(
            rec["edited_detection_median"]),
        "detection rate of all model genes, median": float(rec["detection_median"]),
        "distinct genes edited": len(genes),
        "top genes (gene, UMIs, detection, SD)": [
            (g, int(u), round(float(d), 4), round(float(std[g]), 3))
            for g, u, d in zip(top["gene"], top["umis"], top["detection"], strict=True)],
    }


# ---- z-space PGD rounded to counts -------------------------------------------------------

def implied_counts(z: np.ndarray, rest: np.ndarray, recipe: Mapping[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Counts whose recipe output is ``z`` (unclipped values), with the library size solved
    so that ``L = rest + Σ c``: ``c = expm1(lognorm) · L / T`` gives ``L = rest / (1 − S/T)``
    with ``S = Σ expm1(lognorm)``. Returns the real-valued counts and a mask of the cells for
    which no consistent library exists (``S ≥ T``)."""
    mean = np.asarray(recipe["mean"], dtype=np.float64)
    std = np.asarray(recipe["std"], dtype=np.float64)
    target = float(recipe["target_sum"])
    level = np.clip(np.expm1(z.astype(np.float64) * std + mean), 0.0, None)
    s = level.sum(axis=1)
    bad = s >= target * (1 - 1e-6)
    lib = np.where(bad, np.nan, rest / np.maximum(1 - s / target, 1e-12))
    return level * lib[:, None] / target, bad


def pgd_rounding(adata: ad.AnnData, cells: np.ndarray, *, eps: tuple[float, ...],
                 keep_zeros: bool, key: str) -> dict[str, dict[str, float]]:
    record = adata.uns["scadv"]["classifier"]
    recipe = record["prepare"]
    net = M.from_record(record)
    scadv.tl.pgd(adata, eps=eps, keep_zeros=keep_zeros, clip="observed" if keep_zeros else None,
                 key_added=key, progress=False)
    idx = np.flatnonzero(cells)
    src = R.source(adata, recipe)
    counts, lib = src.counts(idx)
    dense = counts.toarray()
    rest = lib - dense.sum(axis=1)
    clean_pred = adata.obs["scadv_pred"].cat.codes.to_numpy()[idx]
    x0 = scadv.get.model_input(adata, cells=idx)
    clean_real, _ = implied_counts(x0, rest, recipe)
    out = {}
    for e in eps:
        name = f"scadv_{key}_eps{e:g}"
        z = scadv.get.perturbed(adata, name, cells=idx)
        flipped = (adata.obs[f"{name}_flipped"].astype(str) == "True").to_numpy()[idx]
        real, bad = implied_counts(z, rest, recipe)
        moved = (np.abs(z - x0) > 1e-6) & (real > 0)
        whole = np.clip(np.round(real), 0, None)
        whole[bad] = dense[bad]  # no consistent counts: unchanged
        x = ST.counts_model_input(ST.add_counts(counts, lib, whole - dense)[0],
                                  whole.sum(axis=1) + rest, src)
        pred = M.infer(net, x, device=CPU)[1].argmax(axis=1)
        survive = (pred != clean_pred) & flipped
        out[f"eps {e:g}"] = {
            "flip rate (z-space)": float(flipped.mean()),
            "flip rate after rounding to counts": float((pred != clean_pred).mean()),
            "flips surviving rounding (fraction)": float(survive.sum() / max(flipped.sum(), 1)),
            "distance to a whole count, moved genes with counts > 0 (mean)": float(
                np.abs(real - np.round(real))[moved & ~bad[:, None]].mean()),
            "distance to a whole count, clean detected genes (mean)": float(
                np.abs(clean_real - np.round(clean_real))[dense > 0].mean()),
            "UMIs changed by the rounded attack (median, flipped cells)": float(np.median(
                np.abs(whole - dense).sum(axis=1)[flipped])) if flipped.any() else np.nan,
            "cells without consistent counts": int(bad.sum()),
        }
    return out


# ---- part: main -----------------------------------------------------------------------------

def main_part(raw: ad.AnnData, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    adata = plain(raw, seed)
    out["train seconds"] = time.perf_counter() - t0
    test = mask(adata, "test")
    out["test cells"] = int(test.sum())
    out["clean test accuracy"] = float(
        adata.uns["scadv"]["classifier"]["metrics"]["test"]["accuracy"])
    greedy, out["seconds greedy"] = attack(adata, test, key="count_greedy", beam=1, top_k=1)
    default, out["seconds default"] = attack(adata, test, key="count_attack")
    out["greedy"] = umi_summary(greedy)
    out["default"] = umi_summary(default)
    out["per type"] = per_type(adata, test, default).reset_index().to_dict("list")
    out["genes"] = gene_report(adata, "count_attack")
    out["pgd default"] = pgd_rounding(adata, test, eps=(0.05, 0.1, 0.15), keep_zeros=False,
                                      key="pgd")
    out["pgd data-respecting"] = pgd_rounding(adata, test, eps=(0.3, 0.5), keep_zeros=True,
                                              key="pgd_real")
    t0 = time.perf_counter()
    scadv.tl.fragility(adata, progress=False, device="cpu")
    out["seconds fragility"] = time.perf_counter() - t0
    eps = adata.obs["scadv_min_eps"].to_numpy()[test]
    finite = np.isfinite(eps) & np.isfinite(default)
    out["fragility"] = {
        "median min eps (L-inf, SD units)": float(np.median(eps)),
        "cells with a flip found": float(np.isfinite(eps).mean()),
        "Spearman(min eps, min UMIs)": float(spearmanr(eps[finite], default[finite])[0]),
    }
    return out


# ---- part: hardening ------------------------------------------------------------------------

#: name → (prepare options, adversarial_train options or None)
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "plain": ({}, None),
    "std floor c=0.5": ({"std_floor": 0.5}, None),
    "std floor c=1": ({"std_floor": 1.0}, None),
    "std floor c=2": ({"std_floor": 2.0}, None),
    "clip 3": ({"max_value": 3.0}, None),
    "detected in >= 5% of cells": ({"min_detection": 0.05}, None),
    "log1p, no z-score": ({"zscore": False}, None),
    "target sum 1000, log1p, no z-score": ({"target_sum": 1e3, "zscore": False}, None),
    "std floor c=1 + clip 3": ({"std_floor": 1.0, "max_value": 3.0}, None),
    "count adv. training 5 UMIs": ({}, {"umis": 5}),
    "count adv. training 10 UMIs": ({}, {"umis": 10}),
    "count adv. training 20 UMIs": ({}, {"umis": 20}),
    "count adv. training 50 UMIs": ({}, {"umis": 50}),
    "count adv. training 10 UMIs, r=0.5": ({}, {"umis": 10, "adv_ratio": 0.5}),
    "count adv. training 20 UMIs, frozen PCA input": ({}, {"umis": 20, "freeze_input": True}),
    "std floor c=1 + count adv. training 10 UMIs": ({"std_floor": 1.0}, {"umis": 10}),
    "std floor c=1 + count adv. training 20 UMIs": ({"std_floor": 1.0}, {"umis": 20}),
    "std floor c=1 + count adv. training 50 UMIs": ({"std_floor": 1.0}, {"umis": 50}),
    "std floor c=1 + count adv. training 20 UMIs, frozen PCA input": (
        {"std_floor": 1.0}, {"umis": 20, "freeze_input": True}),
    "target sum 1000, no z-score + count adv. training 20 UMIs": (
        {"target_sum": 1e3, "zscore": False}, {"umis": 20}),
    "target sum 1000, no z-score + count adv. training 50 UMIs": (
        {"target_sum": 1e3, "zscore": False}, {"umis": 50}),
}


def hardened(raw: ad.AnnData, base: ad.AnnData, seed: int, prep: Mapping[str, Any],
             adv: Mapping[str, Any] | None) -> tuple[ad.AnnData, str]:
    """A model of one option on the plain model's split; returns the AnnData and its key."""
    adata = raw.copy()
    scadv.pp.prepare(adata, progress=False, **prep)
    adata.obs["scadv_split"] = base.obs["scadv_split"].copy()
    if adv is None:
        scadv.tl.train_classifier(adata, "cell_type", seed=seed, split_key="scadv_split",
                                  progress=False)
        return adata, "classifier"
    scadv.tl.adversarial_train(adata, "cell_type", space="counts", seed=seed,
                               split_key="scadv_split", progress=False, device="cpu", **adv)
    return adata, "robust"


def hardening_row(raw: ad.AnnData, base: ad.AnnData, seed: int, name: str) -> dict[str, Any]:
    prep, adv = OPTIONS[name]
    t0 = time.perf_counter()
    adata, model = (base, "classifier") if name == "plain" else hardened(raw, base, seed, prep,
                                                                         adv)
    seconds = time.perf_counter() - t0
    metrics = adata.uns["scadv"][model]["metrics"]
    val, test = mask(adata, "val"), mask(adata, "test")
    mv, _ = attack(adata, val, key="hard_val", model=model, budgets=HARD_BUDGETS, beam=1)
    mt, t_att = attack(adata, test, key="hard_test", model=model, budgets=HARD_BUDGETS, beam=1)
    rec = adata.uns["scadv"]["hard_test"]
    return {
        "option": name, "genes": len(np.asarray(adata.uns["scadv"][model]["genes"])),
        "val accuracy": float(metrics["val"]["accuracy"]),
        "val median UMIs": float(np.median(mv)), "val flipped <= 10": float((mv <= 10).mean()),
        "test accuracy": float(metrics["test"]["accuracy"]),
        "test median UMIs": float(np.median(mt)), "test flipped <= 10": float((mt <= 10).mean()),
        "test flipped <= 50": float((mt <= 50).mean()),
        "test UMIs switching on a gene": float(rec["switched_on_fraction"]),
        "test edited genes' detection": float(rec["edited_detection_median"]),
        "test per type": per_type(adata, test, mt).reset_index().to_dict("list"),
        "top genes": gene_report(adata, "hard_test")["top genes (gene, UMIs, detection, SD)"],
        "train seconds": seconds, "attack seconds": t_att,
    }


def pick(table: pd.DataFrame) -> str:
    """The option chosen on validation cells only."""
    base = table.loc["plain", "val accuracy"]
    ok = table[table["val accuracy"] >= base - 0.01 - 1e-9]
    return str(ok.sort_values(["val median UMIs", "val flipped <= 10"],
                              ascending=[False, True]).index[0])


# ---- part: final (the hardened default, default search) -------------------------------------

def final_part(raw: ad.AnnData, seed: int, name: str, figures: Path | None) -> dict[str, Any]:
    """The option picked on validation cells, attacked on the test cells with the default
    search (beam 4, 16 candidates re-scored, budgets up to 200), next to the plain model."""
    base = plain(raw, seed)
    prep, adv = OPTIONS[name]
    hard, model = hardened(raw, base, seed, prep, adv)
    test = mask(base, "test")
    out: dict[str, Any] = {"option": name}
    for label, adata, m in (("plain", base, "classifier"), ("hardened", hard, model)):
        key = f"count_{label}"
        umis, seconds = attack(adata, test, key=key, model=m, budgets=HARD_BUDGETS)
        out[label] = {**umi_summary(umis, HARD_BUDGETS),
                      "test accuracy": float(adata.uns["scadv"][m]["metrics"]["test"]["accuracy"]),
                      "attack seconds": seconds,
                      "per type": per_type(adata, test, umis).reset_index().to_dict("list"),
                      "genes": gene_report(adata, key)}
    if figures is not None:
        import matplotlib.pyplot as plt

        figures.mkdir(parents=True, exist_ok=True)
        hard.uns["scadv"]["count_plain"] = base.uns["scadv"]["count_plain"]
        ax = scadv.pl.count_attack(hard, key=["count_plain", "count_hardened"],
                                   labels=["plain", f"hardened ({name})"], show=False)
        ax.figure.savefig(figures / "count_attack_pbmc3k.png", dpi=110, bbox_inches="tight")
        plt.close("all")
        lognorm = base.copy()  # scanpy's standard UMAP of the same cells
        sc.pp.normalize_total(lognorm, target_sum=1e4)
        sc.pp.log1p(lognorm)
        sc.pp.highly_variable_genes(lognorm, n_top_genes=2000, subset=True)
        sc.pp.scale(lognorm, max_value=10)
        sc.pp.pca(lognorm, n_comps=30, random_state=0)
        sc.pp.neighbors(lognorm, random_state=0)
        sc.tl.umap(lognorm, random_state=0)
        base.obsm["X_umap"] = lognorm.obsm["X_umap"]
        fig, axs = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
        sc.pl.umap(base, color="scadv_count_plain_min_umis_bin", ax=axs[0], show=False,
                   title="fewest UMIs that flip each test cell (plain model)")
        scadv.pl.fragility(base, key="count_plain", ax=axs[1], show=False)
        fig.savefig(figures / "fragility_pbmc3k.png", dpi=110, bbox_inches="tight")
        plt.close("all")
    return out


# ---- part: distances (how far apart the types are, in UMIs) ------------------------------

def distances_part(raw: ad.AnnData) -> pd.DataFrame:
    """For each type, the nearest other type by the UMIs between their average profiles of
    the model genes at the median library size: the sum over genes of the difference of the
    means, each capped at 3 UMIs as the attacker's edits are (and uncapped). A yardstick for
    the UMI counts above: a cell halfway between two average profiles is that far from
    each, and real cells sit closer to the boundary than their type's average."""
    adata = raw.copy()
    scadv.pp.prepare(adata, progress=False)
    genes = np.asarray(adata.uns["scadv"]["prepare"]["genes"]).astype(str)
    x = adata[:, genes].X.toarray()
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    x = x / lib[:, None] * np.median(lib)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    types = [t for t in pd.unique(labels) if t != "nan"]
    mean = {t: x[labels == t].mean(axis=0) for t in types}
    rows = []
    for t in types:
        dist = {u: (np.minimum(np.abs(mean[t] - mean[u]), 3).sum(),
                    np.abs(mean[t] - mean[u]).sum()) for u in types if u != t}
        near = min(dist, key=lambda u: dist[u][0])
        rows.append({"cell type": t, "cells": int((labels == t).sum()), "nearest type": near,
                     "UMIs between averages (cap 3 per gene)": dist[near][0],
                     "UMIs between averages (no cap)": dist[near][1]})
    print(f"\nmedian library size {np.median(lib):g} UMIs")
    return pd.DataFrame(rows).set_index("cell type")


# ---- part: timing ---------------------------------------------------------------------------

def timing_part(raw: ad.AnnData, seed: int) -> dict[str, Any]:
    adata = plain(raw, seed)
    test = mask(adata, "test")
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "test cells": int(test.sum())}
    for name, beam, top_k in (("default", 4, 16), ("greedy", 1, 1)):
        times = []
        for _ in range(3):
            _, s = attack(adata, test, key=f"time_{name}", beam=beam, top_k=top_k)
            times.append(s)
        out[f"{name} seconds (best of 3)"] = min(times)
        out[f"{name} seconds (all)"] = times
    return out


# ---- driver ---------------------------------------------------------------------------------

def cached(path: Path, fresh: bool, make: Any) -> Any:
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, default=_json))
    return json.loads(path.read_text())


def _json(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj))


def _print_dict(title: str, d: Mapping[str, Any]) -> None:
    print(f"\n{title}")
    for k, v in d.items():
        if isinstance(v, float):
            print(f"  {k:<62} {v:.3f}")
        elif isinstance(v, list):
            print(f"  {k}:")
            for item in v:
                print(f"    {item}")
        else:
            print(f"  {k:<62} {v}")


def report_main(seed: int, r: Mapping[str, Any]) -> None:
    print(f"\n=========== seed {seed}: {r['test cells']} test cells, clean accuracy "
          f"{r['clean test accuracy']:.3f} ===========")
    _print_dict("count attack, plain greedy (beam 1, no re-scoring)", r["greedy"])
    _print_dict("count attack, default search (beam 4, 16 candidates re-scored)", r["default"])
    print("\nper cell type (default search; not flipped within 50 counts as more)")
    print(pd.DataFrame(r["per type"]).set_index("cell type").to_string(
        float_format=lambda v: f"{v:.3f}"))
    _print_dict("genes edited (flipped cells, default search, largest budget)", r["genes"])
    for name in ("pgd default", "pgd data-respecting"):
        for eps, d in r[name].items():
            _print_dict(f"{name} {eps}, rounded to counts", d)
    _print_dict("model-space fragility (scadv.tl.fragility, minimal L-inf eps)", r["fragility"])
    print(f"\ntimes (upper bounds on a shared machine): train {r['train seconds']:.1f} s, "
          f"greedy {r['seconds greedy']:.1f} s, default {r['seconds default']:.1f} s, "
          f"fragility {r['seconds fragility']:.1f} s")


def summary_main(runs: Mapping[int, Mapping[str, Any]], seeds: list[int]) -> None:
    print("\n=========== over seeds (mean ± sd) ===========")
    for search in ("greedy", "default"):
        for k in runs[seeds[0]][search]:
            vals = np.array([runs[s][search][k] for s in seeds])
            print(f"  {search:<8} {k:<30} {vals.mean():.3f} ± {vals.std():.3f}  "
                  f"({', '.join(f'{v:.3f}' for v in vals)})")
    for name, eps_list in (("pgd default", ("eps 0.05", "eps 0.1", "eps 0.15")),
                           ("pgd data-respecting", ("eps 0.3", "eps 0.5"))):
        for e in eps_list:
            for k in ("flip rate (z-space)", "flip rate after rounding to counts",
                      "flips surviving rounding (fraction)"):
                vals = np.array([runs[s][name][e][k] for s in seeds])
                print(f"  {name} {e}: {k} {vals.mean():.3f} ± {vals.std():.3f}")
    for k in ("median min eps (L-inf, SD units)", "Spearman(min eps, min UMIs)"):
        vals = np.array([runs[s]["fragility"][k] for s in seeds])
        print(f"  {k} {vals.mean():.3f} ± {vals.std():.3f}  "
              f"({', '.join(f'{v:.3f}' for v in vals)})")
    for k in ("UMIs switching on an undetected gene (fraction)",
              "detection rate of edited genes, UMI-weighted median"):
        vals = np.array([runs[s]["genes"][k] for s in seeds])
        print(f"  {k} {vals.mean():.3f} ± {vals.std():.3f}")


def report_final(seed: int, r: Mapping[str, Any]) -> None:
    print(f"\n=========== seed {seed}: plain vs hardened ({r['option']}), test cells, default "
          "search (beam 4, 16 re-scored), budgets up to 200 ===========")
    for label in ("plain", "hardened"):
        d = dict(r[label])
        per, genes = d.pop("per type"), d.pop("genes")
        _print_dict(label, d)
        print("  per type:")
        print("    " + pd.DataFrame(per).set_index("cell type").to_string(
            float_format=lambda v: f"{v:.3f}").replace("\n", "\n    "))
        _print_dict(f"  {label}: genes edited", genes)


def summary_final(finals: Mapping[int, Mapping[str, Any]], seeds: list[int]) -> None:
    print("\n=========== plain vs hardened over seeds (mean ± sd) ===========")
    for label in ("plain", "hardened"):
        for k in ("test accuracy", "median UMIs", "flipped <= 10", "flipped <= 50"):
            vals = np.array([finals[s][label][k] for s in seeds])
            print(f"  {label:<9} {k:<16} {vals.mean():.3f} ± {vals.std():.3f}  "
                  f"({', '.join(f'{v:.3f}' for v in vals)})")
    for label in ("plain", "hardened"):
        per = [pd.DataFrame(finals[s][label]["per type"]).set_index("cell type") for s in seeds]
        med = pd.concat([p["median UMIs"] for p in per], axis=1)
        f10 = pd.concat([p["flipped <= 10"] for p in per], axis=1)
        table = pd.DataFrame({"cells": per[0]["cells"], "median UMIs (mean)": med.mean(axis=1),
                              "median UMIs (seeds)": med.apply(
                                  lambda r: ", ".join(f"{v:g}" for v in r), axis=1),
                              "flipped <= 10 (mean)": f10.mean(axis=1)})
        print(f"\n  {label}, per cell type over seeds:")
        print("    " + table.to_string(float_format=lambda v: f"{v:.3f}").replace("\n", "\n    "))


COLUMNS = ["genes", "val accuracy", "val median UMIs", "val flipped <= 10", "test accuracy",
           "test median UMIs", "test flipped <= 10", "test flipped <= 50",
           "test UMIs switching on a gene", "test edited genes' detection"]


def report_hardening(seed: int, rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows).set_index("option")
    table["picked on val"] = table.index == pick(table)
    print(f"\n=========== seed {seed}: hardening (count attack beam 1, 16 candidates "
          "re-scored, budgets up to 200 UMIs; not flipped within 200 counts as more) "
          "===========")
    print(table[[*COLUMNS, "picked on val"]].to_string(float_format=lambda v: f"{v:.3f}"))
    for name, row in table.iterrows():
        print(f"\n  {name}: test cells per type "
              f"(train {row['train seconds']:.0f} s, attack {row['attack seconds']:.0f} s)")
        per = pd.DataFrame(row["test per type"]).set_index("cell type")
        print("    " + per.to_string(float_format=lambda v: f"{v:.3f}").replace("\n", "\n    "))
        print(f"    top genes: {row['top genes'][:6]}")
    return table


def summary_hardening(tables: Mapping[int, pd.DataFrame]) -> None:
    print("\n=========== hardening over seeds (mean ± sd) ===========")
    names = list(next(iter(tables.values())).index)
    rows = []
    for name in names:
        if not all(name in t.index for t in tables.values()):
            continue
        row: dict[str, Any] = {"option": name}
        for col in ("val accuracy", "val median UMIs", "test accuracy", "test median UMIs",
                    "test flipped <= 10", "test flipped <= 50"):
            vals = np.array([float(t.loc[name, col]) for t in tables.values()])
            row[col] = f"{vals.mean():.3f} ± {vals.std():.3f}"
        row["picked on val (seeds)"] = int(sum(bool(t.loc[name, "picked on val"])
                                               for t in tables.values()))
        rows.append(row)
    print(pd.DataFrame(rows).set_index("option").to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = Path(os.environ.get("SCADV_DATA", HERE.parent / "shared" / "data"))
    parser.add_argument("--data", default=str(data / "pbmc3k_raw.h5ad"))
    parser.add_argument("--part", choices=("main", "hardening", "final", "timing", "distances"),
                        default="main")
    parser.add_argument("--final-option", default=None,
                        help="--part final: the hardening option picked on validation cells")
    parser.add_argument("--figures", default=None,
                        help="--part final: folder for the PBMC3k figures (first seed only)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--options", nargs="+", default=None,
                        help="hardening options to run (names as printed; default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a busy machine 1 is faster: idle threads spin)")
    parser.add_argument("--cache", default=str(HERE / "benchmarks" / ".cache" / "count_attack"))
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    torch.set_num_threads(args.threads)
    raw = ad.read_h5ad(args.data)
    cache = Path(args.cache)
    print(f"PBMC3k {raw.n_obs} cells x {raw.n_vars} genes; seeds {args.seeds}; "
          f"{torch.get_num_threads()} torch threads; part {args.part}", flush=True)
    if args.part == "timing":
        for seed in args.seeds:
            _print_dict(f"timing, seed {seed}", timing_part(raw, seed))
        return
    if args.part == "distances":
        print(distances_part(raw).to_string(float_format=lambda v: f"{v:.1f}"))
        return
    if args.part == "final":
        if args.final_option not in OPTIONS:
            parser.error(f"--final-option must be one of {list(OPTIONS)}")
        finals = {}
        for i, seed in enumerate(args.seeds):
            slug = "".join(c if c.isalnum() else "_" for c in args.final_option)
            figs = Path(args.figures) if args.figures and i == 0 else None
            finals[seed] = cached(cache / f"final_{seed}_{slug}.json", args.fresh or bool(figs),
                                  lambda s=seed, f=figs: final_part(raw, s, args.final_option, f))
            report_final(seed, finals[seed])
        summary_final(finals, args.seeds)
        return
    if args.part == "main":
        runs = {}
        for seed in args.seeds:
            runs[seed] = cached(cache / f"main_{seed}.json", args.fresh,
                                lambda s=seed: main_part(raw, s))
            report_main(seed, runs[seed])
        summary_main(runs, args.seeds)
        return
    tables = {}
    for seed in args.seeds:
        base = plain(raw, seed)
        rows = []
        for name in OPTIONS:
            if args.options is not None and name != "plain" and name not in args.options:
                continue
            slug = "".join(c if c.isalnum() else "_" for c in name)
            rows.append(cached(cache / f"hard_{seed}_{slug}.json", args.fresh,
                               lambda s=seed, n=name, b=base: hardening_row(raw, b, s, n)))
            print(f"  seed {seed} {name}: val acc {rows[-1]['val accuracy']:.3f}, val median "
                  f"{rows[-1]['val median UMIs']:.0f}, test median "
                  f"{rows[-1]['test median UMIs']:.0f}", flush=True)
        tables[seed] = report_hardening(seed, rows)
    summary_hardening(tables)


if __name__ == "__main__":
    main()
