"""Gene-level attacks on PBMC3k: overview (flips and signatures) and CGD against adverSCarial's CGD.

1. ``scadv.tl.overview`` for every cell type × ``perc1`` / ``perc99``: how many genes flip the
   cluster alone, how many must stay (max-change signature), for the stored MLP and for the
   marker scorer (canonical PBMC markers); wall time and classifier calls.
2. CGD per cell type on the MLP (new label: the runner-up): genes modified until the cluster
   switches, for scadv's CGD (probes in both directions with a line search, screened gene
   order), scadv's gradient CGD, scadv's CGD visiting genes in random order (3 seeds), and
   adverSCarial's CGD rule re-implemented (genes in random order, one probe
   ``x·(1±α) ± ε``, its sign kept per cell, fixed step; α = 0.1 with adverSCarial's default
   ε = 0 and with scadv's ε = 0.1; 3 seeds each). For the adverSCarial rule the number is the
   genes visited (it modifies every visited gene).

Run::

    python benchmarks/gene_attacks.py [--data ../shared/data/pbmc3k_raw.h5ad] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/single_gene.py

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import torch

import scadv
from scadv import classifiers as CL
from scadv.tl._genes import _common as G
from scadv.tl._genes import _engine as E


def adverscarial_cgd(adata: ad.AnnData, target: str, to: str, *, seed: int,
                     alpha: float = 0.1, eps: float = 0.0, max_genes: int = 2000) -> tuple:
    """adverSCarial's advCGD rule on scadv's MLP: returns (switched, genes visited, calls)."""
    s = G.setup(adata, cluster_key="cell_type", classifier=None, layer=None, device="cpu",
                action="bench")
    mask = G.cluster_mask(s, target)
    ev = G.evaluator(s, G.block(s, mask), batch_rows=4096, fast=False)
    classes = s.classes
    orig = int(E.decide_proba(ev.proba)[0])
    t = classes.index(to)
    genes = np.random.default_rng(seed).permutation(ev.d)[:max_genes]
    calls = 0
    for visited, g in enumerate(genes, start=1):
        cells = np.flatnonzero(ev.pred != t)  # cells not yet predicted as the new type
        x = ev.block[cells, g]
        up = np.where(x > 0, x * (1 + alpha) + eps, x * (1 - alpha) + eps)
        down = np.where(x > 0, x * (1 - alpha) - eps, x * (1 + alpha) - eps)
        p = ev.pairs(cells, np.full(len(cells), g), up)  # one probe of the whole cluster
        calls += 1
        go_up = p[:, t] > p[:, orig]
        go_down = p[:, t] < p[:, orig]
        col = ev.block[:, g].copy()
        col[cells[go_up]] = up[go_up]
        col[cells[go_down]] = down[go_down]
        ev.commit(np.array([g]), col[:, None])
        calls += 1
        pred = ev.pred
        if (pred == t).sum() > (pred == orig).sum():
            return True, visited, calls
    return False, len(genes), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SCADV_DATA", "../shared/data"))
                        / "pbmc3k_raw.h5ad")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sc.settings.verbosity = 0
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    adata = ad.read_h5ad(args.data)
    # the model input in X (classic layout): this benchmark reads it directly
    scadv.pp.prepare(adata, include_genes=CL.marker_genes(CL.PBMC_MARKERS), subset=True)
    scadv.tl.train_classifier(adata, "cell_type", seed=42, progress=False)
    print(f"PBMC3k: {adata.n_obs} cells × {adata.n_vars} model genes (2,000 HVGs + "
          f"{adata.n_vars - 2000} canonical markers), MLP seed 42\n")

    for name, clf in (("MLP", None), ("marker scorer", CL.MarkerClassifier(CL.PBMC_MARKERS))):
        start = time.perf_counter()
        scadv.tl.overview(adata, cluster_key="cell_type", classifier=clf, key_added=name,
                          progress=False)
        rec = adata.uns["scadv"][name]
        t = rec["table"]
        print(f"overview, {name}: {time.perf_counter() - start:.1f} s, "
              f"{int(rec['n_classifier_calls']):,} classifier calls, "
              f"{int(rec['n_rows_classified']):,} rows")
        wide = t.pivot(index="cluster", columns="modification",
                       values=["n_flip_genes", "n_signature_genes"])
        wide = wide.loc[list(rec["targets"])]
        print("| cell type | flip perc1 | flip perc99 | signature perc1 | signature perc99 |")
        print("| --- | --- | --- | --- | --- |")
        for cluster, row in wide.iterrows():
            print(f"| {cluster} | {row[('n_flip_genes', 'perc1')]} | "
                  f"{row[('n_flip_genes', 'perc99')]} | {row[('n_signature_genes', 'perc1')]} | "
                  f"{row[('n_signature_genes', 'perc99')]} |")
        if name == "MLP":
            for cluster in ("B", "CD14+ Mono"):
                sig = t[(t["cluster"] == cluster) & (t["modification"] == "perc1")]
                print(f"  {cluster} perc1 signature: {sig['signature_genes'].iloc[0][:160]}")
        print()

    print("CGD on the MLP: genes modified until the cluster switches (≤ 2,000 visited; "
          "random orders: seeds 0, 1, 2)")
    print("| cell type | → | scadv | scadv, gradient | scadv, random order | adverSCarial rule "
          "(ε = 0) | adverSCarial rule (ε = 0.1) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    seconds = {}
    for cluster in adata.obs["cell_type"].cat.categories:
        cells = []
        for name, kw_list in (("scadv", [{}]), ("gradient", [{"gradient": True}]),
                              ("random", [{"order": "random", "seed": s} for s in range(3)])):
            runs = []
            for kw in kw_list:
                start = time.perf_counter()
                scadv.tl.cgd(adata, cluster_key="cell_type", target=cluster, progress=False,
                             key_added="cgd", **kw)
                seconds.setdefault(name, []).append(time.perf_counter() - start)
                rec = adata.uns["scadv"]["cgd"]
                runs.append(str(int(rec["n_genes_modified"])) if rec["switched"]
                            else f">{int(rec['n_genes_visited'])}")
            cells.append(", ".join(runs))
        to = str(adata.uns["scadv"]["cgd"]["to"])
        for eps in (0.0, 0.1):
            runs = []
            for seed in range(3):
                start = time.perf_counter()
                ok, visited, _ = adverscarial_cgd(adata, cluster, to, seed=seed, eps=eps)
                seconds.setdefault(f"rule {eps}", []).append(time.perf_counter() - start)
                runs.append(str(visited) if ok else f">{visited}")
            cells.append(", ".join(runs))
        print(f"| {cluster} | {to} | " + " | ".join(cells) + " |")
    print("mean seconds per run: " + ", ".join(f"{k}: {np.mean(v):.1f}"
                                             for k, v in seconds.items()))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (2 cores: above 2 means CPU "
          "contention)")


if __name__ == "__main__":
    main()
