"""scadv.tl.compare_models / scadv.pl.compare_models on PBMC3k: the same cells and budgets for
white-box and black-box models, numbers that match the single tools, intervals, h5ad."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import scadv
from scadv._errors import ScadvInputError
from scadv.tl._models import _compare as CM

N_GENES = 200


@pytest.fixture(scope="module")
def zoo(_pbmc3k_raw: ad.AnnData) -> SimpleNamespace:
    """Every 4th labelled PBMC3k cell, raw counts in X and log-normalised values in a layer;
    scadv's MLP (short training), a CellTypist-style model and a random forest."""
    a = _pbmc3k_raw[_pbmc3k_raw.obs["cell_type"].notna()][::4].copy()
    scadv.pp.prepare(a, n_top_genes=N_GENES)
    scadv.tl.train_classifier(a, "cell_type", max_epochs=15, progress=False)
    ln = a.copy()
    sc.pp.normalize_total(ln, target_sum=1e4)
    sc.pp.log1p(ln)
    a.layers["lognorm"] = ln.X
    genes = np.asarray(a.uns["scadv"]["prepare"]["genes"]).astype(str)
    x = ln[:, genes].X.toarray()
    y = a.obs["cell_type"].astype(str).to_numpy()
    train = (a.obs["scadv_split"] == "train").to_numpy()
    scaler = StandardScaler().fit(x[train])
    z = np.minimum(scaler.transform(x[train]), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=200).fit(z, y[train])
    clf.features = genes
    ct = scadv.models.from_celltypist(SimpleNamespace(classifier=clf, scaler=scaler,
                                                      description={}))
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(
        pd.DataFrame(x[train], columns=genes), y[train])
    return SimpleNamespace(adata=a, genes=genes, ct=ct, forest=forest)


