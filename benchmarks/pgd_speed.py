"""PGD speed: scadv against captum.robust.PGD and ART's ProjectedGradientDescent, in one run.

Same model, same cells, same budgets and the same attack for all three: L∞, cross-entropy
against the model's clean prediction, α = 0.02, 10 steps, no random start, ε ∈ {0.05, 0.1, 0.15},
all cells in one batch for captum and ART (scadv: its default batch size). Each tool is timed
over repeated runs (median) after a warm-up; the flip rates are printed so one can see the
tools did the same work.

Run (needs the ``bench`` extra: ``pip install -e '.[bench]' -c constraints.txt``)::

    python benchmarks/pgd_speed.py [--data ../shared/data/pbmc3k_raw.h5ad] [--repeats 7]

Without PBMC3k it falls back to the bundled ``pbmc68k_reduced``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import scadv
from scadv import _model as M
from scadv.tl._attacks import _engine as A

EPS = (0.05, 0.1, 0.15)
#: scadv runs with its own default batch size; captum and ART get all cells in one batch.
SCADV_BATCH = inspect.signature(scadv.tl.pgd).parameters["batch_size"].default
ALPHA = 0.02
STEPS = 10


def load(path: Path | None) -> tuple[ad.AnnData, str]:
    if path is not None and path.exists():
        adata = ad.read_h5ad(path)
        label = "cell_type"
        name = f"PBMC3k ({path.name})"
    else:
        adata = scadv.datasets.pbmc68k_reduced()
        label = "bulk_labels"
        name = "pbmc68k_reduced (bundled)"
    scadv.pp.prepare(adata, subset=True)  # the model input in X: read directly below
    return adata, label, name


def flops_per_row(model: M.MLP) -> float:
    """FLOPs (2 × multiply-adds) of one row through the network's linear layers."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return 2.0 * sum(m.in_features * m.out_features for m in linears)


def nominal_flops(model: M.MLP, n: int) -> float:
    """What classic PGD computes: per budget and step one forward and one input backward
    (the input-gradient backward costs as much as the forward), plus a final forward."""
    return flops_per_row(model) * n * len(EPS) * (2 * STEPS + 1)


def time_it(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_scadv(model, x, y, early_stop=True, stats=None):
    budget = A.Budget(eps=EPS, norm="linf", alpha=(ALPHA,) * len(EPS), steps=STEPS,
                      random_start=False, n_restarts=1, loss="ce")
    _, logits = A.run(model, x, y, budget, A.Constraints(), targeted=False,
                      device=torch.device("cpu"), seed=0, batch_size=SCADV_BATCH, progress=False,
                      early_stop=early_stop, stats=stats)
    return logits.argmax(-1)


def run_captum(model, x, y):
    from captum.robust import PGD

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    pgd = PGD(model)
    preds = []
    for eps in EPS:
        adv = pgd.perturb(xt, radius=eps, step_size=ALPHA, step_num=STEPS, target=yt,
                          norm="Linf")
        with torch.no_grad():
            preds.append(model(adv).argmax(-1).numpy())
    return np.stack(preds)


def run_art(model, x, y, n_classes):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                            input_shape=(x.shape[1],), nb_classes=n_classes,
                            device_type="cpu")
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    preds = []
    for eps in EPS:
        attack = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=ALPHA,
                                          max_iter=STEPS, targeted=False, num_random_init=0,
                                          batch_size=len(x), verbose=False)
        adv = attack.generate(x, y=onehot)
        preds.append(clf.predict(adv, batch_size=len(x)).argmax(-1))
    return np.stack(preds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    adata, label, name = load(args.data)
    print(f"data: {name}; {torch.get_num_threads()} torch threads; "
          f"{os.cpu_count()} CPUs; {platform.processor() or platform.machine()}")
    print(f"attack: L∞ PGD, ε={EPS}, α={ALPHA}, {STEPS} steps, cross-entropy, no random start\n")
    print("GFLOP/s counts the FLOPs each tool executes (scadv: rows it really computed; "
          "captum and\nART: classic PGD, every budget and step). "
          "'× scadv' is the tool's time / scadv's.\n")
    print(f"{'model':28s} {'tool':14s} {'median s':>9s} {'GFLOP/s':>8s} {'× scadv':>8s}  "
          "flip rate per ε")
    for title, rank in (("PCA-50 input (default)", 50), ("plain MLP (input_rank=None)", None)):
        scadv.tl.train_classifier(adata, label, input_rank=rank, key_added="bench",
                                  progress=False)
        record = adata.uns["scadv"]["bench"]
        model = M.from_record(record)
        for p in model.parameters():
            p.requires_grad_(True)  # as a user's model would be; scadv switches this off itself
        test = (adata.obs["scadv_bench_split"] == "test").to_numpy()
        x = np.ascontiguousarray(adata.X[test], dtype=np.float32)
        with torch.no_grad():
            y = model(torch.from_numpy(x)).argmax(-1).numpy()
        nominal = nominal_flops(model, len(x))
        executed = {}
        for tool, early in (("scadv", True), ("scadv-classic", False)):
            stats: dict[str, int] = {}
            run_scadv(model, x, y, early_stop=early, stats=stats)
            executed[tool] = flops_per_row(model) * (stats["forward_rows"] + stats["backward_rows"])
        tools = {
            "scadv": partial(run_scadv, model, x, y),
            "scadv-classic": partial(run_scadv, model, x, y, early_stop=False),
            "captum": partial(run_captum, model, x, y),
            "ART": partial(run_art, model, x, y, len(record["classes"])),
        }
        results = {}
        for tool, fn in tools.items():
            try:
                seconds, preds = time_it(fn, args.repeats)
            except ImportError as err:
                print(f"{title:28s} {tool:14s} not installed ({err.name}); "
                      "pip install -e '.[bench]'")
                continue
            results[tool] = seconds
            flip = (np.asarray(preds) != y[None]).mean(axis=1)
            ratio = seconds / results["scadv"]
            gflops = executed.get(tool, nominal) / seconds / 1e9
            print(f"{title:28s} {tool:14s} {seconds:9.4f} {gflops:8.2f} {ratio:8.2f}  "
                  f"{np.round(flip, 3).tolist()}")
        print(f"{'':28s} {len(x)} test cells × {x.shape[1]} genes; classic PGD computes "
              f"{nominal / 1e9:.2f} GFLOP, scadv's early stop {executed['scadv'] / 1e9:.2f} GFLOP")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
