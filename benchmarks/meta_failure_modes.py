"""Where the meta-detector fails: detection rate per (clean class → adversarial class) pair.

PBMC3k, default classifier and detector at one seed; the data-respecting PGD (keeps zeros,
observed range) at ε = 0.5 on the test cells. For each pair of classes a flip goes between:
how many flipped test cells, and the fraction the detector flags at its threshold (5% FPR on
validation cells). Also: the false-positive rate on clean test cells the classifier gets
right and wrong.

Run::

    python benchmarks/meta_failure_modes.py [--seed 42] [--data ../shared/data/pbmc3k_raw.h5ad]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import pandas as pd
import scanpy as sc

import scadv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    adata = ad.read_h5ad(args.data)
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, "cell_type", seed=args.seed, progress=False)
    scadv.tl.pgd(adata, eps=0.5, keep_zeros=True, clip="observed", key_added="realistic",
                 progress=False)
    scadv.tl.meta_detect(adata, seed=args.seed, baselines=False, progress=False)
    layer = "scadv_realistic_eps0.5"
    test = adata.obs[adata.obs["scadv_split"] == "test"]
    flipped = test[test[f"{layer}_flipped"] == True]  # noqa: E712
    pairs = pd.DataFrame({
        "pair": flipped["scadv_pred"].astype(str) + " → " + flipped[f"{layer}_pred"].astype(str),
        "flagged": (flipped[f"{layer}_meta_flag"] == True).to_numpy(),  # noqa: E712
    })
    out = pairs.groupby("pair").agg(n=("flagged", "size"), detected=("flagged", "mean"))
    out = out.sort_values("n", ascending=False)
    out["share_of_flips"] = out.n / out.n.sum()
    pd.set_option("display.width", 200)
    print(f"seed {args.seed}: data-respecting PGD ε=0.5, {len(flipped)} flipped test cells, "
          f"{pairs.flagged.mean():.3f} flagged")
    print(out.round(3).to_string())
    correct = test["cell_type"].astype(str) == test["scadv_pred"].astype(str)
    flag = test["scadv_meta_flag"] == True  # noqa: E712
    print(f"\nclean test cells flagged: {flag.mean():.3f} overall; {flag[correct].mean():.3f} of "
          f"the {int(correct.sum())} the classifier gets right, {flag[~correct].mean():.3f} of "
          f"the {int((~correct).sum())} it gets wrong")


if __name__ == "__main__":
    main()
