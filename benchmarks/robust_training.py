"""Adversarial training on PBMC3k: clean and robust accuracy of the plain and robust models,
other training schemes, and a stronger attack to rule out gradient masking.

Robust accuracy is the standard one: accuracy against the TRUE labels under L∞ PGD pushed away
from the true label (``scadv.tl.pgd(..., away_from='label')``: margin loss, α = 2.5·ε/steps,
10 steps), on the TEST split of the plain model (every model here reuses that split). The
defaults were chosen on VALIDATION cells (``robust_grid.py``); validation numbers are printed
here too, test numbers were never used to choose anything.

Run::

    python benchmarks/robust_training.py [--data ../shared/data/pbmc3k_raw.h5ad]
        [--seeds 42 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import scadv
from scadv import _model as M
from scadv import _validate as V
from scadv.tl import _common as C
from scadv.tl._attacks import _engine as E

EPS = (0.05, 0.1, 0.15)

SCHEMES = [
    ("robust, defaults (PGD ε=0.25, 10 steps, 30 % adversarial, trainable PCA input)", {}),
    ("PGD ε=0.3, 30 % (the default before robust_grid.py)", {"eps": 0.3}),
    ("PGD ε=0.1, 50/50, trainable PCA input", {"eps": 0.1, "adv_ratio": 0.5}),
    ("PGD ε=0.2, 50/50, trainable PCA input", {"eps": 0.2, "adv_ratio": 0.5}),
    ("PGD ε=0.25, 30 %, FROZEN PCA input (train_classifier's)", {"freeze_input": True}),
    ("PGD ε=0.25, 30 %, plain MLP (no PCA input)", {"input_rank": None}),
    ("TRADES ε=0.25, β=2", {"method": "trades", "beta": 2.0}),
    ("FGSM ε=0.25 (random start), 30 %", {"method": "fgsm"}),
]


def _val_robust(adata: ad.AnnData, key: str) -> tuple[float, float]:
    m = adata.uns["scadv"][key]["metrics"]
    if "robust_accuracy" in m["val"]:
        return m["val"]["accuracy"], float(m["val"]["robust_accuracy"][1])
    return m["val"]["accuracy"], float("nan")


def strong_attack(adata: ad.AnnData, key: str, eps: float) -> dict[str, float]:
    """Robust accuracy under the default attack and under 50 steps × 10 random restarts."""
    rec = adata.uns["scadv"][key]
    net = M.from_record(rec)
    cells = (adata.obs["scadv_split"] == "test").to_numpy()
    y = C.class_index(V.labels(adata, "cell_type"), [str(c) for c in rec["classes"]])
    keep = cells & (y >= 0)
    x = np.asarray(adata.X)[keep]
    out = {}
    for name, steps, restarts in (("10 steps", 10, 1), ("50 steps × 10 restarts", 50, 10)):
        budget = E.Budget(eps=(eps,), norm="linf", alpha=(2.5 * eps / steps,), steps=steps,
                          random_start=restarts > 1, n_restarts=restarts, loss="margin")
        _, logits = E.run(net, x, y[keep], budget, E.Constraints(), targeted=False,
                          device=torch.device("cpu"), seed=0, batch_size=256, progress=False)
        out[name] = float((logits[0].argmax(1) == y[keep]).mean())
    budget = E.Budget(eps=(eps,), norm="linf", alpha=(eps,), steps=1, random_start=False,
                      n_restarts=1, loss="ce")
    _, logits = E.run(net, x, y[keep], budget, E.Constraints(), targeted=False,
                      device=torch.device("cpu"), seed=0, batch_size=256, progress=False)
    out["FGSM"] = float((logits[0].argmax(1) == y[keep]).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1, 2])
    parser.add_argument("--quick", action="store_true",
                        help="only the plain and the default robust model")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    schemes = SCHEMES[:1] if args.quick else SCHEMES
    raw = ad.read_h5ad(args.data)
    scadv.pp.prepare(raw, subset=True)  # the model input in X: read directly below
    results: dict[str, list[list[float]]] = {}
    strong: list[dict[str, float]] = []
    for seed in args.seeds:
        adata = raw.copy()
        t0 = time.perf_counter()
        scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
        rows = [("plain classifier (train_classifier defaults)", "classifier",
                 time.perf_counter() - t0)]
        for i, (name, kw) in enumerate(schemes):
            t0 = time.perf_counter()
            scadv.tl.adversarial_train(adata, "cell_type", split_key="scadv_split", seed=seed,
                                       key_added=f"s{i}", progress=False, **kw)
            rows.append((name, f"s{i}", time.perf_counter() - t0))
        scadv.tl.robust_accuracy(adata, models=[key for _, key, _ in rows], eps=(0, *EPS),
                                 progress=False)
        acc = adata.uns["scadv"]["robustness"]["accuracy"]
        for (name, key, seconds), row in zip(rows, acc, strict=True):
            val = _val_robust(adata, key)
            results.setdefault(name, []).append([*val, *row, seconds])
            print(f"[seed {seed}] {name}: val {val[0]:.3f}/{val[1]:.3f}, test clean {row[0]:.3f}"
                  f", robust {', '.join(f'{a:.3f}' for a in row[1:])} ({seconds:.1f} s)",
                  flush=True)
        strong.append(strong_attack(adata, "s0", 0.1))
        print(f"[seed {seed}] default robust model at ε=0.1: {strong[-1]}", flush=True)

    print(f"\nPBMC3k, test split, mean ± sd over seeds {args.seeds} (val: validation split, "
          "robust at ε=0.1)")
    head = ["val clean", "val ε=0.1", "clean", *[f"ε={e:g}" for e in EPS], "train s"]
    print(f"  {'model':78s} " + " ".join(f"{h:>13s}" for h in head))
    for name, vals in results.items():
        arr = np.asarray(vals)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(arr.mean(0), arr.std(0), strict=True)]
        cells[-1] = f"{arr[:, -1].mean():.1f}"
        print(f"  {name:78s} " + " ".join(f"{c:>13s}" for c in cells))
    print("\nDefault robust model, robust accuracy at ε=0.1 under stronger attacks "
          "(mean ± sd over seeds):")
    for name in strong[0]:
        vals = np.asarray([s[name] for s in strong])
        print(f"  {name:28s} {vals.mean():.3f} ± {vals.std():.3f}")


if __name__ == "__main__":
    main()
