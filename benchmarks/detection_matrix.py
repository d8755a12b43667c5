"""The detection matrix of issue 10: attackers and benign new-lab shifts × detectors.

Data sets (``--dataset``): ``pbmc3k`` (PBMC3k, 9 Seurat types, 2,638 labelled cells) and
``lung`` (Zilionis et al. 2019 mouse lung immune cells, 800 cells, 4 types, inDrop counts);
each gets its own split, classifier and detector per seed.

For each seed: a new split and classifier (``train_classifier(seed=...)``), then
``meta_detect(seed=...)`` with its defaults (the consistency detector + realism gate, trained
on count-space attacks of training cells, threshold split-conformal at 5% FPR on the
validation cells) and ``baselines=True`` (every other method fitted and calibrated the same
way on the same cells). Attacks act on a seeded subsample of ``--n-attack`` test cells.

Rows (attackers, on the subsampled test cells):

* ``pgd_real`` — data-respecting PGD (zeros kept at zero, every gene in its observed range,
  margin loss, early stop), ε 0.3 / 0.5;
* ``pgd_classic`` — z-space PGD, cross-entropy, no early stop, ε 0.5 / 1.0;
* ``fgsm`` — one-step z-space FGSM (cross-entropy, no clipping), ε 0.3 / 0.5;
* ``cgd`` / ``single_gene`` — gene-level attacks on clusters: the attacked test cells grouped
  by predicted class (classes with ≥ ``MIN_CLUSTER`` of them), each group attacked as one
  cluster (``scadv.tl.cgd(gradient=True, clip='observed')``, at most ``CGD_GENES`` genes; and
  the best flipping gene of ``scadv.tl.single_gene`` applied with ``scadv.tl.grid``: set to
  its 1st / 99th percentile where one such gene flips the cluster, else to adverSCarial's
  ±aberrant value, ±10,000 × its largest value); the groups' evaluations are pooled (flag
  fractions, AUROC and TPR weighted by cells: exact, the clean cells being the same);
* ``adaptive_pgd`` — gradient attacker against the stored detector (``adaptive_pgd``, λ = 0.3,
  data-respecting, ε 0.5);
* ``counts_first`` / ``counts_m2`` — count-space attack (``adaptive_count_attack`` without a
  detector, ≤ 60 UMIs, ≤ 3 per gene) stopped at the first flip / pushed to a logit margin of 2;
* ``counts_query λ`` — the count-space attacker that queries the stored detector (λ in
  ``--lams``, default 0.3 / 1 / 3; ≤ ``--query-budget`` UMIs) and stops once the cell is
  flipped and unflagged. Its cost (UMIs at which 50% of the attacked cells are evaded: the
  median over attacked cells, ∞ for cells not evaded) is compared with the UMIs of the first
  flip of the undefended classifier (issue 10's goal: ≥ 5× more).

Rows (benign shifts of all test cells, ``scadv.tl.benign_perturb``): clean cells; libraries
down-sampled to 50%; 2× and 8× deeper libraries; per-gene batch effects sd 0.3 and 0.6;
ambient RNA 5% and 10%; same-type doublets; and, as new AnnData objects scored like a user's
data,
20 and 200 missing model genes with ``missing_genes='mean'``, CPM + log1p input and scanpy's
median normalisation + log1p.

Columns (detectors, each at ITS stored threshold): ``detector`` (the default: consistency +
realism gate), ``margin`` (softmax-margin baseline), ``logreg`` (scadv's logistic regression on
the meta-features), ``triplet`` (the seed study's triplet + residual detector), ``pca``
(PCA-reconstruction error of the log-normalised counts); the CSV also holds ``consistency``
(the method without the gate), ``squeeze``, ``twin``, ``mahalanobis`` and ``input`` (gate only).

HEADLINE: the fraction flagged at the stored threshold — of successful flips (``flagged``) and
of all attacked cells (``flagged_all``) — and the benign false-alarm rate at it. AUROC and the
test-calibrated TPR at 5% FPR (its threshold taken from the clean test cells, which a user never
has) are secondary. The validation-cell numbers the default is chosen on are saved as well.

Run::

    python benchmarks/detection_matrix.py [--dataset pbmc3k|lung] [--seeds 42 0 1]
        [--n-attack 100] [--lams 0.3 1 3] [--val-size F] [--data DIR (default $SCADV_DATA)]

Writes ``benchmarks/results/detection_matrix.{csv,json,md}`` (``detection_matrix_lung.*`` for
the lung set); ``--render`` writes the ``.md`` again from the stored ``.csv`` and ``.json``.
Times are upper bounds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch

import scadv
from scadv import _keys as K
from scadv import _recipe as R
from scadv.tl._detect import _common as MC

COUNT_BUDGET = 60
MIN_CLUSTER = 5  # attacked test cells of one predicted class for a gene-level attack on them
CGD_GENES = 100
SINGLE_GENE_MODS = ("perc1", "perc99", "positive_aberrant", "negative_aberrant")
METHODS = ("detector", "consistency", "margin", "logreg", "triplet", "pca", "mahalanobis",
           "squeeze", "twin", "input")
HEADLINE = ("detector", "margin", "logreg", "triplet", "pca")
DATASETS = {  # --dataset -> (file, label column, title)
    "pbmc3k": ("pbmc3k_raw.h5ad", "cell_type", "PBMC3k"),
    "lung": ("zilionis_lung_immune.h5ad", "cell_type", "mouse lung immune cells (Zilionis)"),
}
ATTACKS = {  # row -> (layer name, description); gene-level rows pool several layers
    "pgd_real ε0.3": ("scadv_real_eps0.3", "data-respecting PGD, early stop, ε 0.3"),
    "pgd_real ε0.5": ("scadv_real_eps0.5", "data-respecting PGD, early stop, ε 0.5"),
    "pgd_classic ε0.5": ("scadv_classic_eps0.5", "classic PGD (CE, no early stop), ε 0.5"),
    "pgd_classic ε1": ("scadv_classic_eps1", "classic PGD (CE, no early stop), ε 1.0"),
    "fgsm ε0.3": ("scadv_fgsm_eps0.3", "FGSM (z-space, one step, CE), ε 0.3"),
    "fgsm ε0.5": ("scadv_fgsm_eps0.5", "FGSM (z-space, one step, CE), ε 0.5"),
    "cgd": ("", "CGD (gene by gene, gradient, observed range), per predicted class"),
    "single_gene": ("", "single gene (best flipping gene: perc1/99, else ±aberrant), per "
                    "predicted class"),
    "adaptive_pgd ε0.5": ("scadv_apgd_eps0.5", "adaptive PGD vs the detector, λ 0.3, ε 0.5"),
    "counts_first": (f"scadv_counts_umis{COUNT_BUDGET}", "count space, first flip"),
    "counts_m2": (f"scadv_counts_m2_umis{COUNT_BUDGET}", "count space, margin 2"),
}
BENIGN_LAYERS = {  # row -> (benign_perturb kind, its parameters)
    "down-sampled to 50%": ("downsample", {"downsample": 0.5}),
    "deeper 2×": ("deeper", {"depth": 2.0}),
    "deeper 8×": ("deeper", {"depth": 8.0}),
    "batch effect sd 0.3": ("batch", {"batch": 0.3}),
    "batch effect sd 0.6": ("batch", {"batch": 0.6}),
    "ambient RNA 5%": ("ambient", {"ambient": 0.05}),
    "ambient RNA 10%": ("ambient", {"ambient": 0.10}),
    "same-type doublets": ("doublet", {}),
}
NEW_DATA = ("missing20_mean", "missing200_mean", "cpm_log1p", "median_log1p")


def benign_key(row: str) -> str:
    kind, params = BENIGN_LAYERS[row]
    tag = "".join(f"{v:g}" for v in params.values()).replace(".", "p")
    return f"b{kind}{tag}"


def benign_layer(row: str) -> str:
    return f"scadv_{benign_key(row)}_{BENIGN_LAYERS[row][0]}"


def query_layer(lam: float, budget: int) -> str:
    return f"scadv_query_lam{lam:g}_umis{budget}".replace(".", "p")


def query_row(lam: float) -> str:
    return f"counts_query λ{lam:g}"


def attack(adata: ad.AnnData, cells: np.ndarray, seed: int) -> None:
    """Attacks that do not know the detector, and the benign count shifts."""
    common: dict[str, Any] = {"cells": cells, "seed": seed, "progress": False}
    scadv.tl.pgd(adata, eps=(0.3, 0.5), keep_zeros=True, clip="observed", key_added="real",
                 **common)
    scadv.tl.pgd(adata, eps=(0.5, 1.0), loss="ce", early_stop=False, key_added="classic",
                 **common)
    scadv.tl.fgsm(adata, eps=(0.3, 0.5), cells=cells, key_added="fgsm", progress=False)
    scadv.tl.adaptive_count_attack(adata, detector=None, budget=COUNT_BUDGET,
                                   key_added="counts", **common)
    scadv.tl.adaptive_count_attack(adata, detector=None, budget=COUNT_BUDGET, kappa=2.0,
                                   key_added="counts_m2", **common)
    for row, (kind, params) in BENIGN_LAYERS.items():
        scadv.tl.benign_perturb(adata, kinds=(kind,), key_added=benign_key(row), seed=seed,
                                **params)


def gene_attacks(adata: ad.AnnData, cells: np.ndarray, seed: int) -> dict[str, Any]:
    """CGD and the best single-gene attack on each predicted class of the attacked test cells
    (as one cluster). Returns the layers per row and what was found."""
    pred = adata.obs["scadv_pred"].astype(str).to_numpy()
    col = "bench_cluster"
    adata.obs[col] = pd.Categorical(np.where(cells, pred, None))
    counts = pd.Series(pred[cells]).value_counts()
    targets = [str(c) for c, n in counts.items() if n >= MIN_CLUSTER]
    layers: dict[str, list[str]] = {"cgd": [], "single_gene": []}
    found: dict[str, Any] = {"targets": targets, "cgd_switched": {}, "single_gene": {},
                             "single_gene_used": {}}
    for i, target in enumerate(targets):
        key = f"cgd_c{i}"
        scadv.tl.cgd(adata, cluster_key=col, target=target, gradient=True, clip="observed",
                     max_genes=CGD_GENES, add_layer=True, add_obs=True, key_added=key,
                     seed=seed, progress=False)
        found["cgd_switched"][target] = bool(adata.uns["scadv"][key]["switched"])
        layers["cgd"].append(K.gene_attack_layer(key))
        scadv.tl.single_gene(adata, cluster_key=col, target=target, key_added=f"sg_c{i}",
                             modification=SINGLE_GENE_MODS, seed=seed, progress=False)
        table = adata.uns["scadv"][f"sg_c{i}"]["table"]
        flips = table[table["flipped"].astype(bool)]
        found["single_gene"][target] = {m: int((flips["modification"] == m).sum())
                                        for m in SINGLE_GENE_MODS}
        if not len(flips):
            continue
        # a realistic value (a percentile of the gene) where one flips, else adverSCarial's
        # aberrant values; then the highest new score
        realistic = flips["modification"].astype(str).str.startswith("perc")
        if realistic.any():
            flips = flips[realistic]
        best = flips.sort_values(["new_score", "gene"], ascending=[False, True]).iloc[0]
        found["single_gene_used"][target] = [str(best["gene"]), str(best["modification"])]
        key = f"sg1_c{i}"
        scadv.tl.grid(adata, cluster_key=col, target=target, genes=[str(best["gene"])],
                      modification=str(best["modification"]), add_layer=True, add_obs=True,
                      key_added=key, seed=seed, progress=False)
        layers["single_gene"].append(K.gene_attack_layer(key))
    found["layers"] = layers
    return found


def adaptive(adata: ad.AnnData, cells: np.ndarray, seed: int, budget: int,
             lams: list[float]) -> None:
    """Attackers who know the stored detector."""
    scadv.tl.adaptive_pgd(adata, detector="meta", lam=0.3, eps=0.5, keep_zeros=True,
                          clip="observed", cells=cells, key_added="apgd", seed=seed,
                          progress=False)
    for lam in lams:
        scadv.tl.adaptive_count_attack(adata, detector="meta", lam=lam, budget=budget,
                                       cells=cells, key_added=f"query_lam{lam:g}".replace(
                                           ".", "p"), seed=seed, progress=False)


def pooled(ev: dict[str, Any], layers: list[str]) -> dict[str, Any] | None:
    """One evaluation of several layers that share the clean test cells: flag fractions, AUROC
    and test-calibrated TPR over the flipped cells weighted by their number (exactly the
    pooled value), ``flagged_all`` by attacked cells."""
    es = [ev[name] for name in layers if name in ev]
    if not es:
        return None
    nf = np.array([e["n_flipped"] for e in es], dtype=float)
    nc = np.array([e["n_changed"] for e in es], dtype=float)
    out: dict[str, Any] = {"n_changed": int(nc.sum()), "n_flipped": int(nf.sum()),
                           "flip_rate": float(nf.sum() / max(nc.sum(), 1))}

    def wmean(vals: list[float], w: np.ndarray) -> float:
        v = np.asarray(vals, dtype=float)
        ok = np.isfinite(v) & (w > 0)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")

    for m in METHODS:
        if not all(m in e for e in es):
            continue
        out[m] = {"flagged": wmean([e[m]["flagged"] for e in es], nf),
                  "flagged_all": wmean([e[m]["flagged_all"] for e in es], nc),
                  "clean_flagged": float(es[0][m]["clean_flagged"]),
                  "auroc": wmean([e[m]["auroc"] for e in es], nf),
                  "test_tpr_at_5fpr": wmean([e[m]["test_tpr_at_5fpr"] for e in es], nf)}
    return out


def new_data(adata: ad.AnnData, raw: ad.AnnData, seed: int) -> dict[str, dict[str, float]]:
    """Test cells given as another lab would: fewer genes (filled with the training mean),
    CPM + log1p, median-normalised + log1p. Flag rate of every method at its stored threshold,
    and agreement of the prediction with the one from counts."""
    test = adata.obs_names[(adata.obs["scadv_split"] == "test").to_numpy()]
    det = MC.load(adata, "meta", source=None, device=torch.device("cpu"))
    recipe = det.classifier["prepare"]
    genes = np.asarray(recipe["genes"]).astype(str)
    ref = adata.obs.loc[test, "scadv_pred"].astype(str).to_numpy()
    classes = np.asarray(det.classifier["classes"]).astype(str)
    thr = {"detector": det.threshold, **det.thresholds}
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for name in NEW_DATA:
        b = raw[test].copy()
        kw: dict[str, Any] = {}
        if name.startswith("missing"):
            drop = rng.choice(genes, size=int(name[7:].split("_")[0]), replace=False)
            b = b[:, ~b.var_names.isin(drop)].copy()
            kw["missing_genes"] = "mean"
        elif name == "cpm_log1p":
            sc.pp.normalize_total(b, target_sum=1e6)
            sc.pp.log1p(b)
        else:
            sc.pp.normalize_total(b)
            sc.pp.log1p(b)
        src = R.source(b, recipe, **kw)
        missing = src.missing if src.missing.any() else None
        got = MC.score_cells(det, (xb for _, xb in src.batches()), missing=missing)
        lattice = MC.lattice_ok(det, got, src.label)
        if lattice is False:
            got = MC.score_cells(det, (xb for _, xb in src.batches()), missing=missing,
                                 lattice=False)
        row = {m: float((got.scores[m] >= t).mean()) for m, t in thr.items() if m in got.scores}
        row["pred_agrees"] = float((classes[got.pred] == ref).mean())
        out[name] = row
    return out


def evade_costs(adata: ad.AnnData, cells: np.ndarray, budget: int, lams: list[float]
                ) -> dict[str, Any]:
    """UMIs a count attacker pays per cell: to flip the undefended classifier, and to flip a cell
    unflagged by the stored detector (inf where it did not within the budget), per λ; and the
    fraction of cells the adaptive PGD attacker flips unflagged."""
    def col(name: str) -> np.ndarray:
        return adata.obs[name].astype(str).to_numpy()[cells] == "True"
    plain = f"scadv_counts_umis{COUNT_BUDGET}"
    umis0 = adata.obs[f"{plain}_umis"].to_numpy(dtype=float)[cells]
    cost0 = np.where(col(f"{plain}_flipped"), umis0, np.inf)
    out: dict[str, Any] = {"plain_median_umis": float(np.median(cost0)),
                           "plain_flipped": float(np.isfinite(cost0).mean()),
                           "query_budget": float(budget), "query": {}}
    for lam in lams:
        query = query_layer(lam, budget)
        umis1 = adata.obs[f"{query}_umis"].to_numpy(dtype=float)[cells]
        evaded = col(f"{query}_flipped") & ~col(K.meta_flag("meta", query))
        cost1 = np.where(evaded, umis1, np.inf)
        med = float(np.median(cost1))
        out["query"][f"{lam:g}"] = {
            "median_umis": med, "evaded": float(evaded.mean()),
            "median_umis_of_evaded": float(np.median(umis1[evaded])) if evaded.any()
            else float("nan"),
            "cost_ratio": med / out["plain_median_umis"]}
    apgd = "scadv_apgd_eps0.5"
    pred = adata.obs[K.layer_pred(apgd)].astype(str).to_numpy()[cells]
    clean = adata.obs["scadv_pred"].astype(str).to_numpy()[cells]
    out["apgd_evaded"] = float(((pred != clean) & ~col(K.meta_flag("meta", apgd))).mean())
    real = adata.obs[K.layer_pred("scadv_real_eps0.5")].astype(str).to_numpy()[cells]
    out["pgd_real_eps0.5_flipped"] = float((real != clean).mean())
    return out


def one_seed(data: Path, dataset: str, seed: int, n_attack: int, query_budget: int,
             lams: list[float], val_size: float | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t0 = time.perf_counter()
    fname, label, _ = DATASETS[dataset]
    raw = ad.read_h5ad(data / fname)
    raw = raw[raw.obs[label].notna()].copy()
    adata = raw.copy()
    scadv.pp.prepare(adata)
    split = {} if val_size is None else {"val_size": val_size}
    scadv.tl.train_classifier(adata, label, seed=seed, progress=False, **split)
    test = np.flatnonzero((adata.obs["scadv_split"] == "test").to_numpy())
    rng = np.random.default_rng(seed)
    cells = np.zeros(adata.n_obs, dtype=bool)
    cells[rng.choice(test, size=min(n_attack, len(test)), replace=False)] = True
    attack(adata, cells, seed)
    t1 = time.perf_counter()
    scadv.tl.meta_detect(adata, seed=seed, progress=False)
    t2 = time.perf_counter()
    genes = gene_attacks(adata, cells, seed)
    t3 = time.perf_counter()
    adaptive(adata, cells, seed, query_budget, lams)
    scadv.tl.meta_evaluate(adata, progress=False)
    rec = adata.uns["scadv"]["meta"]
    ev = rec["evaluation"]
    rows: list[dict[str, Any]] = []
    layers: dict[str, list[str]] = {r: [v[0]] for r, v in ATTACKS.items() if v[0]}
    layers.update(genes["layers"])
    layers.update({query_row(lam): [query_layer(lam, query_budget)] for lam in lams})
    for row in [*ATTACKS, *(query_row(lam) for lam in lams)]:
        e = pooled(ev, layers[row])
        if e is None:  # a gene-level attack that found nothing to apply: it flipped no cell
            rows.append({"seed": seed, "row": row, "kind": "attack", "method": "detector",
                         "n_cells": 0, "n_flipped": 0, "flip_rate": 0.0})
            continue
        for m in METHODS:
            if m not in e:
                continue
            rows.append({"seed": seed, "row": row, "kind": "attack", "method": m,
                         "n_cells": int(e["n_changed"]), "n_flipped": int(e["n_flipped"]),
                         "flip_rate": float(e["flip_rate"]),
                         "flagged": float(e[m]["flagged"]),
                         "flagged_all": float(e[m]["flagged_all"]),
                         "clean_flagged": float(e[m]["clean_flagged"]),
                         "auroc": float(e[m]["auroc"]),
                         "test_tpr_at_5fpr": float(e[m]["test_tpr_at_5fpr"])})
    any_layer = next(iter(ev.values()))
    for m in METHODS:
        if m in any_layer:
            rows.append({"seed": seed, "row": "clean test cells", "kind": "benign", "method": m,
                         "n_cells": int(any_layer["n_clean"]),
                         "flag_rate": float(any_layer[m]["clean_flagged"])})
    for row in BENIGN_LAYERS:
        e = ev[benign_layer(row)]
        for m in METHODS:
            if m in e:
                rows.append({"seed": seed, "row": row, "kind": "benign", "method": m,
                             "n_cells": int(e["n_changed"]), "pred_changed": float(e["flip_rate"]),
                             "flag_rate": float(e[m]["flag_rate"]),
                             "auroc": float(e[m]["auroc"])})
    for row, res in new_data(adata, raw, seed).items():
        for m in METHODS:
            if m in res:
                rows.append({"seed": seed, "row": row, "kind": "benign", "method": m,
                             "n_cells": len(test), "pred_changed": 1 - res["pred_agrees"],
                             "flag_rate": res[m]})
    cal = rec["calibration"]
    info: dict[str, Any] = {
        "seed": seed, "dataset": dataset, "test_accuracy": float(
            adata.uns["scadv"]["classifier"]["metrics"]["test"]["accuracy"]),
        "n_test": len(test), "n_val": int((adata.obs["scadv_split"] == "val").sum()),
        "n_attacked": int(cells.sum()),
        "n_val_calibration": int(cal["n"]), "fpr_95": float(cal["fpr_95"]),
        "reliable": bool(cal["reliable"]), "threshold": float(rec["threshold"]),
        "validation": {m: {k: float(v) for k, v in d.items()}
                       for m, d in rec["validation"].items()},
        "gene_attacks": {k: v for k, v in genes.items() if k != "layers"},
        "cost": evade_costs(adata, np.flatnonzero(cells), query_budget, lams),
        "attack_s": t1 - t0, "meta_detect_s": t2 - t1, "gene_attacks_s": t3 - t2,
        "seed_s": time.perf_counter() - t0,
    }
    return rows, info


def pm(s: pd.Series) -> str:
    s = s.dropna()
    if not len(s):
        return "–"
    sd = f" ± {s.std(ddof=1):.2f}" if len(s) > 1 else ""
    return f"{s.mean():.2f}{sd}"


def describe(row: str) -> str:
    if row in ATTACKS:
        return ATTACKS[row][1]
    return f"count space, queries the detector, λ {row.rsplit('λ', 1)[1]}"


def markdown(df: pd.DataFrame, infos: list[dict[str, Any]], args: argparse.Namespace) -> str:
    seeds = ", ".join(str(s) for s in args.seeds)
    lams = " ".join(f"{lam:g}" for lam in args.lams)
    title = DATASETS[args.dataset][2]
    out = [f"# Detection matrix, {title} (seeds {seeds}; mean ± sd over seeds)", "",
           f"Attacks on {args.n_attack} subsampled test cells per seed; benign rows on all test "
           "cells. Every 'flagged' number is at the detector's STORED threshold (split-conformal, "
           "5% target FPR, validation cells). Command: `python benchmarks/detection_matrix.py "
           f"--dataset {args.dataset} --seeds {' '.join(str(s) for s in args.seeds)} "
           f"--n-attack {args.n_attack} --query-budget {args.query_budget} --lams {lams}"
           + ("" if args.val_size is None else f" --val-size {args.val_size:g}") + "`.", ""]
    att = df[df.kind == "attack"]
    order = list(dict.fromkeys(att.row))
    head = "| attacker | flip rate | " + " | ".join(
        f"{m}: flips / all" for m in HEADLINE) + " |"
    out += ["## Attackers: fraction flagged at the stored threshold (successful flips / all "
            "attacked cells)", "", head, "|" + "---|" * (len(HEADLINE) + 2)]
    for r in order:
        d = att[att.row == r]
        cells = [pm(d[d.method == "detector"].flip_rate)]
        for m in HEADLINE:
            dm = d[d.method == m]
            cells.append(f"{pm(dm.flagged)} / {pm(dm.flagged_all)}")
        out.append(f"| {describe(r)} | " + " | ".join(cells) + " |")
    ben = df[df.kind == "benign"]
    out += ["", "## Benign shifts: false-alarm rate at the stored threshold", "",
            "| shift | prediction changed | " + " | ".join(HEADLINE) + " |",
            "|" + "---|" * (len(HEADLINE) + 2)]
    for r in dict.fromkeys(ben.row):
        d = ben[ben.row == r]
        cells = [pm(d[d.method == "detector"].pred_changed) if "pred_changed" in d else "–"]
        cells += [pm(d[d.method == m].flag_rate) for m in HEADLINE]
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    out += ["", "## Secondary: AUROC / test-calibrated TPR at 5% FPR (threshold from the clean "
            "TEST cells, which a user never has)", "",
            "| attacker | " + " | ".join(HEADLINE) + " |", "|" + "---|" * (len(HEADLINE) + 1)]
    for r in order:
        d = att[att.row == r]
        out.append(f"| {describe(r)} | " + " | ".join(
            f"{pm(d[d.method == m].auroc)} / {pm(d[d.method == m].test_tpr_at_5fpr)}"
            for m in HEADLINE) + " |")
    out += ["", "## Validation cells (count-space training attacks): what the default is "
            "chosen on — AUROC / flagged at the method's threshold", "",
            "| method | AUROC | flagged |", "|---|---|---|"]
    val = pd.DataFrame([{"method": m, **v, "seed": i["seed"]} for i in infos
                        for m, v in i["validation"].items()])
    for m in dict.fromkeys(val.method):
        d = val[val.method == m]
        out.append(f"| {m} | {pm(d.auroc)} | {pm(d.flagged)} |")
    cost = pd.DataFrame([i["cost"] for i in infos])
    out += ["", "## Cost of evading (attacked test cells)", "",
            f"Undefended classifier: median UMIs to the first flip {pm(cost.plain_median_umis)} "
            f"(flipped within {COUNT_BUDGET}: {pm(cost.plain_flipped)}). Querying attacker "
            f"against the stored detector (≤ {args.query_budget} UMIs): UMIs at which 50% of "
            "the attacked cells are evaded (flipped and unflagged; median over attacked cells, "
            "inf where not evaded), and its ratio to the undefended cost (goal ≥ 5):", "",
            "| λ | evaded | median UMIs (50% evaded) | ratio to undefended | median UMIs of "
            "evaded cells |", "|---|---|---|---|---|"]
    for lam in args.lams:
        q = pd.DataFrame([i["cost"]["query"][f"{lam:g}"] for i in infos])
        out.append(f"| {lam:g} | {pm(q.evaded)} | {pm(q.median_umis)} | {pm(q.cost_ratio)} | "
                   f"{pm(q.median_umis_of_evaded)} |")
    out += ["", f"Adaptive PGD (λ 0.3, ε 0.5): flipped and unflagged {pm(cost.apgd_evaded)} of "
            f"the attacked cells; data-respecting PGD at the same ε flips "
            f"{pm(cost['pgd_real_eps0.5_flipped'])} of them on the undefended classifier."]
    genes = [i["gene_attacks"] for i in infos]
    out += ["", "Gene-level attacks: predicted classes attacked per seed "
            + "; ".join(f"{len(g['targets'])} (CGD switched {sum(g['cgd_switched'].values())}, "
                        f"a single flipping gene found for {len(g['single_gene_used'])}: "
                        + (", ".join(f"{t} {gm[0]} {gm[1]}"
                                     for t, gm in g["single_gene_used"].items()) or "none")
                        + "; flipping genes per modification "
                        + ", ".join(f"{m} {sum(v[m] for v in g['single_gene'].values())}"
                                    for m in SINGLE_GENE_MODS) + ")" for g in genes)
            + "."]
    cal = pd.DataFrame([{k: i[k] for k in ("n_val_calibration", "fpr_95", "reliable",
                                             "test_accuracy", "seed_s")} for i in infos])
    out += ["", f"Threshold: {pm(cal.n_val_calibration)} validation cells; 95% bound of the "
            f"clean FPR {pm(cal.fpr_95)}; reliable in {int(cal.reliable.sum())}/{len(cal)} "
            f"seeds. Classifier test accuracy {pm(cal.test_accuracy)}. Seconds per seed "
            f"{pm(cal.seed_s)} (upper bound, shared machine)."]
    if not cal.reliable.all():
        out += ["", f"`meta_detect` warned in {int((~cal.reliable).sum())}/{len(cal)} seeds that "
                "too few validation cells calibrate the threshold: its false-positive rate on new "
                f"clean cells may exceed 0.075 (95% bound {pm(cal.fpr_95)})."]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="pbmc3k")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SCADV_DATA", "/work/shared/data")))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--n-attack", type=int, default=100)
    parser.add_argument("--query-budget", type=int, default=100)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--val-size", type=float, default=None,
                        help="validation fraction of the split (default: train_classifier's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", action="store_true",
                        help="only write the .md again from the stored .csv and .json")
    args = parser.parse_args()
    if args.out is None:
        name = "detection_matrix" + ("" if args.dataset == "pbmc3k" else f"_{args.dataset}")
        name += "" if args.val_size is None else f"_val{args.val_size:g}".replace(".", "p")
        args.out = Path(__file__).resolve().parent / "results" / name
    if args.render:
        stored = json.loads(args.out.with_suffix(".json").read_text())
        for k in ("dataset", "seeds", "n_attack", "query_budget", "lams", "val_size"):
            setattr(args, k, stored["settings"].get(k, getattr(args, k)))
        md = markdown(pd.read_csv(args.out.with_suffix(".csv")), stored["seeds"], args)
        args.out.with_suffix(".md").write_text(md)
        print(md)
        return
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    rows: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    md = ""
    for seed in args.seeds:
        r, info = one_seed(args.data, args.dataset, seed, args.n_attack, args.query_budget,
                           args.lams, args.val_size)
        rows += r
        infos.append(info)
        print(f"seed {seed}: {info['seed_s']:.0f} s (attacks {info['attack_s']:.0f} s, "
              f"meta_detect {info['meta_detect_s']:.0f} s, gene attacks "
              f"{info['gene_attacks_s']:.0f} s)", flush=True)
        md = write(rows, infos, args)  # after every seed: a partial run keeps what it measured
    print(md)


def write(rows: list[dict[str, Any]], infos: list[dict[str, Any]],
          args: argparse.Namespace) -> str:
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out.with_suffix(".csv"), index=False)
    done = argparse.Namespace(**{**vars(args), "seeds": [i["seed"] for i in infos]})
    args.out.with_suffix(".json").write_text(json.dumps(
        {"settings": {"dataset": args.dataset, "seeds": done.seeds, "n_attack": args.n_attack,
                      "query_budget": args.query_budget, "lams": args.lams,
                      "val_size": args.val_size,
                      "count_budget": COUNT_BUDGET, "cgd_genes": CGD_GENES,
                      "min_cluster": MIN_CLUSTER},
         "seeds": infos}, indent=1, default=float))
    md = markdown(df, infos, done)
    args.out.with_suffix(".md").write_text(md)
    return md


if __name__ == "__main__":
    main()
