"""How many UMIs does it take? The count-space attack on PBMC3k, next to z-space PGD.

For each seed (the default model: ``scadv.pp.prepare`` + ``scadv.tl.train_classifier(adata,
'cell_type', seed=s)``), on the model's test cells:

* **Count attack** (``scadv.tl._counts._engine``): single-UMI edits of the model genes' raw
  counts, pushed through the stored recipe (library size included); at most 3 UMIs added or
  removed per gene, library size within the observed [min, max], counts whole and ≥ 0. The
  fewest UMIs found that flip each cell: fraction flipped at ≤ 1, 2, 5, 10, 20, 50 UMIs and the
  median (cells not flipped within 50 count as more), overall and per cell type; the plain
  gradient-guided greedy search and the default search (exact re-scoring of 16 candidates per
  state, beam of 4) side by side.
* **Which genes the attack edits**: fraction of edited UMIs that switch on a gene the cell did
  not express, the genes' detection rate (fraction of all cells with a count > 0) and standard
  deviation, and the model-input jump of one such UMI.
* **z-space PGD rounded to counts**: scadv's PGD (default ε 0.05/0.1/0.15, and the
  data-respecting ``keep_zeros=True, clip='observed'`` at ε 0.3/0.5); each adversarial input
  is mapped back to counts (inverse z-score and log1p, the library size solved so that the
  counts and the library agree), rounded to whole counts ≥ 0 and re-run through the recipe:
  how far from whole numbers the implied counts sit, and what fraction of the flips survive.
* **Fragility in model space**: the smallest L∞ ε at which PGD flips each cell
  (``scadv.tl._attacks._min_eps.min_eps``), and its rank correlation with the fewest UMIs.

With ``--hardening``, each hardening option is applied to a copy of the recipe before training
a model on the same split (``split_key='scadv_split'``): a floor on each gene's standard
deviation (one UMI on an undetected gene at the median library size moves a gene by at most
``c`` SD), a lower clip, dropping genes detected in few cells, log1p input without z-scoring, a
smaller target sum (it compresses the first UMIs), and a prototype of count-space adversarial
training (rounds of: attack the training cells, add their attacked counts with the true label,
retrain). For each: clean accuracy (validation and test) and the count attack (budgets up to
200 UMIs) on validation and test cells. The option marked "picked on val" has the highest
validation median among those losing at most one point of validation accuracy; the choice
never looks at the test columns, which are printed for the record. ``--options`` runs a subset.

Times are printed but measured on whatever machine runs this; on a shared machine they are
upper bounds.

Run::

    python benchmarks/count_attack.py [--data ../shared/data/pbmc3k_raw.h5ad]
        [--seeds 42 0 1] [--hardening]
"""

from __future__ import annotations

import argparse
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
from scipy import sparse
from scipy.stats import spearmanr

import scadv
from scadv import _model as M
from scadv import _recipe as R
from scadv.tl._attacks import _min_eps as F
from scadv.tl._counts import _engine as CE
from scadv.tl._counts import _transform as T

BUDGETS = (1, 2, 5, 10, 20, 50)
HARD_BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200)
GREEDY = CE.Search(budgets=BUDGETS, beam=1, top_k=1)
DEFAULT = CE.Search(budgets=BUDGETS)  # beam 4, 16 candidates re-scored
CPU = torch.device("cpu")


# ---- data and models ----------------------------------------------------------------------

def trained(raw: ad.AnnData, seed: int) -> ad.AnnData:
    adata = raw.copy()
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    return adata


def split_mask(adata: ad.AnnData, split: str) -> np.ndarray:
    return (adata.obs["scadv_split"] == split).to_numpy()


