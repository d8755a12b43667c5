"""Parity of scadv's model adapters with the originals, on every labelled PBMC3k cell.

For each adapter (CellTypist and scikit-learn classifiers), raw counts go through the adapted
model's own preprocessing and network; the originals get the log1p CP10k values of the same
genes (CellTypist: ``celltypist.annotate`` itself when celltypist is installed). Printed per
model: the max absolute difference of the probabilities (decision values for models without
probabilities), the max relative difference of the decision values, and the fraction of
cells with the same label. The issue's bar: probabilities within 1e-5, identical labels.
The CellTypist models are built without ``celltypist.train`` (it fails with scikit-learn
≥ 1.8): a StandardScaler and a LogisticRegression fitted here, wrapped in
``celltypist.models.Model``.

Run::

    python benchmarks/model_parity.py [--data ../shared/data/pbmc3k_raw.h5ad] [--n-genes 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anndata as ad
import numpy as np
import scanpy as sc
from scipy.special import expit
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import scadv


def celltypist_reference(model: Any, lognorm: ad.AnnData) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray, str]:
    """Decision values, probabilities and labels as CellTypist computes them."""
    try:
        os.environ.setdefault("CELLTYPIST_FOLDER", tempfile.mkdtemp())
        import celltypist

        query = lognorm.copy()
        query.X = query.X.toarray()  # celltypist 1.7.1 fails on sparse input without centring
        res = celltypist.annotate(query, model=model)
        return (res.decision_matrix.to_numpy(), res.probability_matrix.to_numpy(),
                res.predicted_labels["predicted_labels"].astype(str).to_numpy(),
                "celltypist.annotate")
    except ImportError:  # CellTypist's own formula, from its source
        genes = model.classifier.features
        x = lognorm[:, genes].X.toarray()
        mean = model.scaler.mean_ if model.scaler.with_mean else 0
        z = np.minimum((x - mean) / model.scaler.scale_, 10)
        dec = model.classifier.decision_function(z)
        return dec, expit(dec), model.classifier.classes_[dec.argmax(1)], "CellTypist's formula"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc3k_raw.h5ad"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--n-genes", type=int, default=2000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    raw = ad.read_h5ad(args.data)
    counts = raw[raw.obs["cell_type"].notna()].copy()
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, n_top_genes=args.n_genes)
    genes = np.asarray(lognorm.var_names[lognorm.var["highly_variable"]])
    x = lognorm[:, genes].X.toarray().astype(np.float64)
    y = counts.obs["cell_type"].astype(str).to_numpy()
    print(f"PBMC3k: {counts.n_obs} labelled cells, {len(genes)} HVGs; adapted models read raw "
          "counts, originals log1p CP10k\n")
    print(f"{'model':52s} {'output':>8s} {'max |Δp|':>10s} {'max rel Δdec':>13s} "
          f"{'same label':>10s}")

    def report(name: str, adapted: scadv.models.Model, dec: np.ndarray | None,
               proba: np.ndarray | None, labels: np.ndarray) -> None:
        rel = "—"
        if dec is not None:
            ref = dec
            if dec.ndim == 1:  # two classes: CellTypist scores (−s, s), scikit-learn (0, s)
                ref = np.column_stack([-dec if adapted.output == "sigmoid" else 0 * dec, dec])
            diff = np.abs(adapted.decision_function(counts) - ref).max() / np.abs(ref).max()
            rel = f"{diff:.2e}"
        dp = ("—" if proba is None
              else f"{np.abs(adapted.predict_proba(counts) - proba).max():.2e}")
        same = (adapted.predict(counts) == np.asarray(labels).astype(str)).mean()
        print(f"{name:52s} {adapted.output:>8s} {dp:>10s} {rel:>13s} {same:10.4f}")

    for with_mean in (True, False):
        scaler = StandardScaler(with_mean=with_mean).fit(x)
        z = scaler.transform(x)
        z[z > 10] = 10
        clf = LogisticRegression(max_iter=500).fit(z, y)
        clf.features = genes
        description = {"date": "", "details": "", "url": "", "source": "", "version": "",
                       "number_celltypes": len(clf.classes_)}
        try:
            from celltypist.models import Model

            ct: Any = Model(clf, scaler, description)
        except ImportError:
            ct = SimpleNamespace(classifier=clf, scaler=scaler, description=description)
        dec, proba, labels, how = celltypist_reference(ct, lognorm)
        report(f"CellTypist (with_mean={with_mean}) vs {how}", scadv.models.from_celltypist(ct),
               dec, proba, labels)

    estimators: dict[str, Callable[[], Any]] = {
        "Pipeline(StandardScaler, LogisticRegression)":
            lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        "LogisticRegression": lambda: LogisticRegression(max_iter=500),
        "Pipeline(StandardScaler, LinearSVC)":
            lambda: make_pipeline(StandardScaler(), LinearSVC(C=0.01)),
        "Pipeline(StandardScaler, SGDClassifier log_loss)":
            lambda: make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=0.01,
                                                                  random_state=0)),
        "Pipeline(StandardScaler, MLPClassifier relu 64)":
            lambda: make_pipeline(StandardScaler(),
                                  MLPClassifier((64,), max_iter=200, random_state=0)),
        "MLPClassifier tanh (64, 32)":
            lambda: MLPClassifier((64, 32), activation="tanh", max_iter=200, random_state=0),
    }
    for name, make in estimators.items():
        est = make().fit(x, y)
        adapted = scadv.models.from_sklearn(est, genes=genes)
        proba = est.predict_proba(x) if adapted.output != "decision" else None
        dec = est.decision_function(x) if hasattr(est, "decision_function") else None
        report(name, adapted, dec, proba, est.predict(x))


if __name__ == "__main__":
    main()
