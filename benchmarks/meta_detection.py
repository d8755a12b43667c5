"""The meta-detector on PBMC3k: seen and unseen attacks, benign perturbations, baselines.

For each seed: a new split and classifier (``train_classifier(seed=...)``), attacks on the
*test* cells, then ``meta_detect(seed=...)`` with its defaults (trained on PGD ε ∈ {0.05,
0.1, 0.15} of training cells only, threshold at 5% FPR on the validation cells) and the
evaluation on test cells. Numbers are mean ± sd over the seeds; positives are the test cells
each attack flipped (successful attacks), negatives all clean test cells.

Attacks (all on the classifier of that seed):

* ``pgd``: scadv's default PGD (L∞, margin loss, α = 2.5ε/10, 10 steps, early stop) at the
  training budgets and the unseen 0.3 and 1.0;
* ``fgsm``: one step, cross-entropy;
* ``study``: the original study's PGD (cross-entropy, α = 0.02, 10 steps, no early stop);
* ``realistic``: PGD that keeps zeros at zero and every gene in its observed range
  (ε 0.3, 0.5, 1.0);
* ``realclassic``: the same constraints, cross-entropy, no early stop (every cell runs all
  10 steps and keeps the last iterate, pushed deep into the new class);
* benign: binomial down-sampling to 50% of counts, dropout of 10% of expressed genes,
  Gaussian noise (sd 0.1, 0.2, 0.3 on log-normalised values of expressed genes).

Also printed: the detector against an adaptive attacker (``adaptive_pgd``: margin loss capped
at κ = 1 minus λ · detector logit, 20 steps, last iterate) and the leak of the original study
(the gradient feature computed with the *true* label), measured with a logistic regression on
the meta-features.

Run::

    python benchmarks/meta_detection.py [--seeds 42 0 1] [--data ../shared/data/pbmc3k_raw.h5ad]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import scadv
from scadv import _keys as K
from scadv import _model as M
from scadv.tl._attacks import _engine as E
from scadv.tl._detect import _features as MF

METRICS = ("auroc", "tpr_at_1fpr", "tpr_at_5fpr", "adv_detection_rate", "clean_detection_rate",
           "precision", "recall", "f1", "auroc_all")
LAMBDAS = (0.0, 0.3, 1.0, 3.0)


def one_seed(path: Path, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    adata = ad.read_h5ad(path)
    scadv.pp.prepare(adata, subset=True)  # the model input in X: read directly below
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    scadv.tl.pgd(adata, eps=(0.05, 0.1, 0.15, 0.3, 1.0), progress=False)
    scadv.tl.fgsm(adata, eps=(0.05, 0.1, 0.15), progress=False)
    scadv.tl.pgd(adata, eps=(0.05, 0.1, 0.15), loss="ce", alpha=0.02, early_stop=False,
                 key_added="study", progress=False)
    scadv.tl.pgd(adata, eps=(0.3, 0.5, 1.0), keep_zeros=True, clip="observed",
                 key_added="realistic", progress=False)
    scadv.tl.pgd(adata, eps=(0.3, 0.5, 1.0), keep_zeros=True, clip="observed", loss="ce",
                 early_stop=False, key_added="realclassic", progress=False)
    scadv.tl.benign_perturb(adata, seed=seed)
    for sd in (0.2, 0.3):
        scadv.tl.benign_perturb(adata, kinds=("noise",), noise=sd, seed=seed,
                                key_added=f"benign_sd{sd:g}")
    t0 = time.perf_counter()
    scadv.tl.meta_detect(adata, seed=seed, progress=False)
    seconds = {"meta_detect": time.perf_counter() - t0}
    for lam in LAMBDAS:
        for realistic, eps in ((False, (0.1,)), (True, (0.5, 1.0))):
            key = f"adapt{'R' if realistic else 'U'}_lam{lam:g}"
            scadv.tl.adaptive_pgd(adata, lam=lam, eps=eps, keep_zeros=realistic,
                                  clip="observed" if realistic else None, key_added=key,
                                  progress=False)
    t0 = time.perf_counter()
    scadv.tl.meta_evaluate(adata, progress=False)
    seconds["meta_evaluate"] = time.perf_counter() - t0
    rec = adata.uns["scadv"]["meta"]
    table = rec["table"].copy()
    table["seed"] = seed
    seconds["clean_accuracy"] = adata.uns["scadv"]["classifier"]["metrics"]["test"]["accuracy"]
    seconds["val_auroc"] = rec["calibration"]["auroc"]
    seconds.update(leak(adata))
    return table, seconds


def leak(adata: ad.AnnData) -> dict[str, float]:
    """AUROC of a logistic regression on the meta-features, with the gradient feature taken
    w.r.t. the predicted class (honest) or the true label (the study's leak); trained on
    training cells and their PGD ε ∈ {0.05, 0.1, 0.15} versions, tested on test cells and
    their flipped PGD ε = 0.1 versions."""
    rec = adata.uns["scadv"]["classifier"]
    classes = list(np.asarray(rec["classes"]).astype(str))
    dev = torch.device("cpu")
    net = M.from_record(rec, dev)
    split = adata.obs["scadv_split"].astype(str).to_numpy()
    y = np.asarray([classes.index(c) if c in classes else -1
                    for c in adata.obs["cell_type"].astype(str)])
    x = np.asarray(adata.X, dtype=np.float32)
    out = {}
    groups = MF.GROUPS

    def feats(xs: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        f, _, _ = MF.compute(net, xs, groups, device=dev)
        if labels is None:
            return f
        g = torch.empty(xs.shape)
        E.mlp_input_grad(net, torch.as_tensor(xs), torch.as_tensor(labels), loss="ce",
                         targeted=False, grad_out=g)
        a = g.abs().numpy()
        f[:, -3:] = np.column_stack([a.mean(1), a.var(1), np.linalg.norm(a, axis=1)])
        return f

    train, test = (split == "train") & (y >= 0), split == "test"
    budget = E.Budget(eps=(0.05, 0.1, 0.15), norm="linf", alpha=(0.0125, 0.025, 0.0375),
                      steps=10, random_start=False, n_restarts=1, loss="margin")
    _, lg = M.infer(net, x[train], device=dev)
    adv, al = E.run(net, x[train], lg.argmax(1), budget, E.Constraints(), targeted=False,
                    device=dev, seed=0, batch_size=256, progress=False)
    flip = al.argmax(-1) != lg.argmax(1)[None]
    ytr = np.tile(y[train], (3, 1))[flip]
    test_layer = scadv.get.perturbed(adata, K.attack_layer("pgd", 0.1), cells=test)
    tflip = (adata.obs[K.attack_flipped("pgd", 0.1)] == True).to_numpy()[test]  # noqa: E712
    for name, use_label in (("honest_logreg_auroc", False), ("leaky_logreg_auroc", True)):
        f0 = feats(x[train], y[train] if use_label else None)
        f1 = feats(adv[flip], ytr if use_label else None)
        mu, sd = f0.mean(0), f0.std(0) + 1e-6
        lr = LogisticRegression(max_iter=5000, class_weight="balanced").fit(
            np.vstack([(f0 - mu) / sd, (f1 - mu) / sd]), np.r_[np.zeros(len(f0)), np.ones(len(f1))])
        s0 = lr.decision_function((feats(x[test], y[test] if use_label else None) - mu) / sd)
        s1 = lr.decision_function((feats(test_layer[tflip], y[test][tflip] if use_label else None)
                                   - mu) / sd)
        out[name] = roc_auc_score(np.r_[np.zeros(len(s0)), np.ones(len(s1))], np.r_[s0, s1])
    return out


def summarise(tables: pd.DataFrame) -> None:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    pd.set_option("display.max_columns", 30)

    def pm(s: pd.Series) -> str:
        return f"{s.mean():.3f} ± {s.std(ddof=1):.3f}" if len(s) > 1 else f"{s.mean():.3f}"

    adv = tables[tables.kind == "adversarial"]
    main = adv[~adv.attack.str.startswith("adapt")]
    print("\n== detector and baselines, test cells; positives: flipped test cells ==")
    agg = main.groupby(["attack", "method"], sort=False).agg(
        flip_rate=("flip_rate", pm), auroc=("auroc", pm), tpr_at_1fpr=("tpr_at_1fpr", pm),
        tpr_at_5fpr=("tpr_at_5fpr", pm), detected=("adv_detection_rate", pm),
        clean_passed=("clean_detection_rate", pm), f1=("f1", pm), auroc_all=("auroc_all", pm))
    print(agg.to_string())

    print("\n== benign perturbations: fraction of perturbed test cells flagged; AUROC of "
          "perturbed against clean test cells (0.5: indistinguishable) ==")
    ben = tables[tables.kind == "benign"]
    print(ben.groupby(["attack", "method"], sort=False).agg(
        flag_rate=("flag_rate", pm), auroc_vs_clean=("auroc", pm),
        prediction_changed=("flip_rate", pm)).to_string())

    print("\n== adaptive attacker (adaptive_pgd, 20 steps, last iterate); U: unconstrained, "
          "R: keeps zeros / observed range / one-count floor ==")
    ada = adv[adv.attack.str.startswith("adapt") & adv.method.isin(["detector", "meta"])].copy()
    ada["evaded"] = ada.flip_rate * (1 - ada.adv_detection_rate)
    print(ada.groupby(["attack", "method"], sort=False).agg(
        flip_rate=("flip_rate", pm), auroc=("auroc", pm), detected=("adv_detection_rate", pm),
        flipped_and_undetected=("evaded", pm)).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    tables, extra = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        table, info = one_seed(args.data, seed)
        tables.append(table)
        extra.append(info)
        print(f"seed {seed}: classifier test accuracy {info['clean_accuracy']:.3f}, detector "
              f"validation AUROC {info['val_auroc']:.3f}, meta_detect {info['meta_detect']:.1f} s, "
              f"meta_evaluate {info['meta_evaluate']:.1f} s, leak check: honest "
              f"{info['honest_logreg_auroc']:.3f} vs true-label gradient "
              f"{info['leaky_logreg_auroc']:.3f} (seed total {time.perf_counter() - t0:.0f} s)",
              flush=True)
    summarise(pd.concat(tables, ignore_index=True))
    ex = pd.DataFrame(extra)

    def pm(s: pd.Series, digits: int = 3) -> str:
        sd = f" ± {s.std(ddof=1):.{digits}f}" if len(s) > 1 else ""
        return f"{s.mean():.{digits}f}{sd}"

    print(f"\nleak check over seeds: honest {pm(ex.honest_logreg_auroc)}, true-label gradient "
          f"{pm(ex.leaky_logreg_auroc)}")
    print(f"meta_detect seconds: {pm(ex.meta_detect, 1)}")


if __name__ == "__main__":
    main()