def counts_of(adata: ad.AnnData, mask: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Model-gene counts and the counts on all other genes (phase 1: the prepared layout)."""
    counts = sparse.csr_matrix(adata.layers["counts"][mask])
    lib = adata.obs["scadv_library_size"].to_numpy()[mask]
    return counts, T.rest_of_library(counts, lib)


def library_range(adata: ad.AnnData) -> tuple[float, float]:
    lib = adata.obs["scadv_library_size"].to_numpy()
    return float(lib.min()), float(lib.max())


def predict_counts(net: torch.nn.Module, counts: Any, lib: np.ndarray,
                   recipe: Mapping[str, Any]) -> np.ndarray:
    x = T.reference_model_input(counts, lib, recipe)
    return M.infer(net, x, device=CPU)[1].argmax(axis=1)


def count_attack(adata: ad.AnnData, mask: np.ndarray, search: CE.Search, *,
                 model: str = "classifier") -> tuple[CE.CountResult, float]:
    record = adata.uns["scadv"][model]
    recipe = record["prepare"]
    net = M.from_record(record)
    counts, rest = counts_of(adata, mask)
    y = predict_counts(net, counts, counts.sum(axis=1).A1 + rest, recipe)
    t0 = time.perf_counter()
    res = CE.run(net, counts, rest, y, T.CountTransform.from_recipe(recipe), search=search,
                 limits=CE.Limits(cap_add=3, cap_remove=3, library=library_range(adata)),
                 targeted=False, device=CPU, seed=0)
    return res, time.perf_counter() - t0


def umis(res: CE.CountResult) -> np.ndarray:
    m = res.min_umis.astype(np.float64)
    m[m < 0] = np.inf
    return m


def umi_summary(m: np.ndarray, budgets: tuple[int, ...] = BUDGETS) -> dict[str, float]:
    out = {f"flipped <= {b}": float((m <= b).mean()) for b in budgets}
    out["median UMIs"] = float(np.median(m))
    return out


# ---- the count attack on the default model -----------------------------------------------

def gene_report(adata: ad.AnnData, mask: np.ndarray, res: CE.CountResult) -> dict[str, Any]:
    """Which genes the attack edits (final states of the flipped cells)."""
    counts_all = sparse.csr_matrix(adata.layers["counts"])
    detection = np.asarray((counts_all > 0).mean(axis=0)).ravel()
    recipe = adata.uns["scadv"]["prepare"]
    std = np.asarray(recipe["std"], dtype=np.float64)
    counts, rest = counts_of(adata, mask)
    flipped = res.min_umis > 0
    delta = res.deltas[-1][flipped].tocoo()
    if delta.nnz == 0:
        return {"UMIs switching on an undetected gene (fraction)": float("nan"),
                "detection rate of edited genes, UMI-weighted median": float("nan")}
    c0 = np.asarray(counts[flipped][delta.row, delta.col]).ravel()
    umis_ = np.abs(delta.data)
    switch_on = (c0 == 0) & (delta.data > 0)
    lib = (counts.sum(axis=1).A1 + rest)[flipped][delta.row]
    jump = np.log1p(float(recipe["target_sum"]) / (lib + 1)) / std[delta.col]
    genes = np.asarray(recipe["genes"])
    per_gene = pd.DataFrame({"gene": genes[delta.col], "umis": umis_}).groupby("gene")["umis"]
    top = per_gene.sum().sort_values(ascending=False).head(10)
    idx = pd.Index(genes).get_indexer(top.index)
    return {
        "UMIs added (fraction)": float(umis_[delta.data > 0].sum() / umis_.sum()),
        "UMIs switching on an undetected gene (fraction)": float(umis_[switch_on].sum()
                                                                  / umis_.sum()),
        "edits of a single UMI (fraction)": float((umis_ == 1).mean()),
        "detection rate of edited genes, UMI-weighted median": float(
            _weighted_median(detection[delta.col], umis_)),
        "detection rate of all model genes, median": float(np.median(detection)),
        "SD of edited genes, UMI-weighted median": float(_weighted_median(std[delta.col],
                                                                          umis_)),
        "SD of all model genes, median": float(np.median(std)),
        "z jump of one switched-on UMI, median (SD)": float(np.median(jump[switch_on]))
        if switch_on.any() else float("nan"),
        "distinct genes edited": len(per_gene),
        "top genes": [(g, int(top[g]), float(detection[i]), float(std[i]))
                      for g, i in zip(top.index, idx, strict=True)],
    }


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def per_type(adata: ad.AnnData, mask: np.ndarray, m: np.ndarray) -> pd.DataFrame:
    labels = adata.obs["cell_type"].to_numpy()[mask]
    rows = []
    for t in pd.unique(labels):
        sel = labels == t
        rows.append({"cell type": t, "cells": int(sel.sum()), "median UMIs": np.median(m[sel]),
                     "flipped <= 5": (m[sel] <= 5).mean(), "flipped <= 10": (m[sel] <= 10).mean()})
    return pd.DataFrame(rows).sort_values("cells", ascending=False).set_index("cell type")


# ---- z-space PGD rounded to counts -------------------------------------------------------

def implied_counts(z: np.ndarray, rest: np.ndarray, recipe: Mapping[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Counts whose recipe output is ``z`` (unclipped values), with the library size solved
    so that ``L = rest + Σ c``: ``c = expm1(lognorm) · L / T`` gives ``L = rest / (1 − S/T)``
    with ``S = Σ expm1(lognorm)``. Returns the real-valued counts and a mask of the cells for
    which no consistent library exists (``S ≥ T``; their clean library size is used)."""
    mean = np.asarray(recipe["mean"], dtype=np.float64)
    std = np.asarray(recipe["std"], dtype=np.float64)
    target = float(recipe["target_sum"])
    level = np.clip(np.expm1(z.astype(np.float64) * std + mean), 0.0, None)
    s = level.sum(axis=1)
    bad = s >= target * (1 - 1e-6)
    lib = np.where(bad, np.nan, rest / np.maximum(1 - s / target, 1e-12))
    return level * lib[:, None] / target, bad


def pgd_rounding(adata: ad.AnnData, mask: np.ndarray, *, eps: tuple[float, ...],
                 keep_zeros: bool, key: str) -> dict[str, dict[str, float]]:
    record = adata.uns["scadv"]["classifier"]
    recipe = record["prepare"]
    net = M.from_record(record)
    clip = "observed" if keep_zeros else None
    scadv.tl.pgd(adata, eps=eps, keep_zeros=keep_zeros, clip=clip, key_added=key,
                 progress=False)
    counts, rest = counts_of(adata, mask)
    clean_pred = adata.obs["scadv_pred"].cat.codes.to_numpy()[mask]
    out = {}
    for e in eps:
        layer = f"scadv_{key}_eps{e:g}"
        z = np.asarray(adata.layers[layer])[mask]
        flipped = (adata.obs[f"{layer}_flipped"].astype(str) == "True").to_numpy()[mask]
        real, bad = implied_counts(z, rest, recipe)
        # genes the attack moved to a positive implied count (pushed below zero: count 0)
        moved = (np.abs(z - np.asarray(adata.X)[mask]) > 1e-6) & (real > 0)
        whole = np.clip(np.round(real), 0, None)
        whole[bad] = counts[np.flatnonzero(bad)].toarray()  # no consistent counts: unchanged
        lib = whole.sum(axis=1) + rest
        pred = predict_counts(net, whole, lib, recipe)
        survive = (pred != clean_pred) & flipped
        clean_real, _ = implied_counts(np.asarray(adata.X)[mask], rest, recipe)
        detected = counts.toarray() > 0
        out[f"eps {e:g}"] = {
            "flip rate (z-space)": float(flipped.mean()),
            "flip rate after rounding to counts": float((pred != clean_pred).mean()),
            "flips surviving rounding (fraction)": float(survive.sum() / max(flipped.sum(), 1)),
            "distance to a whole count, moved genes with counts > 0 (mean)": float(
                np.abs(real - np.round(real))[moved & ~bad[:, None]].mean()),
            "distance to a whole count, clean detected genes (mean)": float(
                np.abs(clean_real - np.round(clean_real))[detected].mean()),
            "UMIs changed by the rounded attack (median, flipped cells)": float(np.median(
                np.abs(whole - counts.toarray()).sum(axis=1)[flipped])) if flipped.any()
            else float("nan"),
            "cells without consistent counts": int(bad.sum()),
        }
    return out


# ---- hardening: robust preprocessing options ----------------------------------------------

def variant(plain: ad.AnnData, *, floor_c: float | None = None, clip: float | None = None,
            min_detect: float | None = None, log1p_only: bool = False,
            target_sum: float | None = None) -> ad.AnnData:
    """A copy of the prepared data with a changed recipe (X recomputed), same split."""
    recipe = dict(plain.uns["scadv"]["prepare"])
    if target_sum is not None:  # a smaller target sum compresses the first UMIs (log1p)
        recipe["target_sum"] = float(target_sum)
    counts = sparse.csr_matrix(plain.layers["counts"])
    lib = plain.obs["scadv_library_size"].to_numpy()
    lognorm = R.lognormalize(counts, target_sum=float(recipe["target_sum"]), library_size=lib)
    keep = np.ones(counts.shape[1], dtype=bool)
    if min_detect is not None:
        keep = np.asarray((counts > 0).mean(axis=0)).ravel() >= min_detect
    mean, std = R.zscore_stats(lognorm[:, keep])
    if floor_c is not None:
        one_umi = np.log1p(float(recipe["target_sum"]) / np.median(lib))
        std = np.maximum(std, np.float32(one_umi / floor_c))
    if log1p_only:
        mean = np.zeros_like(mean)
        std = np.ones_like(std)
    recipe.update(genes=np.asarray(recipe["genes"])[keep], mean=mean, std=std)
    if clip is not None:
        recipe["max_value"] = float(clip)
    if log1p_only:
        recipe["max_value"] = 0.0
    z = R.lognorm_to_model(lognorm[:, keep], recipe)
    recipe.update(zero_level=R.zero_level(recipe), x_min=z.min(axis=0), x_max=z.max(axis=0))
    out = ad.AnnData(X=z, obs=plain.obs[["cell_type", "scadv_split", "scadv_library_size"]].copy(),
                     var=plain.var.iloc[np.flatnonzero(keep)].copy())
    out.layers["counts"] = counts[:, keep]
    out.uns["scadv"] = {"prepare": recipe}
    return out


def adversarial_rounds(adata: ad.AnnData, seed: int, *, rounds: int, budget: int) -> ad.AnnData:
    """Count-space adversarial retraining (a prototype of ``space='counts'`` training): each
    round attacks the current model on its TRAINING cells (plain greedy search with
    re-scoring, up to ``budget`` UMIs), adds the attacked counts of every attacked cell, with
    its true label, as extra training cells (model input by the same recipe), and retrains on
    the same split. Validation and test cells are never attacked or added."""
    recipe = adata.uns["scadv"]["prepare"]
    n0 = adata.n_obs
    train = split_mask(adata, "train")
    search = CE.Search(budgets=(budget,), beam=1, top_k=16)
    current = adata
    for r in range(rounds):
        res, _ = count_attack(current, np.r_[train, np.zeros(current.n_obs - n0, bool)], search)
        counts, rest = counts_of(adata, train)
        adv = sparse.csr_matrix(counts + res.deltas[-1].astype(np.float32))
        lib = adv.sum(axis=1).A1 + rest
        extra = ad.AnnData(
            X=T.reference_model_input(adv, lib, recipe),
            obs=pd.DataFrame({"cell_type": adata.obs["cell_type"].to_numpy()[train],
                              "scadv_split": "train", "scadv_library_size": lib},
                             index=[f"{c}_adv{r}" for c in adata.obs_names[train]]),
            var=adata.var.copy())
        extra.layers["counts"] = adv
        merged = ad.concat([current, extra], join="inner", merge="same")
        merged.obs["cell_type"] = merged.obs["cell_type"].astype("category")
        merged.obs["scadv_split"] = pd.Categorical(merged.obs["scadv_split"].astype(str))
        merged.uns["scadv"] = {"prepare": recipe}
        scadv.tl.train_classifier(merged, "cell_type", seed=seed, split_key="scadv_split",
                                  progress=False)
        current = merged
    out = adata.copy()
    out.uns["scadv"]["classifier"] = current.uns["scadv"]["classifier"]
    return out


OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "std floor c=1": {"floor_c": 1.0},
    "std floor c=2": {"floor_c": 2.0},
    "std floor c=3": {"floor_c": 3.0},
    "clip 3": {"clip": 3.0},
    "clip 5": {"clip": 5.0},
    "detected in >= 5% of cells": {"min_detect": 0.05},
    "detected in >= 10% of cells": {"min_detect": 0.10},
    "log1p, no z-score": {"log1p_only": True},
    "std floor c=2 + clip 3": {"floor_c": 2.0, "clip": 3.0},
    "std floor c=1 + >= 5% detected": {"floor_c": 1.0, "min_detect": 0.05},
    "target sum 1000, log1p, no z-score": {"target_sum": 1e3, "log1p_only": True},
    "target sum 1000, std floor c=1": {"target_sum": 1e3, "floor_c": 1.0},
    "target sum 100, log1p, no z-score": {"target_sum": 1e2, "log1p_only": True},
    "count adversarial retraining (3 rounds of 20 UMIs)": {"rounds": 3, "budget": 20},
    "std floor c=1 + count adversarial retraining (3 x 20)": {"floor_c": 1.0, "rounds": 3,
                                                              "budget": 20},
    "std floor c=1 + count adversarial retraining (5 x 50)": {"floor_c": 1.0, "rounds": 5,
                                                              "budget": 50},
}


