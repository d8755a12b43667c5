"""scadv.tl.cgd switches clusters of the PBMC3k MLP, by probes and by true gradients."""

from __future__ import annotations

import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier
from tests.conftest import assert_unchanged, model_genes, model_x, perturbed, prepared_x, snapshot


@pytest.mark.parametrize("gradient", [False, True])
def test_cgd_switches_memory_to_naive_cd4(pbmc3k_trained, gradient):
    a = pbmc3k_trained
    scadv.tl.cgd(a, cluster_key="cell_type", target="Memory CD4 T", gradient=gradient,
                 add_obs=True, add_layer=True, progress=False)
    rec = a.uns["scadv"]["cgd"]
    assert rec["original_label"] == "Memory CD4 T"
    assert rec["to"] == "Naive CD4 T"
    assert rec["switched"]
    assert rec["final_label"] == "Naive CD4 T"
    assert rec["mode"] == ("gradient" if gradient else "probe")
    # measured: 26-27 genes (probe and gradient); a broken ordering needs > 100
    assert 0 < rec["n_genes_modified"] <= 60
    tr = rec["trajectory"]
    # the cluster's label is its cells' most frequent label
    assert tr["frac_to"].iloc[-1] > tr["frac_original"].iloc[-1]
    assert rec["start_frac_to"] < rec["start_frac_original"]
    assert (tr["n_genes_modified"].diff().fillna(1) >= 0).all()
    mask = (a.obs["cell_type"] == "Memory CD4 T").to_numpy()
    # what the written layer gets from the stored model agrees with the record
    scadv.tl.predict(a, layer="scadv_cgd", key_added="check")
    pred = a.obs.loc[mask, "scadv_check_pred"].astype(str)
    assert (pred == "Naive CD4 T").mean() > (pred == "Memory CD4 T").mean()
    np.testing.assert_array_equal(pred, a.obs.loc[mask, "scadv_cgd_pred"].astype(str))
    layer, x = perturbed(a, "scadv_cgd"), model_x(a)
    changed = np.abs(layer - x).max(axis=0) > 0
    assert set(model_genes(a)[changed]) == set(rec["modified_genes"])
    assert np.array_equal(layer[~mask], x[~mask])


def test_cgd_on_a_black_box_and_its_errors(pbmc3k_markers):
    a = pbmc3k_markers
    mc = MarkerClassifier(PBMC_MARKERS)
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="differentiable"):
        scadv.tl.cgd(a, cluster_key="cell_type", target="B", classifier=mc, gradient=True)
    with pytest.raises(ScadvInputError, match="already labelled"):
        scadv.tl.cgd(a, cluster_key="cell_type", target="B", classifier=mc, to="B")
    with pytest.raises(ScadvInputError, match="not a class"):
        scadv.tl.cgd(a, cluster_key="cell_type", target="B", classifier=mc, to="Neuron")
    assert_unchanged(a, before)
    scadv.tl.cgd(a, cluster_key="cell_type", target="B", classifier=mc, to="Naive CD4 T",
                 clip="observed", progress=False, add_layer=True)
    rec = a.uns["scadv"]["cgd"]
    assert rec["switched"]
    assert set(rec["modified_genes"]) <= {g for v in PBMC_MARKERS.values()
                                          for g in (*v["positive"], *v["negative"])}
    layer, x = perturbed(a, "scadv_cgd"), prepared_x(a)
    assert (layer >= x.min(axis=0) - 1e-6).all()
    assert (layer <= x.max(axis=0) + 1e-6).all()
