"""scadv.tl.single_gene: finds a cluster's marker genes, exactly, batched; output and errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.svm import LinearSVC

import scadv
from scadv._errors import ScadvInputError
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier
from tests.conftest import assert_unchanged, model_genes, model_x, prepared_x, snapshot


def _flips(adata, key, cluster, modification):
    t = adata.uns["scadv"][key]["table"]
    sel = t[(t["cluster"] == cluster) & (t["modification"] == modification) & t["flipped"]]
    return set(sel["gene"])


def test_marker_classifier_single_genes_are_the_markers(pbmc3k_markers):
    """Switching off one B marker flips the B cluster; nothing else does. Destroying a marker
    (negative aberrant) flips its own cluster, whatever the cluster."""
    a = pbmc3k_markers
    scadv.tl.single_gene(a, cluster_key="cell_type", target=["B", "CD14+ Mono"],
                         classifier=MarkerClassifier(PBMC_MARKERS),
                         modification=["perc1", "negative_aberrant"], progress=False)
    assert _flips(a, "single_gene", "B", "perc1") == {"MS4A1", "CD79A"}
    assert {"MS4A1", "CD79A"} <= _flips(a, "single_gene", "B", "negative_aberrant")
    assert {"LYZ", "CD14"} <= _flips(a, "single_gene", "CD14+ Mono", "negative_aberrant")
    rec = a.uns["scadv"]["single_gene"]
    table = rec["table"]
    assert len(table) == 2 * 2 * len(model_genes(a))  # every (cluster, modification, gene)
    non_markers = ~table["gene"].isin(sorted({g for v in PBMC_MARKERS.values()
                                              for g in (*v["positive"], *v["negative"])}))
    assert not table.loc[non_markers, "flipped"].any()
    assert (table.loc[non_markers, "original_score"]
            == table.loc[non_markers, "cluster"].map(
                rec["summary"].drop_duplicates("cluster").set_index("cluster")["original_score"])
            ).all()
    flips = table[table["flipped"]]
    assert (flips.loc[flips["cluster"] == "B", "new_label"] != "B").all()
    summary = rec["summary"]
    assert list(summary["original_label"].unique()) == ["B", "CD14+ Mono"]
    assert rec["n_classifier_calls"] > 0


def test_dichotomy_finds_a_subset_of_the_exhaustive_scan(pbmc3k_markers):
    a = pbmc3k_markers
    kw = dict(cluster_key="cell_type", target="NK", classifier=MarkerClassifier(PBMC_MARKERS),
              modification=["perc99", "positive_aberrant"], progress=False)
    scadv.tl.single_gene(a, key_added="ex", **kw)
    scadv.tl.single_gene(a, key_added="di", search="dichotomy", first_split=10, **kw)
    for mod in ("perc99", "positive_aberrant"):
        exhaustive = _flips(a, "ex", "NK", mod)
        dichotomy = _flips(a, "di", "NK", mod)
        assert exhaustive
        assert dichotomy <= exhaustive
    ex, di = a.uns["scadv"]["ex"]["table"], a.uns["scadv"]["di"]["table"]
    merged = di.merge(ex, on=["cluster", "modification", "gene"], suffixes=("_di", "_ex"))
    np.testing.assert_array_equal(merged["new_label_di"], merged["new_label_ex"])
    np.testing.assert_allclose(merged["new_score_di"], merged["new_score_ex"], atol=1e-5)


def test_random_forest_scan_matches_row_by_row(small_trained):
    a = small_trained
    xa = model_x(a)
    rf = RandomForestClassifier(n_estimators=20, random_state=0).fit(
        xa, a.obs["cell_type"].astype(str))
    scadv.tl.single_gene(a, cluster_key="cell_type", target="type1", classifier=rf,
                         modification=["perc1", "positive_aberrant"], progress=False)
    table = a.uns["scadv"]["single_gene"]["table"]
    mask = (a.obs["cell_type"] == "type1").to_numpy()
    x = xa[mask]
    pos = {g: i for i, g in enumerate(model_genes(a))}
    stats = {"perc1": np.percentile(xa, 1, axis=0),
             "positive_aberrant": 1e4 * np.abs(xa).max(axis=0)}
    for _, row in table.sample(40, random_state=0).iterrows():
        j = pos[row["gene"]]
        xm = x.copy()
        xm[:, j] = stats[row["modification"]][j]
        pred = rf.predict(xm)
        labels, counts = np.unique(pred, return_counts=True)
        assert row["new_label"] == labels[counts.argmax()]
        assert row["frac_original"] == pytest.approx((pred == "type1").mean())


def test_results_survive_h5ad(pbmc3k_markers, tmp_path):
    a = pbmc3k_markers
    scadv.tl.single_gene(a, cluster_key="cell_type", target="B",
                         classifier=MarkerClassifier(PBMC_MARKERS), progress=False,
                         genes=["MS4A1", "CD79A", "LYZ", "GNLY"])
    a.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    rec, rec0 = back.uns["scadv"]["single_gene"], a.uns["scadv"]["single_gene"]
    pd.testing.assert_frame_equal(rec["table"], rec0["table"])
    pd.testing.assert_frame_equal(rec["summary"], rec0["summary"])
    assert list(rec["modifications"]) == ["perc1", "perc99"]
    assert rec["provenance"]["params"]["search"] == "exhaustive"


def test_stored_mlp_is_the_default_and_genes_restrict_the_scan(small_trained):
    a = small_trained
    genes = list(model_genes(a)[:10])
    scadv.tl.single_gene(a, cluster_key="cell_type", target="type0", genes=genes,
                         modification="positive_aberrant", progress=False)
    rec = a.uns["scadv"]["single_gene"]
    assert rec["classifier"] == "scadv MLP 'classifier'"
    assert list(rec["table"]["gene"]) == genes


def test_bad_input_is_refused_before_anything_is_written(pbmc3k_markers):
    a = pbmc3k_markers
    before = snapshot(a)
    mc = MarkerClassifier(PBMC_MARKERS)
    cases = [
        (dict(target="Not a cluster"), "not in obs"),
        (dict(target="B", genes=["MS4A1", "NOPE1"]), "not among the attacked genes"),
        (dict(target="B", modification="perc200"), "perc0–perc100"),
        (dict(target="B", search="binary"), "exhaustive"),
        (dict(target="B", cluster_key="louvain"), "not found in adata.obs"),
    ]
    for kw, match in cases:
        args = dict(cluster_key="cell_type", classifier=mc, progress=False) | kw
        with pytest.raises(ScadvInputError, match=match):
            scadv.tl.single_gene(a, **args)
    ok = a.obs["cell_type"].notna().to_numpy()
    svm = LinearSVC().fit(prepared_x(a)[ok][:, :50], a.obs["cell_type"][ok].astype(str))
    with pytest.raises(ScadvInputError, match="predict_proba"):
        scadv.tl.single_gene(a, cluster_key="cell_type", target="B", classifier=svm)
    with pytest.raises(ScadvInputError, match="no scadv classifier"):
        scadv.tl.single_gene(a, cluster_key="cell_type", target="B")  # nothing trained
    assert_unchanged(a, before)
    assert "scadv" in a.uns
    assert "single_gene" not in a.uns["scadv"]


def test_scan_block_by_block_is_the_whole_cluster_scan(small_trained, monkeypatch):
    """An atlas's cluster is scanned CELL_BLOCK cells at a time: label counts, probability sums
    and changed cells add up, so the table is the one of the whole cluster at once."""
    from scadv.tl._genes import _single_gene as SG

    a = small_trained
    kw = dict(cluster_key="cell_type", target=["type0", "type1"], progress=False,
              modification=["perc1", "perc99", "decile+2", "negative_aberrant"])
    scadv.tl.single_gene(a, key_added="whole", **kw)
    n = int((a.obs["cell_type"] == "type0").sum())
    monkeypatch.setattr(SG, "CELL_BLOCK", max(n // 3, 1))
    scadv.tl.single_gene(a, key_added="blocks", **kw)
    whole = a.uns["scadv"]["whole"]["table"]
    blocks = a.uns["scadv"]["blocks"]["table"]
    pd.testing.assert_frame_equal(whole.drop(columns=["new_score", "original_score"]),
                                  blocks.drop(columns=["new_score", "original_score"]))
    np.testing.assert_allclose(blocks["new_score"], whole["new_score"], atol=1e-9)
    assert whole["flipped"].any() and (whole["n_cells_changed"] > 0).any()
    pd.testing.assert_frame_equal(a.uns["scadv"]["whole"]["summary"],
                                  a.uns["scadv"]["blocks"]["summary"], atol=1e-9)
