"""scadv.tl.pseudo_labels: the study's explicit fallback when a data set has no labels."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import scadv
from scadv._errors import ScadvInputError


@pytest.fixture(scope="module")
def _prepared():
    a = scadv.datasets.pbmc68k_reduced()
    scadv.pp.prepare(a)
    return a


@pytest.fixture
def prepared(_prepared):
    return _prepared.copy()


def test_kmeans_pseudo_labels_follow_the_cell_types(prepared, tmp_path):
    a = prepared
    scadv.tl.pseudo_labels(a)
    col = a.obs["scadv_pseudo_label"]
    assert list(col.cat.categories) == [str(i) for i in range(10)]
    sizes = col.value_counts(sort=False).to_numpy()
    assert (np.diff(sizes) <= 0).all()  # '0' is the largest cluster
    # measured ARI against the FACS labels: 0.43; random clusters score ~0
    assert adjusted_rand_score(a.obs["bulk_labels"], col) > 0.3
    rec = a.uns["scadv"]["scadv_pseudo_label"]
    assert rec["kind"] == "pseudo_labels" and rec["method"] == "kmeans" and rec["n_pcs"] == 50
    assert "MiniBatchKMeans, 10 clusters on 50 PCs" in rec["description"]
    again = scadv.tl.pseudo_labels(prepared.copy(), copy=True)
    assert (again.obs["scadv_pseudo_label"] == col).all()  # same seed, same clusters
    a.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert back.uns["scadv"]["scadv_pseudo_label"]["method"] == "kmeans"
    assert any("pseudo-labels" in s for s in back.uns["scadv"]["provenance"]["steps"])
    scadv.tl.train_classifier(a, "scadv_pseudo_label", max_epochs=5, progress=False)
    assert a.uns["scadv"]["classifier"]["label_key"] == "scadv_pseudo_label"


def test_leiden_pseudo_labels(prepared):
    pytest.importorskip("igraph")
    a = prepared
    scadv.tl.pseudo_labels(a, method="leiden", key_added="scadv_leiden")
    col = a.obs["scadv_leiden"]
    assert 4 <= len(col.cat.categories) <= 20
    # measured ARI against scanpy's louvain clusters of the same data: 0.68
    assert adjusted_rand_score(a.obs["louvain"], col) > 0.5


def test_pseudo_labels_errors(prepared):
    raw = scadv.datasets.pbmc68k_reduced()
    with pytest.raises(ScadvInputError, match=r"run scadv\.pp\.prepare"):
        scadv.tl.pseudo_labels(raw)
    with pytest.raises(ScadvInputError, match=r"method must be one of \['kmeans', 'leiden'\]"):
        scadv.tl.pseudo_labels(prepared, method="louvain")  # type: ignore[arg-type]
    with pytest.raises(ScadvInputError, match="not a scadv column"):
        scadv.tl.pseudo_labels(prepared, key_added="bulk_labels")
    assert "scadv_pseudo_label" not in prepared.obs
