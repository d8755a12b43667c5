"""scadv.tl.max_change: the set never changes the label, is maximal, and leaves the markers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv import classifiers as CL
from scadv._errors import ScadvInputError
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier
from tests.conftest import assert_unchanged, model_genes, model_x, perturbed, prepared_x, snapshot


def _majority(pred) -> str:
    labels, counts = np.unique(np.asarray(pred, dtype=str), return_counts=True)
    return labels[counts.argmax()]


def test_marker_signature_is_the_clusters_markers(pbmc3k_markers, tmp_path):
    a = pbmc3k_markers
    mc = MarkerClassifier(PBMC_MARKERS)
    scadv.tl.max_change(a, cluster_key="cell_type", target="B", classifier=mc,
                        modification="perc1", add_layer=True, add_obs=True, progress=False)
    rec = a.uns["scadv"]["max_change"]
    assert set(rec["signature"]) == {"MS4A1", "CD79A"}  # switching both off flips B
    assert len(rec["modifiable"]) == len(model_genes(a)) - 2
    assert rec["original_label"] == rec["final_label"] == "B"
    # the whole set modified at once, classified from scratch: still B
    mask = (a.obs["cell_type"] == "B").to_numpy()
    bound = mc.bind(model_genes(a))
    layer = perturbed(a, "scadv_max_change")
    assert _majority(np.asarray(bound.classes)[bound.predict_proba(layer[mask]).argmax(1)]) == "B"
    np.testing.assert_array_equal(layer[~mask], prepared_x(a)[~mask])  # other cells untouched
    assert (a.obs.loc[mask, "scadv_max_change_pred"].notna()).all()
    assert a.obs.loc[~mask, "scadv_max_change_pred"].isna().all()
    a.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad")
    assert list(back.uns["scadv"]["max_change"]["signature"]) == list(rec["signature"])
    assert back.uns["scadv"]["max_change"]["table"].equals(rec["table"])


def test_mlp_set_keeps_the_label_is_maximal_and_deterministic(small_trained):
    a = small_trained
    kw = dict(cluster_key="cell_type", target="type0", modification="perc1", progress=False)
    scadv.tl.max_change(a, add_layer=True, seed=3, **kw)
    rec = a.uns["scadv"]["max_change"]
    assert len(rec["signature"]) > 0
    assert len(rec["modifiable"]) > 0
    mask = (a.obs["cell_type"] == "type0").to_numpy()
    scadv.tl.predict(a, layer="scadv_max_change", key_added="after")
    assert _majority(a.obs.loc[mask, "scadv_after_pred"]) == rec["original_label"] == "type0"
    # maximal: adding any signature gene alone to the set changes the label
    genes = list(model_genes(a))
    clf = CL.resolve(None, a).bind(genes)
    x = perturbed(a, "scadv_max_change")[mask]
    p1 = np.percentile(model_x(a), 1, axis=0)
    for gene in rec["signature"]:
        j = genes.index(gene)
        xm = x.copy()
        xm[:, j] = p1[j]
        assert _majority(np.asarray(clf.classes)[clf.predict_proba(xm).argmax(1)]) != "type0"
    scadv.tl.max_change(a, key_added="again", seed=3, **kw)
    np.testing.assert_array_equal(a.uns["scadv"]["again"]["signature"], rec["signature"])


def test_max_change_errors(small_trained):
    a = small_trained
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="one cluster name"):
        scadv.tl.max_change(a, cluster_key="cell_type", target=["type0", "type1"])
    with pytest.raises(ScadvInputError, match="unknown modification"):
        scadv.tl.max_change(a, cluster_key="cell_type", target="type0", modification="up")
    assert_unchanged(a, before)
