"""CPU threads: scadv steps with one torch thread against the default (all cores).

The meta-detector trains its small networks and runs the adaptive attacker on one CPU thread
(``scadv._detector.single_thread``): their matrices are small, and on a busy machine the
synchronisation of torch's thread pool can cost far more than the arithmetic. This script
times, on PBMC3k, each step with ``torch.set_num_threads(1)`` and with the default, so the
choice can be checked on any machine (run it on a quiet one and on a busy one). Steps that
force one thread themselves (detector training, ``adaptive_pgd``) are timed as a whole, so
only their other parts see the setting.

Run::

    python benchmarks/threads.py [--repeats 3] [--data ../shared/data/pbmc3k_raw.h5ad]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import torch

import scadv
from scadv import _detector as DT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    adata = ad.read_h5ad(args.data)
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, "cell_type", progress=False)
    scadv.tl.meta_detect(adata, baselines=False, progress=False)
    default_threads = torch.get_num_threads()
    steps = {
        "train_classifier": lambda: scadv.tl.train_classifier(
            adata, "cell_type", split_key="scadv_split", key_added="again", progress=False),
        "pgd (3 budgets, test cells)": lambda: scadv.tl.pgd(adata, key_added="p",
                                                            progress=False),
        "meta_detect (no baselines)": lambda: scadv.tl.meta_detect(
            adata, baselines=False, key_added="m", progress=False),
        "adaptive_pgd (realistic, ε=0.5)": lambda: scadv.tl.adaptive_pgd(
            adata, lam=0.3, eps=0.5, keep_zeros=True, clip="observed", key_added="a",
            progress=False),
    }
    fit = {}
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4000, 87)).astype(np.float32)
    fit["detector networks only (synthetic, 87 features)"] = lambda: DT.fit(
        f[:1800], rng.integers(0, 9, 1800), f[1800:], rng.integers(0, 1800, 2200), f[:200],
        f[200:400], shape=DT.Shape(87), options=DT.TrainOptions(), seed=0,
        device=torch.device("cpu"), progress=False)
    print(f"default torch threads here: {default_threads}; median of {args.repeats} runs, s")
    print(f"  {'step':50s} {'1 thread':>9s} {'default':>9s}")
    for name, step in steps.items():
        times = {}
        for n in (1, default_threads):
            torch.set_num_threads(n)
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step()
                runs.append(time.perf_counter() - t0)
            times[n] = float(np.median(runs))
        torch.set_num_threads(default_threads)
        print(f"  {name:50s} {times[1]:9.2f} {times[default_threads]:9.2f}", flush=True)
    # the detector's own training, with and without its one-thread guard
    name, step = next(iter(fit.items()))
    guarded = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        guarded.append(time.perf_counter() - t0)
    original = DT.single_thread
    DT.single_thread = _no_guard
    try:
        free = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            free.append(time.perf_counter() - t0)
    finally:
        DT.single_thread = original
    print(f"  {name:50s} {np.median(guarded):9.2f} {np.median(free):9.2f}")


class _NoGuard:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _no_guard(device: torch.device) -> _NoGuard:
    return _NoGuard()


if __name__ == "__main__":
    main()
