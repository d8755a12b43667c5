"""Does a fusion rule make the count attacker who queries the detector pay more? PBMC3k.

Side by side, per seed: today's consistency detector (``meta_detect(fusion='logistic')``: the
three views fused by a logistic regression, re-fitted once on a querying attacker's evasions)
and the OR rule (``meta_detect(fusion='or')``: each view with its own split-conformal
threshold on the validation cells at a Bonferroni share of 5% — 1/6 margin, 1/6 squeeze, 2/3
twin — flagged if any view is over its threshold). Both are trained the same way (count-space
attacks of training cells, seed ``seed``), calibrated at 5% on the validation cells, with the
realism gate, and evaluated on test cells at their STORED threshold.

The attacker is adaptive against each detector: ``tl.adaptive_count_attack(detector=<that
detector>, lam=λ)`` edits whole UMIs, queries the detector's exact logit at every step and
stops once the cell is flipped AND unflagged (≤ ``--query-budget`` UMIs, ≤ 3 per gene). It is
run at every ``--lams`` value; a cell's cost is the cheapest evasion over them (the attacker
keeps its best run per cell). Cost = UMIs changed in cells that evaded (flipped, unflagged by
that detector), ``inf`` for cells that did not evade within the budget; the median over all
attacked cells is "UMIs to evade 50% of the time". Undefended: the same attack without a
detector (first flip, ≤ 60 UMIs).

Other rows (each detector at its stored threshold, test cells): clean cells, every benign shift
of ``benign_perturb`` (down-sampling ½, deeper 4×, dropout 10%, noise, batch sd 0.3, ambient
5%, same-type doublets, missing genes) and a stronger set (deeper 8×, batch sd 0.6, ambient
10%) — the false-alarm rate; data-respecting PGD ε 0.3 / 0.5, classic PGD (cross-entropy, no
early stop) ε 0.5, the count attack stopped at the first flip — the fraction of flips flagged.

``--variants logistic3``: the logistic fusion with three rounds (instead of one) of the
querying attacker on 400 training cells, each round's evasions added to the positives and the
fusion refitted (adversarial training of the detector).

Run::

    OMP_NUM_THREADS=1 python benchmarks/detection_defence.py [--seeds 42 0 1] [--n-attack 100]
        [--query-budget 100] [--lams 1 3] [--variants logistic or] [--data DIR] [--out PATH]

Writes ``benchmarks/results/detection_defence.{csv,json,md}`` (after every seed).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

import scadv
from scadv import _keys as K

COUNT_BUDGET = 60
#: detector variants: name -> (fusion, rounds of the querying attacker in the logistic fit)
VARIANTS = {"logistic": ("logistic", 1), "or": ("or", 1), "logistic3": ("logistic", 3)}
ATTACKS = {  # row -> layer
    "data-respecting PGD ε0.3": "scadv_real_eps0.3",
    "data-respecting PGD ε0.5": "scadv_real_eps0.5",
    "classic PGD ε0.5": "scadv_classic_eps0.5",
    "count first flip": f"scadv_counts_umis{COUNT_BUDGET}",
}
BENIGN = {**{f"benign {k}": f"scadv_benign_{k}" for k in scadv.tl._detect._benign.KINDS},
          "benign deeper 8×": "scadv_strong_deeper", "benign batch sd 0.6": "scadv_strong_batch",
          "benign ambient 10%": "scadv_strong_ambient"}


def attacks(adata: ad.AnnData, cells: np.ndarray, seed: int) -> None:
    """The attacks that do not know the detector, and the benign shifts (all test cells)."""
    common: dict[str, Any] = {"cells": cells, "seed": seed, "progress": False}
    scadv.tl.pgd(adata, eps=(0.3, 0.5), keep_zeros=True, clip="observed", key_added="real",
                 **common)
    scadv.tl.pgd(adata, eps=0.5, loss="ce", early_stop=False, key_added="classic", **common)
    scadv.tl.adaptive_count_attack(adata, detector=None, budget=COUNT_BUDGET,
                                   key_added="counts", **common)
    scadv.tl.benign_perturb(adata, seed=seed)
    scadv.tl.benign_perturb(adata, kinds=("deeper", "batch", "ambient"), depth=8.0, batch=0.6,
                            ambient=0.1, key_added="strong", seed=seed)


def flags(adata: ad.AnnData, det: str, layer: str) -> np.ndarray:
    return adata.obs[K.meta_flag(det, layer)].astype(str).to_numpy() == "True"


def one_seed(data: Path, seed: int, n_attack: int, budget: int, lams: list[float],
             variants: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t0 = time.perf_counter()
    raw = ad.read_h5ad(data / "pbmc3k_raw.h5ad")
    adata = raw[raw.obs["cell_type"].notna()].copy()
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    test = np.flatnonzero((adata.obs["scadv_split"] == "test").to_numpy())
    rng = np.random.default_rng(seed)  # the same cells as benchmarks/detection_matrix.py
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[rng.choice(test, size=min(n_attack, len(test)), replace=False)] = True
    cells = np.flatnonzero(mask)
    attacks(adata, mask, seed)
    plain = f"scadv_counts_umis{COUNT_BUDGET}"
    flipped0 = adata.obs[f"{plain}_flipped"].astype(str).to_numpy()[cells] == "True"
    cost0 = np.where(flipped0, adata.obs[f"{plain}_umis"].to_numpy(float)[cells], np.inf)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"seed": seed, "plain_median_umis": float(np.median(cost0)),
                            "plain_flipped": float(np.isfinite(cost0).mean()), "fusion": {}}
    for fusion in variants:
        det = f"meta_{fusion}"
        t1 = time.perf_counter()
        rule, rounds = VARIANTS[fusion]
        scadv.tl.meta_detect(adata, fusion=rule, adaptive_rounds=rounds, baselines=False,
                             key_added=det, seed=seed, progress=False)
        t2 = time.perf_counter()
        costs = []
        per_lam = {}
        for lam in lams:
            key = f"q_{fusion}_lam{K.format_eps(lam)}"
            scadv.tl.adaptive_count_attack(adata, detector=det, lam=lam, budget=budget,
                                           cells=mask, key_added=key, seed=seed,
                                           progress=False)
            layer = f"scadv_{key}_umis{budget}"
            scadv.tl.meta_evaluate(adata, key=det, layers=[layer], progress=False)
            flipped = adata.obs[f"{layer}_flipped"].astype(str).to_numpy()[cells] == "True"
            evaded = flipped & ~flags(adata, det, layer)[cells]
            cost = np.where(evaded, adata.obs[f"{layer}_umis"].to_numpy(float)[cells], np.inf)
            costs.append(cost)
            per_lam[float(lam)] = {"evaded": float(evaded.mean()),
                                   "median_umis": float(np.median(cost))}
        best = np.min(np.stack(costs), axis=0)
        rec = adata.uns["scadv"][det]
        ev = rec["evaluation"]
        some = next(iter(ev.values()))
        info["fusion"][fusion] = {
            "evaded": float(np.isfinite(best).mean()),
            "median_umis": float(np.median(best)),
            "median_umis_of_evaded": float(np.median(best[np.isfinite(best)]))
            if np.isfinite(best).any() else float("nan"),
            "cost_ratio": float(np.median(best) / np.median(cost0)),
            "per_lam": per_lam, "threshold": float(rec["threshold"]),
            "clean_test_flagged": float(some["detector"]["clean_flagged"]),
            "val_auroc": float(rec["validation"]["consistency"]["auroc"]),
            "val_flagged": float(rec["validation"]["consistency"]["flagged"]),
            "meta_detect_s": t2 - t1, "attack_s": time.perf_counter() - t2}
        rows.append({"seed": seed, "fusion": fusion, "row": "clean test cells",
                     "kind": "benign", "value": float(some["detector"]["clean_flagged"])})
        for row, layer in BENIGN.items():
            rows.append({"seed": seed, "fusion": fusion, "row": row, "kind": "benign",
                         "value": float(ev[layer]["detector"]["flag_rate"])})
        for row, layer in ATTACKS.items():
            e = ev[layer]
            rows.append({"seed": seed, "fusion": fusion, "row": row, "kind": "attack",
                         "value": float(e["detector"]["flagged"]),
                         "auroc": float(e["detector"]["auroc"]),
                         "flip_rate": float(e["flip_rate"])})
    info["seed_s"] = time.perf_counter() - t0
    return rows, info


def pm(s: pd.Series | list[float]) -> str:
    s = pd.Series(s, dtype=float).replace([np.inf], np.nan)
    if s.isna().all():
        return "inf"
    n_inf = int(s.isna().sum())
    s = s.dropna()
    sd = f" ± {s.std(ddof=1):.2f}" if len(s) > 1 else ""
    return f"{s.mean():.2f}{sd}" + (f" (+{n_inf} inf)" if n_inf else "")


def markdown(df: pd.DataFrame, infos: list[dict[str, Any]], args: argparse.Namespace) -> str:
    seeds = " ".join(str(i["seed"]) for i in infos)
    cols = tuple(args.variants)
    lams = " ".join(f"{x:g}" for x in args.lams)
    out = [f"# Fusion rules against the querying count attacker, PBMC3k (seeds {seeds}; "
           "mean ± sd over seeds)", "",
           f"Command: `python benchmarks/detection_defence.py --seeds {seeds} --n-attack "
           f"{args.n_attack} --query-budget {args.query_budget} --lams {lams} --variants "
           f"{' '.join(args.variants)}`. Every number "
           "at the detector's STORED threshold (split-conformal, 5%, validation cells), with "
           "the realism gate, on test cells.", "",
           "## The querying count attacker (adaptive against each detector; best λ per cell)",
           "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    f = {fu: [i["fusion"][fu] for i in infos if fu in i["fusion"]] for fu in cols}
    plain = pm([i["plain_median_umis"] for i in infos])
    out.append("| undefended: median UMIs to flip | " + " | ".join(plain for _ in cols)
               + " |")
    for label, k in (("evaded (flipped and unflagged)", "evaded"),
                     ("median UMIs to evade (all attacked cells, inf = not evaded)",
                      "median_umis"),
                     ("cost ratio vs undefended", "cost_ratio"),
                     ("median UMIs of the evading cells", "median_umis_of_evaded")):
        out.append(f"| {label} | " + " | ".join(pm([d[k] for d in f[fu]]) for fu in cols)
                   + " |")
    for lam in args.lams:
        out.append(f"| λ {lam:g} alone: evaded / median UMIs | " + " | ".join(
            f"{pm([d['per_lam'][float(lam)]['evaded'] for d in f[fu]])} / "
            f"{pm([d['per_lam'][float(lam)]['median_umis'] for d in f[fu]])}" for fu in cols)
            + " |")
    out.append("| validation AUROC / flagged (count training attacks) | " + " | ".join(
        f"{pm([d['val_auroc'] for d in f[fu]])} / {pm([d['val_flagged'] for d in f[fu]])}"
        for fu in cols) + " |")
    for kind, title in (("benign", "False alarms at the stored threshold (≤ 5% wanted)"),
                        ("attack", "Flips flagged at the stored threshold (≥ 80% wanted)")):
        d = df[df.kind == kind]
        out += ["", f"## {title}", "", "| | " + " | ".join(cols) + " |",
                "|---|" + "---|" * len(cols)]
        for row in dict.fromkeys(d.row):
            r = d[d.row == row]
            out.append(f"| {row} | " + " | ".join(pm(r[r.fusion == fu].value)
                                                  for fu in cols) + " |")
    out += ["", "Seconds per seed (upper bounds, shared machine): "
            + ", ".join(f"{i['seed']}: {i['seed_s']:.0f}" for i in infos)]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--n-attack", type=int, default=100)
    parser.add_argument("--query-budget", type=int, default=100)
    parser.add_argument("--lams", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["logistic", "or"])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "detection_defence")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    rows: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    md = ""
    for seed in args.seeds:
        r, info = one_seed(args.data, seed, args.n_attack, args.query_budget, args.lams,
                           args.variants)
        rows += r
        infos.append(info)
        print(f"seed {seed}: {info['seed_s']:.0f} s", json.dumps(info["fusion"], default=float),
              flush=True)
        df = pd.DataFrame(rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out.with_suffix(".csv"), index=False)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"settings": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()}, "seeds": infos},
            indent=1, default=float))
        md = markdown(df, infos, args)
        args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
