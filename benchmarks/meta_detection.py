"""The detector's evaluation matrix on PBMC3k: every attack, benign shift and adaptive attacker.

For each seed: a new split and classifier (``train_classifier(seed=...)``), attacks and benign
shifts of the *test* cells, then ``meta_detect(seed=...)`` with its defaults (the consistency
detector, trained on count-space attacks of training cells, threshold split-conformal at 5%
FPR on the validation cells) and the evaluation on test cells. Every "flagged" number is at
the STORED threshold; AUROC and the test-calibrated TPR at 5% FPR (its threshold taken from the
clean test cells, which a user never has) are secondary. Numbers are mean ± sd over the seeds.

Attacks (test cells):

* z-space PGD: ``pgd`` (scadv's default: margin loss, early stop) ε 0.1 / 0.5; ``classic``
  (cross-entropy, no early stop) ε 0.1 / 0.5; FGSM ε 0.1 / 0.5;
* data-respecting PGD (zeros kept, observed range): ``realistic`` ε 0.3 / 0.5 / 1.0, and
  ``realclassic`` (the same, cross-entropy, no early stop);
* count space (``adaptive_count_attack`` without a detector): ``counts`` stopped at the first
  flip, ``counts_m2`` pushed to a logit margin of 2 (≤ 60 UMIs, ≤ 3 per gene);
* gene level: CGD on the largest test cluster's cells (``cgd``), and ``single_gene``: the
  first gene that alone flips a cluster (perc1/perc99, adverSCarial's modifications), applied
  to that cluster's test cells, for every cluster with at least 20 test cells;
* benign (``benign_perturb``): down-sampling to 50% / 25%, deeper sequencing 2× / 4× / 8×,
  dropout 10%, Poisson noise, batch effect sd 0.3 / 0.6, ambient RNA 5% / 10%, same-type
  doublets, 20 / 100 / 200 missing genes; and, through ``meta_score`` on new AnnData objects,
  the test cells as CPM + log1p, median-normalised + log1p, and log1p of raw counts.

Adaptive attackers against the final detector and against the seed study's triplet detector
(``meta_detect(method='triplet')``, the detector scadv shipped before):

* count space, query-based (``adaptive_count_attack``, λ ∈ {0.3, 1, 3}, ≤ 150 UMIs): per cell
  the fewest UMIs over λ that flip it *unflagged*; the median is what evading half of the cells
  costs, next to the first flip on the undefended classifier;
* gradient (``adaptive_pgd``, data-respecting, λ ∈ {0.3, 1, 3}, ε ∈ {0.1, 0.3, 0.5, 1}): the
  fraction flipped and unflagged, by the detector and by its method without the realism gate.

Also: real data of another lab — the mouse lung immune set (Zilionis et al., inDrop) scored
by a detector trained on PBMC3k restricted to the genes the two share (upper-case symbols).

Run::

    python benchmarks/meta_detection.py [--seeds 42 0 1] [--data ../shared/data]

Times printed are upper bounds on a shared machine.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

import scadv
from scadv import _keys as K
from scadv import _recipe as R
from scadv import _store as ST
from scadv._results import write_results
from scadv.tl._genes import _modifications as MOD

LAMBDAS = (0.3, 1.0, 3.0)
ADAPTIVE_BUDGET = 150
PGD_EPS = (0.1, 0.3, 0.5, 1.0)
BENIGN = {  # key: benign_perturb arguments
    "benign": {},  # every kind at its default (downsample 0.5, depth 4, batch 0.3, ...)
    "down25": {"kinds": ("downsample",), "downsample": 0.25},
    "deeper2": {"kinds": ("deeper",), "depth": 2.0},
    "deeper8": {"kinds": ("deeper",), "depth": 8.0},
    "batch06": {"kinds": ("batch",), "batch": 0.6},
    "ambient10": {"kinds": ("ambient",), "ambient": 0.1},
    "missing20": {"kinds": ("missing",), "missing": 20},
    "missing200": {"kinds": ("missing",), "missing": 200},
}


def attacks(adata: ad.AnnData, seed: int) -> None:
    scadv.tl.pgd(adata, eps=(0.1, 0.5), progress=False)
    scadv.tl.pgd(adata, eps=(0.1, 0.5), loss="ce", early_stop=False, key_added="classic",
                 progress=False)
    scadv.tl.fgsm(adata, eps=(0.1, 0.5), progress=False)
    scadv.tl.pgd(adata, eps=(0.3, 0.5, 1.0), keep_zeros=True, clip="observed",
                 key_added="realistic", progress=False)
    scadv.tl.pgd(adata, eps=(0.3, 0.5, 1.0), keep_zeros=True, clip="observed", loss="ce",
                 early_stop=False, key_added="realclassic", progress=False)
    scadv.tl.adaptive_count_attack(adata, detector=None, progress=False)
    scadv.tl.adaptive_count_attack(adata, detector=None, kappa=2.0, key_added="counts_m2",
                                   progress=False)
    gene_attacks(adata, seed)
    for key, kw in BENIGN.items():
        scadv.tl.benign_perturb(adata, key_added=key, seed=seed, **kw)


def gene_attacks(adata: ad.AnnData, seed: int) -> None:
    """CGD on the largest cluster; the first flipping single gene of each cluster."""
    test = (adata.obs["scadv_split"] == "test").to_numpy()
    sizes = adata.obs.loc[test, "cell_type"].value_counts()
    scadv.tl.cgd(adata, cluster_key="cell_type", target=str(sizes.index[0]), add_layer=True,
                 add_obs=True, seed=seed, progress=False)
    targets = [str(t) for t, n in sizes.items() if n >= 20]
    scadv.tl.single_gene(adata, cluster_key="cell_type", target=targets, seed=seed,
                         progress=False)
    table = adata.uns["scadv"]["single_gene"]["table"]
    rec = adata.uns["scadv"]["classifier"]
    src = R.source(adata, rec["prepare"])
    genes = list(np.asarray(rec["genes"]).astype(str))
    x_all = src.dense()
    cells, rows, preds = [], [], []
    net = scadv._model.from_record(rec)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    for t in targets:
        hit = table[(table.cluster == t) & table.flipped]
        if not len(hit):
            continue
        first = hit.iloc[0]
        g = genes.index(str(first.gene))
        mod = MOD.parse(str(first.modification))
        value = mod.values(x_all[:, [g]], labels == t, np.random.default_rng(seed))[:, 0]
        idx = np.flatnonzero(labels == t)
        keep = test[idx]
        delta = np.zeros((int(keep.sum()), len(genes)), dtype=np.float32)
        delta[:, g] = value[keep] - x_all[idx[keep], g]
        cells.append(idx[keep])
        rows.append(delta)
        preds.append(scadv._model.infer(net, x_all[idx[keep]] + delta)[1].argmax(1))
    if not cells:
        return
    c = np.concatenate(cells)
    order = np.argsort(c)
    cs, rs = ST.from_dense(c[order], np.vstack(rows)[order])
    codes = np.full(adata.n_obs, -1)
    codes[c] = np.concatenate(preds)
    classes = list(np.asarray(rec["classes"]).astype(str))
    write_results(adata, step="single-gene modifications of test cells",
                  start=pd.Timestamp.now().to_pydatetime(),
                  uns={"single_gene": {**adata.uns["scadv"]["single_gene"],
                                       "layer": "scadv_single_gene"}},
                  obs={"scadv_single_gene_pred": pd.Categorical.from_codes(codes, classes)},
                  perturbations=[ST.Perturbation("scadv_single_gene", cs, rs, "model",
                                                 "classifier", "single_gene")])


def adaptive(adata: ad.AnnData, key: str) -> dict[str, float]:
    """Count-space and gradient attackers against detector ``key``."""
    out: dict[str, float] = {}
    test = (adata.obs["scadv_split"] == "test").to_numpy()
    best = np.full(adata.n_obs, np.inf)
    for lam in LAMBDAS:
        run = f"ac_{key}_lam{lam:g}"
        scadv.tl.adaptive_count_attack(adata, detector=key, lam=lam, budget=ADAPTIVE_BUDGET,
                                       key_added=run, progress=False)
        name = f"scadv_{run}_umis{ADAPTIVE_BUDGET}"
        scadv.tl.meta_score(adata, key=key, layers=[name], key_added=f"{key}_x", progress=False)
        flip = (adata.obs[f"{name}_flipped"].astype(str) == "True").to_numpy()
        flag = (adata.obs[K.meta_flag(f"{key}_x", name)].astype(str) == "True").to_numpy()
        umis = adata.obs[f"{name}_umis"].to_numpy(dtype=float)
        best = np.where(flip & ~flag, np.minimum(best, umis), best)
    best = best[test]
    out["count_evade_median_umis"] = float(np.median(best))
    out["count_evade_le60"] = float((best <= 60).mean())
    out["count_evade_le150"] = float(np.isfinite(best).mean())
    det = adata.uns["scadv"][key]
    method = str(det["method"])
    for eps in PGD_EPS:
        ev_det = ev_method = 0.0
        for lam in LAMBDAS:
            run = f"ap_{key}_lam{lam:g}"
            scadv.tl.adaptive_pgd(adata, detector=key, lam=lam, eps=eps, keep_zeros=True,
                                  clip="observed", key_added=run, progress=False)
            name = K.attack_layer(run, eps)
            scadv.tl.meta_evaluate(adata, key=key, layers=[name], progress=False)
            ev = adata.uns["scadv"][key]["evaluation"][name]
            flip = ev["flip_rate"]
            ev_det = max(ev_det, flip * (1 - ev["detector"]["flagged"]))
            ev_method = max(ev_method, flip * (1 - ev[method]["flagged"]))
        out[f"pgd_evaded_eps{eps:g}"] = ev_det
        out[f"pgd_evaded_no_gate_eps{eps:g}"] = ev_method
    return out


def renormalised(adata: ad.AnnData, raw: ad.AnnData, key: str) -> dict[str, float]:
    """Test cells given as other normalisations, and with missing genes: flagged and
    prediction agreement with the counts, through meta_score."""
    test = adata.obs_names[(adata.obs["scadv_split"] == "test").to_numpy()]
    base = raw[test].copy()
    ref = adata.obs.loc[test, "scadv_pred"].astype(str).to_numpy()
    out: dict[str, float] = {}
    genes = np.asarray(adata.uns["scadv"]["classifier"]["genes"]).astype(str)
    rng = np.random.default_rng(0)
    for name in ("counts", "cpm_log1p", "median_log1p", "log1p_raw", "missing20",
                 "missing100", "missing200"):
        b = base.copy()
        kw = {}
        if name == "cpm_log1p":
            sc.pp.normalize_total(b, target_sum=1e6)
        elif name == "median_log1p":
            sc.pp.normalize_total(b)
        if name.endswith("log1p") or name == "log1p_raw":
            sc.pp.log1p(b)
        if name.startswith("missing"):
            drop = rng.choice(genes, size=int(name[7:]), replace=False)
            b = b[:, ~b.var_names.isin(drop)].copy()
            kw["missing_genes"] = "mean"
        scadv.tl.meta_score(b, key=key, source=adata, progress=False, **kw)
        scadv.tl.predict(b, model="classifier", progress=False, **kw)
        out[f"{name}_flagged"] = float((b.obs[K.meta_flag(key)] == True).mean())  # noqa: E712
        out[f"{name}_pred_agrees"] = float((b.obs["scadv_pred"].astype(str).to_numpy()
                                            == ref).mean())
    return out


def lung(pbmc: ad.AnnData, lung_path: Path, seed: int) -> pd.DataFrame:
    """A PBMC3k detector on the genes shared with the mouse lung set, scoring lung cells."""
    other = ad.read_h5ad(lung_path)
    other.var_names = other.var_names.str.upper()
    other.var_names_make_unique()
    shared = pbmc.var_names[pbmc.var_names.isin(other.var_names)]
    a = pbmc[:, shared].copy()
    scadv.pp.prepare(a)
    scadv.tl.train_classifier(a, "cell_type", seed=seed, progress=False)
    scadv.tl.meta_detect(a, seed=seed, baselines=False, progress=False)
    scadv.tl.meta_score(other, source=a, progress=False)
    scadv.tl.predict(other, progress=False)
    test = (a.obs["scadv_split"] == "test").to_numpy()
    rows = [{"cells": "PBMC3k test cells (same genes)", "n": int(test.sum()),
             "flagged": float((a.obs["scadv_meta_flag"][test] == True).mean())}]  # noqa: E712
    flag = (other.obs["scadv_meta_flag"] == True).to_numpy()  # noqa: E712
    rows.append({"cells": "lung, all", "n": other.n_obs, "flagged": float(flag.mean())})
    for t in sorted(other.obs["cell_type"].astype(str).unique()):
        sel = (other.obs["cell_type"].astype(str) == t).to_numpy()
        top = other.obs.loc[sel, "scadv_pred"].astype(str).value_counts()
        rows.append({"cells": f"lung {t} (predicted {top.index[0]} {top.iloc[0] / sel.sum():.0%})",
                     "n": int(sel.sum()), "flagged": float(flag[sel].mean())})
    out = pd.DataFrame(rows)
    out["seed"] = seed
    out["n_genes"] = len(shared)
    return out


def one_seed(data: Path, seed: int) -> tuple[pd.DataFrame, dict[str, float], pd.DataFrame]:
    t0 = time.perf_counter()
    raw = ad.read_h5ad(data / "pbmc3k_raw.h5ad")
    adata = raw.copy()
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    attacks(adata, seed)
    t1 = time.perf_counter()
    scadv.tl.meta_detect(adata, seed=seed, progress=False)
    info: dict[str, float] = {"meta_detect_s": time.perf_counter() - t1}
    scadv.tl.meta_detect(adata, method="triplet", key_added="triplet", seed=seed,
                         baselines=False, progress=False)
    rec = adata.uns["scadv"]["meta"]
    info["clean_accuracy"] = adata.uns["scadv"]["classifier"]["metrics"]["test"]["accuracy"]
    info["n_val"] = rec["calibration"]["n"]
    info["fpr_95"] = rec["calibration"]["fpr_95"]
    for name, v in rec["validation"].items():
        info[f"val_auroc_{name}"] = v["auroc"]
        info[f"val_flagged_{name}"] = v["flagged"]
    info["plain_count_median_umis"] = float(np.nanmedian(
        adata.obs["scadv_counts_umis60_umis"].to_numpy(dtype=float)[
            (adata.obs["scadv_split"] == "test").to_numpy()]))
    for key in ("meta", "triplet"):
        for k, v in adaptive(adata, key).items():
            info[f"{key}_{k}"] = v
    info.update(renormalised(adata, raw, "meta"))
    t2 = time.perf_counter()
    scadv.tl.meta_evaluate(adata, progress=False)
    info["meta_evaluate_s"] = time.perf_counter() - t2
    table = adata.uns["scadv"]["meta"]["table"].copy()
    table["seed"] = seed
    lung_table = lung(raw[raw.obs["cell_type"].notna()].copy(), data / "zilionis_lung_immune.h5ad",
                      seed) if (data / "zilionis_lung_immune.h5ad").exists() else pd.DataFrame()
    info["seed_s"] = time.perf_counter() - t0
    return table, info, lung_table


def pm(s: pd.Series, digits: int = 3) -> str:
    s = s.dropna()
    if not len(s):
        return "–"
    sd = f" ± {s.std(ddof=1):.{digits}f}" if len(s) > 1 else ""
    return f"{s.mean():.{digits}f}{sd}"


def summarise(tables: pd.DataFrame, infos: pd.DataFrame, lungs: pd.DataFrame) -> None:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 1000)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.max_colwidth", 60)
    adv = tables[(tables.kind == "adversarial") & ~tables.attack.str.startswith(("ac_", "ap_"))]
    print("\n== the detector (default: consistency + realism gate), test cells; flagged at the "
          "STORED threshold ==")
    d = adv[adv.method == "detector"]
    print(d.groupby("attack", sort=False).agg(
        flip_rate=("flip_rate", pm), n_flipped=("n_positive", pm),
        flagged_flips=("flagged", pm), flagged_all_attacked=("flagged_all", pm),
        clean_flagged=("clean_flagged", pm), auroc=("auroc", pm),
        test_calibrated_tpr_5fpr=("test_tpr_at_5fpr", pm)).to_string())
    print("\n== every method: flagged flips at its stored threshold / AUROC (mean over seeds) ==")
    agg = adv.groupby(["attack", "method"], sort=False).agg(
        flagged=("flagged", "mean"), auroc=("auroc", "mean")).reset_index()
    agg["cell"] = agg.flagged.map("{:.2f}".format) + " / " + agg.auroc.map("{:.3f}".format)
    print(agg.pivot(index="attack", columns="method", values="cell")
          .reindex(index=list(dict.fromkeys(agg.attack)),
                   columns=list(dict.fromkeys(agg.method))).to_string())
    ben = tables[tables.kind == "benign"]
    print("\n== benign shifts: fraction of perturbed test cells flagged (stored threshold); "
          "clean test cells for comparison ==")
    b = ben[ben.method == "detector"]
    print(b.groupby("attack", sort=False).agg(
        prediction_changed=("flip_rate", pm), flagged=("flag_rate", pm),
        clean_flagged=("clean_flagged", pm), auroc_vs_clean=("auroc", pm)).to_string())
    print("\n== benign shifts, every method: flag rate (mean over seeds) ==")
    piv = ben.groupby(["attack", "method"], sort=False).flag_rate.mean().unstack()
    print(piv.round(3).to_string())
    print("\n== other normalisations and missing genes (meta_score on the test cells) ==")
    for name in ("counts", "cpm_log1p", "median_log1p", "log1p_raw", "missing20",
                 "missing100", "missing200"):
        print(f"  {name:14s} flagged {pm(infos[f'{name}_flagged'])}   prediction as from "
              f"counts {pm(infos[f'{name}_pred_agrees'])}")
    print("\n== validation cells (what the default was chosen on): AUROC / flagged at the "
          "threshold, count-space training attacks ==")
    for name in ("detector", "consistency", "triplet", "logreg", "margin", "squeeze", "twin",
                 "mahalanobis", "pca", "input"):
        if f"val_auroc_{name}" in infos:
            print(f"  {name:12s} AUROC {pm(infos[f'val_auroc_{name}'])}   flagged "
                  f"{pm(infos[f'val_flagged_{name}'])}")
    print(f"  threshold from {pm(infos.n_val, 0)} validation cells; 95% bound of its FPR "
          f"{pm(infos.fpr_95)}")
    print("\n== adaptive attackers ==")
    print(f"  undefended classifier, count attack to the first flip: median UMIs "
          f"{pm(infos.plain_count_median_umis, 1)}")
    for key, what in (("meta", "default detector"), ("triplet", "seed study's triplet detector")):
        print(f"  {what}: count-space, query-based (best λ per cell, ≤ {ADAPTIVE_BUDGET} UMIs): "
              f"median UMIs to flip unflagged {pm(infos[f'{key}_count_evade_median_umis'], 1)}; "
              f"evaded within 60 UMIs {pm(infos[f'{key}_count_evade_le60'])}, within "
              f"{ADAPTIVE_BUDGET} {pm(infos[f'{key}_count_evade_le150'])}")
        for eps in PGD_EPS:
            print(f"    gradient (adaptive_pgd, data-respecting) ε={eps:g}: flipped and unflagged "
                  f"{pm(infos[f'{key}_pgd_evaded_eps{eps:g}'])} (without the gate "
                  f"{pm(infos[f'{key}_pgd_evaded_no_gate_eps{eps:g}'])})")
    if len(lungs):
        print("\n== another lab's cells: mouse lung immune (inDrop) scored by a PBMC3k detector "
              "on the shared genes ==")
        print(lungs.groupby("cells", sort=False).agg(
            n=("n", "first"), n_genes=("n_genes", "first"), flagged=("flagged", pm)).to_string())
    print(f"\nclassifier test accuracy {pm(infos.clean_accuracy)}; meta_detect "
          f"{pm(infos.meta_detect_s, 0)} s, meta_evaluate {pm(infos.meta_evaluate_s, 0)} s, "
          f"whole seed {pm(infos.seed_s, 0)} s (upper bounds on a shared machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    tables, infos, lungs = [], [], []
    for seed in args.seeds:
        table, info, lung_table = one_seed(args.data, seed)
        tables.append(table)
        infos.append(info)
        lungs.append(lung_table)
        print(f"seed {seed}: test accuracy {info['clean_accuracy']:.3f}, "
              f"{info['seed_s']:.0f} s", flush=True)
    summarise(pd.concat(tables, ignore_index=True), pd.DataFrame(infos),
              pd.concat(lungs, ignore_index=True))


if __name__ == "__main__":
    main()
