"""Model zoo on PBMC3k: six classifiers of different families, one audit each, over seeds.

For each seed, on the labelled PBMC3k cells (9 Seurat types):

* ``scadv.pp.prepare`` (``--n-genes`` highly variable genes plus the marker scorer's genes)
  and
  ``scadv.tl.train_classifier`` (its stratified train / val / test split is used by every
  model: the others are fitted on the same training cells);
* **scadv MLP** (``train_classifier`` defaults);
* **robust MLP**: ``scadv.tl.adversarial_train`` with small settings (PGD ε=0.25, 5 steps,
  at most 30 epochs, same split);
* **CellTypist-style logistic regression**: a ``StandardScaler`` on log1p CP10k of the model
  genes, clipped at 10, then ``LogisticRegression`` (as ``celltypist.train`` without SGD or
  feature selection), built from the fitted scikit-learn objects (``celltypist.train``
  1.7.1 fails with scikit-learn ≥ 1.8) and adapted with ``scadv.models.from_celltypist``;
* **random forest** (scikit-learn, 100 trees) on the log1p CP10k of the model genes;
* **marker scorer**: ``scadv.classifiers.MarkerClassifier(PBMC_MARKERS)`` (scType-like, no
  training) on the log1p CP10k of all genes;
* **kNN**: ``Pipeline(PCA(50) → KNeighborsClassifier(15))`` on the log1p CP10k of the model
  genes (neighbours in PCA space, as in scanpy).

Then one ``scadv.tl.compare_models`` call per seed on the test cells (``--n-cells`` of them at
most): clean accuracy; PGD flip rate (L∞, 10 steps, margin loss) at each ``--eps`` for the
white-box models (scadv MLP, robust MLP, CellTypist-style; z-score units of their own
inputs, which match: both standardise the same log1p CP10k values); black-box models get
"n/a"; the single-gene scan (``--modifications``, default ``perc1``, ``perc99`` and
adverSCarial's ``positive_aberrant``; every cell type a cluster, all its cells) over the same
genes for every model: ``--n-scan`` model genes drawn with the seed plus the marker scorer's
19 genes. The detector AUROC column is not run here (no meta-detector is trained in the
zoo), nor the minimal UMIs to flip (``compare_models(..., umis=...)``, added after this
benchmark's results were measured).

Written: ``benchmarks/results/model_zoo.csv`` (every row of every seed's table, with a
``seed`` column) and ``benchmarks/results/model_zoo.md`` (the summary table: per model, the
mean over seeds and, in brackets, the 95% Wilson interval of the pooled counts).

Run::

    OMP_NUM_THREADS=1 python benchmarks/model_zoo.py [--data ../shared/data/pbmc3k_raw.h5ad]
        [--seeds 0 1 2] [--n-genes 1000] [--n-cells 400] [--n-scan 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import scadv
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier, marker_genes
from scadv.tl._models import _compare as CM

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["scadv MLP", "robust MLP", "CellTypist-style LR", "random forest", "marker scorer",
         "kNN"]


def celltypist_model(scaler: StandardScaler, clf: LogisticRegression, genes: np.ndarray) -> Any:
    """A ``celltypist.models.Model`` around the fitted objects (a stand-in with the same
    attributes when celltypist is not installed)."""
    clf.features = genes
    description = {"details": "PBMC3k model-zoo benchmark", "number_celltypes":
                   len(clf.classes_)}
    try:
        os.environ.setdefault("CELLTYPIST_FOLDER", tempfile.mkdtemp())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import celltypist
        return celltypist.models.Model(clf, scaler, description)
    except ImportError:
        return SimpleNamespace(classifier=clf, scaler=scaler, description=description)


def one_seed(raw: ad.AnnData, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    t0 = time.perf_counter()
    adata = raw.copy()
    scadv.pp.prepare(adata, n_top_genes=args.n_genes, include_genes=marker_genes(PBMC_MARKERS),
                     progress=False)
    scadv.tl.train_classifier(adata, "cell_type", seed=seed, progress=False)
    scadv.tl.adversarial_train(adata, "cell_type", split_key="scadv_split", steps=5,
                               max_epochs=30, seed=seed, progress=False)
    genes = np.asarray(adata.uns["scadv"]["prepare"]["genes"]).astype(str)
    lognorm = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, copy=True), copy=True)
    adata.layers["lognorm"] = lognorm.X
    x = pd.DataFrame(lognorm[:, genes].X.toarray(), columns=genes)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    split = adata.obs["scadv_split"].astype(str).to_numpy()
    train = split == "train"

    scaler = StandardScaler().fit(x.to_numpy()[train])
    z = np.minimum(scaler.transform(x.to_numpy()[train]), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(max_iter=1000, random_state=seed).fit(z, y[train])
    celltypist_like = scadv.models.from_celltypist(celltypist_model(scaler, lr, genes))
    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(
        x[train], y[train])
    knn = make_pipeline(PCA(50, random_state=seed), KNeighborsClassifier(15)).fit(
        x[train], y[train])
    markers = MarkerClassifier(PBMC_MARKERS)
    t_fit = time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    scan = sorted(set(rng.choice(genes, args.n_scan, replace=False).tolist())
                  | set(marker_genes(PBMC_MARKERS)))
    test = np.flatnonzero(split == "test")
    if len(test) > args.n_cells:
        test = np.sort(rng.choice(test, args.n_cells, replace=False))
    cells = np.zeros(adata.n_obs, dtype=bool)
    cells[test] = True
    models = {"scadv MLP": "classifier", "robust MLP": "robust",
              "CellTypist-style LR": celltypist_like, "random forest": forest,
              "marker scorer": markers, "kNN": knn}
    t1 = time.perf_counter()
    table = scadv.tl.compare_models(adata, models, label_key="cell_type", cells=cells,
                                    eps=tuple(args.eps), steps=10, layer="lognorm",
                                    genes=scan, modification=tuple(args.modifications),
                                    n_boot=0, seed=seed, progress=False)
    t_cmp = time.perf_counter() - t1
    print(f"[seed {seed}] {len(test)} test cells, {len(scan)} genes scanned; fitting "
          f"{t_fit:.0f} s, compare_models {t_cmp:.0f} s (upper bounds under load)", flush=True)
    table.insert(0, "seed", seed)
    return table


def summary(all_rows: pd.DataFrame, eps: list[float]) -> str:
    """Markdown: per model, mean over seeds [95% Wilson interval of the pooled counts]."""
    rows = all_rows[all_rows["group"] == "all"]
    head = (["model", "access", "clean accuracy"] + [f"flip rate ε={e:g}" for e in eps]
            + ["single-gene flip fraction"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(sub: pd.DataFrame) -> str:
        if sub.empty or sub["value"].isna().all():
            return "black-box: n/a"
        k, n = int(sub["k"].sum()), int(sub["n"].sum())
        low, high = CM.wilson(k, n)
        return f"{sub['value'].mean():.3f} [{float(low):.3f}, {float(high):.3f}]"

    for model in ORDER:
        m = rows[rows["model"] == model]
        vals = [model, str(m["access"].iloc[0]),
                cell(m[m["metric"] == "clean_accuracy"])]
        for e in eps:
            vals.append(cell(m[(m["metric"] == "flip_rate") & np.isclose(m["eps"], e)]))
        sg = m[m["metric"] == "single_gene_flip_fraction"]
        vals.append(cell(sg) + f" ({int(sg['k'].sum())}/{int(sg['n'].sum())})")
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get(
        "SCADV_PBMC3K", "../shared/data/pbmc3k_raw.h5ad"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--n-cells", type=int, default=400)
    parser.add_argument("--n-scan", type=int, default=40)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--modifications", nargs="+",
                        default=["perc1", "perc99", "positive_aberrant"])
    parser.add_argument("--out", default=str(RESULTS / "model_zoo"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    raw = ad.read_h5ad(args.data)
    raw = raw[raw.obs["cell_type"].notna()].copy()
    start = time.perf_counter()
    tables = [one_seed(raw, seed, args) for seed in args.seeds]
    all_rows = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    all_rows.to_csv(out.with_suffix(".csv"), index=False)
    settings = (f"PBMC3k, {raw.n_obs} labelled cells, {args.n_genes} HVGs, seeds "
                f"{args.seeds}, up to {args.n_cells} test cells per seed, PGD L∞ 10 steps "
                f"margin loss, single-gene scan ({', '.join(args.modifications)}) over "
                f"{args.n_scan} random model genes + the marker scorer's genes, every cell "
                "type a cluster")
    text = (f"# Model zoo (benchmarks/model_zoo.py)\n\n{settings}.\n\n"
            "Mean over seeds [95% Wilson interval of the counts pooled over seeds].\n\n"
            + summary(all_rows, list(args.eps))
            + f"\n\nTotal {time.perf_counter() - start:.0f} s (an upper bound: measured on a "
            "shared machine).\n")
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