def test_wilson_interval_known_values():
    low, high = CM.wilson(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(low, [0.0, 0.236593, 0.722467], atol=1e-6)
    np.testing.assert_allclose(high, [0.277533, 0.763407, 1.0], atol=1e-6)
    assert np.isnan(CM.wilson(0, 0)[0])


def test_compare_models_table_matches_the_single_tools(zoo, tmp_path):
    a = zoo.adata.copy()
    test = (a.obs["scadv_split"] == "test").to_numpy()
    models = {"scadv": "classifier", "celltypist": zoo.ct, "forest": zoo.forest}
    t = scadv.tl.compare_models(a, models, cells=test, eps=(0.05, 0.2), layer="lognorm",
                                genes=list(zoo.genes[:15]), n_boot=50, progress=False)
    assert list(t.columns) == list(CM.COLUMNS)
    assert list(dict.fromkeys(t["model"])) == ["scadv", "celltypist", "forest"]
    overall = t[t["group"] == "all"].set_index(["model", "metric", "eps"])
    n_test = int(test.sum())
    # clean accuracy: each model's own predictions on the same cells
    y = a.obs["cell_type"].astype(str).to_numpy()[test]
    ct_pred = zoo.ct.predict(a[test])
    acc = overall.loc[("celltypist", "clean_accuracy", np.nan)]
    assert acc["n"] == n_test
    assert acc["value"] == pytest.approx((ct_pred == y).mean())
    rf_pred = zoo.forest.predict(pd.DataFrame(a[test][:, zoo.genes].layers["lognorm"].toarray(),
                                              columns=zoo.genes))
    assert overall.loc[("forest", "clean_accuracy", np.nan)]["value"] == pytest.approx(
        (rf_pred == y).mean())
    # flip rates: exactly what scadv.tl.pgd finds on the same cells and budgets
    scadv.tl.pgd(a, model="classifier", eps=(0.05, 0.2), cells=test, progress=False)
    scadv.tl.pgd(a, model=zoo.ct, eps=(0.05, 0.2), cells=test, progress=False)
    for name, run in (("scadv", "pgd"), ("celltypist", "pgd_celltypist")):
        mine = [overall.loc[(name, "flip_rate", e)]["value"] for e in (0.05, 0.2)]
        np.testing.assert_allclose(mine, a.uns["scadv"][run]["flip_rate"], atol=1e-12)
        assert mine[0] < mine[1]
    # black-box: no flip rate, said so; single-gene flips for every model
    fr = t[(t["model"] == "forest") & (t["metric"] == "flip_rate")]
    assert fr["value"].isna().all()
    assert (fr["note"] == "black-box: n/a").all()
    assert set(t.loc[t["metric"] == "single_gene_flip_fraction", "model"]) == set(models)
    sg = a.uns["scadv"]["compare_models_forest_single_gene"]["summary"]
    row = overall.loc[("forest", "single_gene_flip_fraction", np.nan)]
    assert row["k"] == sg["n_flip_genes"].sum()
    assert row["n"] == 9 * 2 * 15  # clusters × modifications × genes
    # per-class rows and intervals that contain the value
    ok = t["value"].notna()
    assert ((t.loc[ok, "ci_low"] <= t.loc[ok, "value"] + 1e-12)
            & (t.loc[ok, "value"] <= t.loc[ok, "ci_high"] + 1e-12)).all()
    per_class = t[(t["metric"] == "flip_rate") & (t["model"] == "scadv") & (t["eps"] == 0.2)
                  & (t["group"] != "all")]
    assert per_class["n"].sum() == n_test
    # the table survives write_h5ad / read_h5ad, and the plot reads it back
    path = tmp_path / "zoo.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(CM.table(back), t)
    for metric in ("flip_rate", "clean_accuracy", "single_gene_flip_fraction"):
        ax = scadv.pl.compare_models(back, metric=metric, show=False)
        assert ax.get_title()
    plt.close("all")


def test_compare_models_detector_auroc_and_checks(zoo):
    a = zoo.adata.copy()
    scadv.tl.meta_detect(a, triplet_epochs=1, detector_epochs=3, baselines=False,
                         progress=False, seed=0)
    test = (a.obs["scadv_split"] == "test").to_numpy()
    t = scadv.tl.compare_models(a, ["classifier", zoo.ct], cells=test, eps=(0.1, 0.3),
                                single_gene=False, n_boot=30, progress=False)
    auc = t[t["metric"] == "detector_auroc"]
    assert list(auc["model"]) == ["classifier", "classifier"]  # the only model with one
    assert ((auc["value"] > 0.5) & (auc["value"] <= 1)).all()
    assert (auc["ci_low"] <= auc["value"]).all()
    assert (auc["value"] <= auc["ci_high"]).all()
    assert (auc["note"] == "detector 'meta'").all()
    ax = scadv.pl.compare_models(a, metric="detector_auroc", show=False)
    assert "AUROC" in ax.get_xlabel()
    plt.close("all")
    with pytest.raises(ScadvInputError, match="same cells"):
        scadv.tl.compare_models(a, ["classifier"], cells="test", progress=False)
    with pytest.raises(ScadvInputError, match="empty"):
        scadv.tl.compare_models(a, [], progress=False)
    with pytest.raises(ScadvInputError, match="from_torch"):
        scadv.tl.compare_models(a, [torch.nn.Linear(N_GENES, 9)], progress=False)


def test_compare_models_minimal_umis(zoo):
    """With umis=, stored white-box models are attacked on the raw counts (count_attack): the
    fraction flipped within each UMI budget matches count_attack's own minimal UMIs; black-box
    models say n/a."""
    a = zoo.adata.copy()
    test = (a.obs["scadv_split"] == "test").to_numpy()
    cells = test & (np.cumsum(test) <= 60)
    t = scadv.tl.compare_models(a, {"scadv": "classifier", "forest": zoo.forest},
                                cells=cells, eps=(0.1,), umis=(2, 10), single_gene=False,
                                layer="lognorm", n_boot=20, progress=False)
    rate = t[(t["metric"] == "umi_flip_rate") & (t["group"] == "all")]
    mine = rate[rate["model"] == "scadv"].set_index("eps")["value"]
    found = a.obs["scadv_compare_models_scadv_counts_min_umis"].to_numpy()[cells]
    assert mine[2.0] == pytest.approx((found <= 2).mean())
    assert mine[10.0] == pytest.approx((found <= 10).mean())
    assert mine[2.0] <= mine[10.0]
    assert rate.loc[rate["model"] == "forest", "note"].tolist() == ["black-box: n/a"]
    med = t[(t["metric"] == "median_min_umis") & (t["group"] == "all")]
    assert med["value"].iloc[0] == np.median(found)