def hardening(plain: ad.AnnData, seed: int, search: CE.Search,
              options: list[str] | None = None) -> pd.DataFrame:
    rows = []
    val, test = split_mask(plain, "val"), split_mask(plain, "test")
    for name, opts in OPTIONS.items():
        if options is not None and name != "plain" and name not in options:
            continue
        opts = dict(opts)
        rounds, budget = opts.pop("rounds", 0), opts.pop("budget", 20)
        adata = variant(plain, **opts)
        scadv.tl.train_classifier(adata, "cell_type", seed=seed, split_key="scadv_split",
                                  progress=False)
        if rounds:
            adata = adversarial_rounds(adata, seed, rounds=rounds, budget=budget)
        metrics = adata.uns["scadv"]["classifier"]["metrics"]
        res_val, _ = count_attack(adata, val, search)
        res_test, _ = count_attack(adata, test, search)
        mv, mt = umis(res_val), umis(res_test)
        genes = gene_report(adata, test, res_test)
        rows.append({"option": name, "genes": adata.n_vars,
                     "val accuracy": metrics["val"]["accuracy"],
                     "val median UMIs": np.median(mv), "val flipped <= 10": (mv <= 10).mean(),
                     "test accuracy": metrics["test"]["accuracy"],
                     "test median UMIs": np.median(mt), "test flipped <= 10": (mt <= 10).mean(),
                     "test flipped <= 50": (mt <= 50).mean(),
                     "test UMIs switching on a gene": genes[
                         "UMIs switching on an undetected gene (fraction)"],
                     "test edited genes' detection": genes[
                         "detection rate of edited genes, UMI-weighted median"]})
    table = pd.DataFrame(rows).set_index("option")
    base = table.loc["plain", "val accuracy"]
    ok = table[table["val accuracy"] >= base - 0.01]
    pick = ok.sort_values(["val median UMIs", "val flipped <= 10"],
                          ascending=[False, True]).index[0]
    table["picked on val"] = table.index == pick
    return table


