"""How strong is scadv's default PGD? Flip rates under other losses, steps, step sizes, restarts.

Same model and test cells for every setting (PBMC3k, default classifier, seed 42). If the
default is within a point or two of the strongest setting, the flip rate is a property of the
model, not of the optimiser.

Run::

    python benchmarks/attack_strength.py [--data ../shared/data/pbmc3k_raw.h5ad]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

import scadv

SETTINGS = [
    ("default: margin, α=2.5ε/steps, 10 steps", {}),
    ("study: cross-entropy, α=0.02, 10 steps", {"loss": "ce", "alpha": 0.02}),
    ("cross-entropy, α=2.5ε/steps, 10 steps", {"loss": "ce"}),
    ("margin, α=0.02, 10 steps", {"alpha": 0.02}),
    ("margin, α=2.5ε/steps, 50 steps", {"steps": 50}),
    ("margin, 10 steps, random start × 10", {"random_start": True, "n_restarts": 10}),
    ("margin, 50 steps, random start × 10", {"steps": 50, "random_start": True,
                                             "n_restarts": 10}),
    ("classic (no early stop), cross-entropy, α=0.02", {"loss": "ce", "alpha": 0.02,
                                                       "early_stop": False}),
    ("FGSM (one step of ε)", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    adata = ad.read_h5ad(args.data)
    scadv.pp.prepare(adata)
    for rank, title in ((50, "default classifier (input_rank=50)"),
                        (None, "plain MLP (input_rank=None)")):
        key = "clf" if rank else "plain"
        scadv.tl.train_classifier(adata, "cell_type", input_rank=rank, key_added=key,
                                  progress=False)
        acc = adata.uns["scadv"][key]["metrics"]["test"]["accuracy"]
        print(f"\n{title}: test accuracy {acc:.3f}")
        print(f"  {'setting':48s} {'flip ε=0.05':>11s} {'ε=0.1':>6s} {'ε=0.15':>6s} "
              f"{'seconds':>8s}")
        for name, kw in SETTINGS:
            t0 = time.perf_counter()
            if kw is None:
                scadv.tl.fgsm(adata, model=key, key_added="run", progress=False)
            else:
                scadv.tl.pgd(adata, model=key, key_added="run", progress=False, **kw)
            dt = time.perf_counter() - t0
            flips = np.asarray(adata.uns["scadv"]["run"]["flip_rate"])
            print(f"  {name:48s} {flips[0]:11.3f} {flips[1]:6.3f} {flips[2]:6.3f} {dt:8.2f}")


if __name__ == "__main__":
    main()
