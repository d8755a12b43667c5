"""Choosing adversarial training's budget and mix on VALIDATION cells only, on PBMC3k and on
simulated data with known markers.

For each training budget ε and adversarial share r of ``scadv.tl.adversarial_train`` (PGD,
10 steps, trainable PCA input) and each seed, prints numbers measured on the model's
validation split only (the test split is not looked at):

* clean accuracy and robust accuracy at ε = 0.1 (PGD away from the true label, 10 steps);
* on simulated data, also precision@20 of integrated gradients (baseline: zero expression)
  against the true markers, the attributions computed on the validation cells, and how many
  of the top 20 genes per type come from the type's lineage program instead.

The plain classifier (``scadv.tl.train_classifier``, same seed and split) is the reference
row. Test-split numbers of the chosen setting come from ``robust_training.py`` and
``robust_vs_plain.py``.

Run::

    python benchmarks/robust_grid.py [--data ../shared/data/pbmc3k_raw.h5ad]
        [--seeds 42 0 1 2] [--sim-seeds 0 1 2] [--datasets pbmc3k simulated]
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

import scadv

EPS = (0.15, 0.2, 0.25, 0.3)
RATIOS = (0.2, 0.3, 0.5)


def val_truth(adata: ad.AnnData, model: str) -> tuple[float, float]:
    """Precision@20 of IG on the validation cells, and lineage genes per type's top 20."""
    val = (adata.obs["scadv_split"] == "val").to_numpy()
    scadv.tl.attribute(adata, method="integrated_gradients", model=model, cells=val,
                       key_added="ig_val", progress=False)
    scadv.tl.score_attributions(adata, keys="ig_val", k=20, key_added="truth_val")
    prec = float(adata.uns["scadv"]["truth_val"]["precision_at_k_mean"][0])
    rec = adata.uns["scadv"]["ig_val"]
    truth = adata.uns["scadv"]["simulation"]
    lineage = pd.DataFrame(truth["lineage_genes"], index=truth["classes"],
                           columns=truth["genes"])
    n_lineage = []
    for c, scores in zip(rec["classes"], rec["scores"], strict=True):
        top = np.asarray(rec["genes"])[np.argsort(-scores)[:20]]
        n_lineage.append(int(lineage.loc[c, top].sum()))
    return prec, float(np.mean(n_lineage))


def one_seed(adata: ad.AnnData, seed: int, simulated: bool) -> list[dict[str, float]]:
    rows = []
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    scadv.tl.robust_accuracy(adata, models="classifier", eps=(0.1,), cells=(
        adata.obs["scadv_split"] == "val").to_numpy(), progress=False)
    plain = {"eps": 0.0, "ratio": 0.0, "seed": seed,
             "val clean": adata.uns["scadv"]["classifier"]["metrics"]["val"]["accuracy"],
             "val robust ε=0.1": float(adata.uns["scadv"]["robustness"]["accuracy"][0, 0])}
    if simulated:
        plain["val IG precision@20"], plain["lineage genes in top 20"] = val_truth(
            adata, "classifier")
    rows.append(plain)
    for eps, ratio in itertools.product(EPS, RATIOS):
        t0 = time.perf_counter()
        scadv.tl.adversarial_train(adata, "cell_type", split_key="scadv_split", seed=seed,
                                   eps=eps, adv_ratio=ratio, eval_eps=(0.1,), key_added="r",
                                   progress=False)
        m = adata.uns["scadv"]["r"]["metrics"]["val"]
        row = {"eps": eps, "ratio": ratio, "seed": seed, "val clean": m["accuracy"],
               "val robust ε=0.1": float(m["robust_accuracy"][0])}
        if simulated:
            row["val IG precision@20"], row["lineage genes in top 20"] = val_truth(adata, "r")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"[seed {seed}] " + ", ".join(
            f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()),
            flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1, 2])
    parser.add_argument("--sim-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["pbmc3k", "simulated"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    for name in args.datasets:
        rows = []
        seeds = args.seeds if name == "pbmc3k" else args.sim_seeds
        if name == "pbmc3k":
            raw = ad.read_h5ad(args.data)
            scadv.pp.prepare(raw)
        for seed in seeds:
            if name == "pbmc3k":
                adata = raw.copy()
            else:
                adata = scadv.datasets.simulate(seed=seed)
                scadv.pp.prepare(adata)
            rows += one_seed(adata, seed, simulated=name != "pbmc3k")
        table = pd.DataFrame(rows).drop(columns=["seconds"], errors="ignore")
        mean = table.drop(columns="seed").groupby(["eps", "ratio"]).agg(["mean", "std"])
        print(f"\n{name}: VALIDATION split, mean (sd) over seeds {seeds}; eps 0 = plain model")
        cols = [c for c in table.columns if c not in ("eps", "ratio", "seed")]
        print(f"  {'ε':>5s} {'r':>4s} " + " ".join(f"{c:>24s}" for c in cols))
        for (eps, ratio), row in mean.iterrows():
            cells = [f"{row[(c, 'mean')]:.3f} ({row[(c, 'std')]:.3f})" for c in cols]
            print(f"  {eps:5.2f} {ratio:4.1f} " + " ".join(f"{c:>24s}" for c in cells))
        print()


if __name__ == "__main__":
    main()