# ---- main -----------------------------------------------------------------------------------

def one_seed(raw: ad.AnnData, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    adata = trained(raw, seed)
    out["train seconds"] = time.perf_counter() - t0
    test = split_mask(adata, "test")
    out["test cells"] = int(test.sum())
    out["clean test accuracy"] = float(
        adata.uns["scadv"]["classifier"]["metrics"]["test"]["accuracy"])
    if args.hardening:
        out["hardening"] = hardening(adata, seed, CE.Search(budgets=HARD_BUDGETS, beam=1,
                                                            top_k=16), args.options)
    if args.skip_main:
        return out
    greedy, t_greedy = count_attack(adata, test, GREEDY)
    default, t_default = count_attack(adata, test, DEFAULT)
    out["greedy"] = umi_summary(umis(greedy))
    out["default"] = umi_summary(umis(default))
    out["seconds greedy"], out["seconds default"] = t_greedy, t_default
    out["per type"] = per_type(adata, test, umis(default))
    out["genes"] = gene_report(adata, test, default)
    out["pgd default"] = pgd_rounding(adata, test, eps=(0.05, 0.1, 0.15), keep_zeros=False,
                                      key="pgd")
    out["pgd data-respecting"] = pgd_rounding(adata, test, eps=(0.3, 0.5), keep_zeros=True,
                                              key="pgd_real")
    record = adata.uns["scadv"]["classifier"]
    x = np.asarray(adata.X)[test]
    y = adata.obs["scadv_pred"].cat.codes.to_numpy()[test]
    t0 = time.perf_counter()
    frag = F.min_eps(M.from_record(record), x, y, device=CPU)
    out["seconds fragility"] = time.perf_counter() - t0
    m = umis(default)
    finite = np.isfinite(frag.eps) & np.isfinite(m)
    out["fragility"] = {
        "median min eps (L-inf, SD units)": float(np.median(frag.eps)),
        "cells with a flip found": float(np.isfinite(frag.eps).mean()),
        "Spearman(min eps, min UMIs)": float(spearmanr(frag.eps[finite], m[finite])[0]),
        "cells lowered by the final check": int(frag.stats["check_lowered"]),
    }
    return out


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


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data"
                                              / "pbmc3k_raw.h5ad"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--hardening", action="store_true")
    parser.add_argument("--options", nargs="+", default=None,
                        help="hardening options to run (names as printed; default: all)")
    parser.add_argument("--skip-main", action="store_true",
                        help="only the hardening table (no PGD, fragility, gene report)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (on a busy machine 1 is faster: idle threads spin)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    torch.set_num_threads(args.threads)
    raw = ad.read_h5ad(args.data)
    print(f"PBMC3k {raw.n_obs} cells x {raw.n_vars} genes; seeds {args.seeds}; "
          f"{torch.get_num_threads()} torch threads")
    runs = {}
    for seed in args.seeds:
        r = one_seed(raw, seed, args)
        runs[seed] = r
        report(seed, r)
    if not args.skip_main:
        summary(runs, args.seeds)


def report(seed: int, r: Mapping[str, Any]) -> None:
    print(f"\n=========== seed {seed}: {r['test cells']} test cells, clean accuracy "
          f"{r['clean test accuracy']:.3f} ===========")
    if "hardening" in r:
        print("\nhardening (budgets up to 200 UMIs; beam 1, 16 candidates re-scored; not "
              "flipped within 200 counts as more)")
        print(r["hardening"].to_string(float_format=lambda v: f"{v:.3f}"))
    if "greedy" not in r:
        return
    _print_dict("count attack, plain greedy (beam 1, no re-scoring)", r["greedy"])
    _print_dict("count attack, default search (beam 4, 16 candidates re-scored)", r["default"])
    print("\nper cell type (default search; not flipped within 50 counts as more)")
    print(r["per type"].to_string(float_format=lambda v: f"{v:.3f}"))
    _print_dict("genes edited (flipped cells, default search)", r["genes"])
    for name in ("pgd default", "pgd data-respecting"):
        for eps, d in r[name].items():
            _print_dict(f"{name} {eps}, rounded to counts", d)
    _print_dict("model-space fragility (minimal L-inf eps)", r["fragility"])
    print(f"\ntimes (upper bounds on a shared machine): train {r['train seconds']:.1f} s, "
          f"greedy {r['seconds greedy']:.1f} s, default {r['seconds default']:.1f} s, "
          f"fragility {r['seconds fragility']:.1f} s")


def summary(runs: Mapping[int, Mapping[str, Any]], seeds: list[int]) -> None:
    print("\n=========== over seeds (mean ± sd) ===========")
    for search in ("greedy", "default"):
        for k in runs[seeds[0]][search]:
            vals = np.array([runs[s][search][k] for s in seeds])
            print(f"  {search:<8} {k:<30} {vals.mean():.3f} ± {vals.std():.3f}  "
                  f"({', '.join(f'{v:.3f}' for v in vals)})")
    for name, eps_list in (("pgd default", ("eps 0.05", "eps 0.1", "eps 0.15")),
                           ("pgd data-respecting", ("eps 0.3", "eps 0.5"))):
        for e in eps_list:
            vals = np.array([runs[s][name][e]["flips surviving rounding (fraction)"]
                             for s in seeds])
            print(f"  {name} {e}: flips surviving rounding {vals.mean():.3f} ± {vals.std():.3f}")
    vals = np.array([runs[s]["fragility"]["median min eps (L-inf, SD units)"] for s in seeds])
    print(f"  median minimal L-inf eps {vals.mean():.3f} ± {vals.std():.3f}")

if __name__ == "__main__":
    main()
