"""Wall time of the whole chain on PBMC3k: prepare → train_classifier → PGD at 3 budgets.

Prints each step's wall time, the clean test accuracy and the flip rate per budget, for
several seeds. The issue's target is ≤ 30 s for the chain on a 2-core CPU.

Run::

    python benchmarks/chain_time.py [--data ../shared/data/pbmc3k_raw.h5ad] [--seeds 42 0 1]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import scadv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"PBMC3k from {args.data}; {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'seed':>4} {'read':>6} {'prepare':>8} {'train':>6} {'pgd':>6} {'chain':>6}  "
          f"{'epochs':>6} {'test acc':>8} {'bal acc':>7}  flip rate ε=0.05/0.1/0.15")
    accs, flips = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        adata = ad.read_h5ad(args.data)
        t1 = time.perf_counter()
        scadv.pp.prepare(adata)
        t2 = time.perf_counter()
        scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
        t3 = time.perf_counter()
        scadv.tl.pgd(adata, seed=seed, progress=False)
        t4 = time.perf_counter()
        model = adata.uns["scadv"]["classifier"]
        test = model["metrics"]["test"]
        flip = np.asarray(adata.uns["scadv"]["pgd"]["flip_rate"])
        accs.append(test["accuracy"])
        flips.append(flip)
        print(f"{seed:>4} {t1 - t0:6.2f} {t2 - t1:8.2f} {t3 - t2:6.2f} {t4 - t3:6.2f} "
              f"{t4 - t1:6.2f}  {len(model['history']['epoch']):>6} {test['accuracy']:8.3f} "
              f"{test['balanced_accuracy']:7.3f}  {np.round(flip, 3).tolist()}")
    flips = np.asarray(flips)
    print(f"\nmean ± sd over {len(args.seeds)} seeds: test accuracy {np.mean(accs):.3f} ± "
          f"{np.std(accs):.3f}; flip rate " + ", ".join(
              f"{m:.3f} ± {s:.3f}" for m, s in zip(flips.mean(0), flips.std(0), strict=True)))


if __name__ == "__main__":
    main()
