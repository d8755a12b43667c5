"""Which scadv results depend on torch's CPU thread count, and by how much (not a timing).

With more than one thread, BLAS splits each matrix product's sums over threads; floating-point
addition is not associative, so the result's last bits depend on how the sums were split, i.e.
on the thread count. This script measures what that does to scadv's results on PBMC3k:

1. **Forward pass** (``predict``): the largest difference of the logits.
2. **Input gradient**: the largest relative difference, and how many of its components change
   sign (the sign is what an L∞ attack step uses).
3. **PGD** (``pgd``, the same stored model): the largest difference of the adversarial
   inputs (``scadv.get.perturbed``), the fraction of attacked cells whose adversarial
   version differs, and the flip rates.
4. **Training** (``train_classifier``, 5 epochs): the largest difference of the weights and
   of the test accuracy.
5. **End to end** (``train_classifier`` with its defaults, then ``pgd``, both at the thread
   count): the adversarial layers and flip rates of the two models.

Every run uses the same seed; one thread and two threads are compared (and, when the machine
has them, more). Run::

    python benchmarks/thread_determinism.py [--data ../shared/data/pbmc3k_raw.h5ad]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import torch

import scadv
from scadv import _model as M
from scadv import _recipe as R
from scadv.tl._attacks import _engine as E


def _with_threads(n: int, fn):  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    base = ad.read_h5ad(args.data)
    scadv.pp.prepare(base)
    _with_threads(1, lambda: scadv.tl.train_classifier(base, "cell_type", progress=False))
    rec = base.uns["scadv"]["classifier"]
    net = M.from_record(rec)
    x = R.model_input(base, rec["prepare"]).x
    test = (base.obs["scadv_split"] == "test").to_numpy()
    t0, *others = args.threads
    print(f"PBMC3k, {base.n_obs} cells × {base.n_vars} genes; threads {t0} vs {others}")

    def forward() -> np.ndarray:
        return M.infer(net, x, device=torch.device("cpu"))[1]

    def gradient() -> np.ndarray:
        xt = torch.as_tensor(x[test])
        y = torch.as_tensor(forward()[test].argmax(axis=1))
        g = torch.empty_like(xt)
        E.mlp_input_grad(net, xt, y, loss="margin", targeted=False, grad_out=g)
        return g.numpy()

    def attack() -> ad.AnnData:
        a = base.copy()
        scadv.tl.pgd(a, progress=False)
        return a

    def train() -> ad.AnnData:
        a = base.copy()
        scadv.tl.train_classifier(a, "cell_type", max_epochs=5, key_added="again",
                                  progress=False)
        return a

    def chain() -> ad.AnnData:
        a = base.copy()
        scadv.tl.train_classifier(a, "cell_type", key_added="chain", progress=False)
        scadv.tl.pgd(a, model="chain", progress=False)
        return a

    ref = {"forward": _with_threads(t0, forward), "gradient": _with_threads(t0, gradient),
           "pgd": _with_threads(t0, attack), "train": _with_threads(t0, train),
           "chain": _with_threads(t0, chain)}
    for n in others:
        logits = _with_threads(n, forward)
        print(f"\n{n} threads vs {t0}:")
        print(f"  forward: max |Δ logit| = {np.abs(logits - ref['forward']).max():.3g}")
        g = _with_threads(n, gradient)
        g0 = ref["gradient"]
        rel = np.abs(g - g0).max() / np.abs(g0).max()
        flips = (np.sign(g) != np.sign(g0)).mean()
        print(f"  input gradient: max relative Δ = {rel:.3g}; sign differs for "
              f"{flips:.2e} of the components")
        a, a0 = _with_threads(n, attack), ref["pgd"]
        for layer in a0.uns["scadv"]["pgd"]["layers"]:
            d = np.abs(scadv.get.perturbed(a, layer, cells=test)
                       - scadv.get.perturbed(a0, layer, cells=test))
            print(f"  pgd {layer}: max |Δ| = {d.max():.3g}, cells differing "
                  f"{(d.max(axis=1) > 1e-6).mean():.3f}")
        print(f"  pgd flip rates {np.round(a.uns['scadv']['pgd']['flip_rate'], 4)} vs "
              f"{np.round(a0.uns['scadv']['pgd']['flip_rate'], 4)}")
        b, b0 = _with_threads(n, train), ref["train"]
        w = b.uns["scadv"]["again"]["weights"]
        w0 = b0.uns["scadv"]["again"]["weights"]
        print(f"  training: max |Δ weight| = {max(np.abs(w[k] - w0[k]).max() for k in w):.3g}; "
              f"test accuracy {b.uns['scadv']['again']['metrics']['test']['accuracy']:.4f} vs "
              f"{b0.uns['scadv']['again']['metrics']['test']['accuracy']:.4f}")
        c, c0 = _with_threads(n, chain), ref["chain"]
        for layer in c0.uns["scadv"]["pgd_chain"]["layers"]:
            d = np.abs(scadv.get.perturbed(c, layer, cells=test)
                       - scadv.get.perturbed(c0, layer, cells=test))
            print(f"  end to end {layer}: max |Δ| = {d.max():.3g}, cells differing "
                  f"{(d.max(axis=1) > 1e-6).mean():.3f}")
        print(f"  end to end flip rates "
              f"{np.round(c.uns['scadv']['pgd_chain']['flip_rate'], 4)} vs "
              f"{np.round(c0.uns['scadv']['pgd_chain']['flip_rate'], 4)}; epochs "
              f"{c.uns['scadv']['chain']['history']['epoch'].size} vs "
              f"{c0.uns['scadv']['chain']['history']['epoch'].size}")


if __name__ == "__main__":
    main()
