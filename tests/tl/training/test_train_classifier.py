"""scadv.tl.train_classifier: accuracy on real data, outputs, unlabelled cells, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scadv
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, make_counts, snapshot


def test_pbmc3k_accuracy_and_outputs(pbmc3k_trained):
    a = pbmc3k_trained
    rec = a.uns["scadv"]["classifier"]
    test = rec["metrics"]["test"]
    # floor of the issue: ≥ 0.92 on the 9 Seurat labels (measured 0.935 at seed 42)
    assert test["accuracy"] >= 0.92
    assert test["balanced_accuracy"] >= 0.88
    assert test["n_cells"] == (a.obs["scadv_split"] == "test").sum()
    assert list(rec["classes"]) == list(a.obs["cell_type"].cat.categories)
    assert rec["metrics"]["test"]["confusion_matrix"].shape == (9, 9)
    np.testing.assert_array_equal(rec["metrics"]["test"]["confusion_matrix"].sum(axis=1),
                                  rec["metrics"]["test"]["n_cells_per_class"])
    # per-cell outputs
    assert a.obsm["scadv_proba"].shape == (a.n_obs, 9)
    np.testing.assert_allclose(a.obsm["scadv_proba"].sum(axis=1), 1, atol=1e-5)
    assert a.obsm["X_scadv_emb"].shape == (a.n_obs, 64)
    pred = a.obs["scadv_pred"].astype(str).to_numpy()
    assert (pred == np.asarray(rec["classes"])[a.obsm["scadv_proba"].argmax(1)]).all()
    # 62 cells without label are predicted, never trained on
    unlabelled = a.obs["cell_type"].isna()
    assert unlabelled.sum() == 62
    assert (a.obs.loc[unlabelled, "scadv_split"] == "unlabelled").all()
    assert a.obs.loc[unlabelled, "scadv_pred"].notna().all()
    # a stratified split: every class in every split, about 70/10/20
    counts = pd.crosstab(a.obs["cell_type"], a.obs["scadv_split"])
    assert (counts[["train", "val", "test"]] > 0).all().all()
    assert abs((a.obs["scadv_split"] == "test").sum() / 2638 - 0.2) < 0.01
    # training stopped early at the best validation loss
    hist = rec["history"]
    assert len(hist["epoch"]) < 60
    assert int(hist["best_epoch"]) == int(np.argmin(hist["val_loss"])) + 1
    assert rec["provenance"]["seed"] == 42 and rec["provenance"]["device"] == "cpu"


def test_plain_mlp_option_and_shapes(small_trained):
    a = small_trained.copy()
    scadv.tl.train_classifier(a, "cell_type", input_rank=None, key_added="plain",
                              hidden=(32, 16), dropout=(0.2, 0.1), max_epochs=5, progress=False)
    rec = a.uns["scadv"]["plain"]
    assert int(rec["arch"]["input_rank"]) == 0
    assert rec["weights"]["body.0.weight"].shape == (32, 100)
    assert a.obsm["X_scadv_plain_emb"].shape[1] == 16
    assert "scadv_plain_split" in a.obs and "scadv_plain_pred" in a.obs


def test_same_seed_same_model_other_seed_other_model(counts):
    scadv.pp.prepare(counts, n_top_genes=100)
    runs = []
    for seed in (3, 3, 4):
        a = counts.copy()
        scadv.tl.train_classifier(a, "cell_type", seed=seed, max_epochs=8, progress=False)
        runs.append(a)
    w = [r.uns["scadv"]["classifier"]["weights"]["body.0.weight"] for r in runs]
    np.testing.assert_array_equal(w[0], w[1])
    np.testing.assert_array_equal(runs[0].obsm["scadv_proba"], runs[1].obsm["scadv_proba"])
    assert not np.array_equal(w[0], w[2])


def test_reuse_split_and_class_weights(small_trained):
    a = small_trained.copy()
    scadv.tl.train_classifier(a, "cell_type", split_key="scadv_split", key_added="other",
                              class_weight="balanced", label_smoothing=0.1, input_noise=0.1,
                              max_epochs=5, progress=False, seed=7)
    assert "scadv_other_split" not in a.obs
    assert a.uns["scadv"]["other"]["split_key"] == "scadv_split"
    test = a.obs["scadv_split"] == "test"
    assert a.uns["scadv"]["other"]["metrics"]["test"]["n_cells"] == test.sum()


def test_copy(small_trained):
    a = small_trained.copy()
    del a.uns["scadv"]["classifier"]
    before = snapshot(a)
    out = scadv.tl.train_classifier(a, "cell_type", max_epochs=3, progress=False, copy=True)
    assert isinstance(out, ad.AnnData) and "classifier" in out.uns["scadv"]
    assert_unchanged(a, before)


@pytest.fixture
def prepared(counts):
    scadv.pp.prepare(counts, n_top_genes=100)
    return counts


def _set_labels(a, values):
    a.obs["cell_type"] = pd.Categorical(values)
    return a


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (lambda a: a, {"label_key": "nope"}, "label key 'nope' not found"),
        (lambda a: _set_labels(a, ["only"] * a.n_obs), {}, "at least two"),
        (lambda a: _set_labels(a, [np.nan] * a.n_obs), {}, "all missing"),
        (lambda a: _set_labels(a, ["lonely"] + ["type0"] * (a.n_obs - 1)), {},
         "fewer than 3 labelled cells"),
        (lambda a: _set_labels(a, ["pair", "pair"] + ["type0"] * 60 + ["type1"] * (a.n_obs - 62)),
         {}, r"'pair': 2"),
        (lambda a: a, {"dropout": (0.5,)}, "one rate in"),
        (lambda a: a, {"test_size": 0.7, "val_size": 0.4}, "sum below 1"),
        (lambda a: a, {"class_weight": "inverse"}, "class_weight"),
        (lambda a: a, {"split_key": "nope"}, "split_key 'nope' not found"),
    ],
    ids=["missing-key", "single-class", "no-labels", "one-cell-class", "two-cell-class",
         "bad-dropout", "bad-split", "bad-class-weight", "bad-split-key"],
)
def test_bad_input_is_refused_and_input_unchanged(prepared, setup, kwargs, message):
    a = setup(prepared)
    before = snapshot(a)
    kwargs = {"label_key": "cell_type", **kwargs}
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.train_classifier(a, progress=False, **kwargs)
    assert_unchanged(a, before)


def test_unprepared_nan_and_view(prepared):
    raw = make_counts()
    before_raw = snapshot(raw)
    with pytest.raises(ScadvInputError, match="run scadv.pp.prepare"):
        scadv.tl.train_classifier(raw, "cell_type", progress=False)
    assert_unchanged(raw, before_raw)
    a = prepared.copy()
    a.X[0, 0] = np.nan
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="NaN"):
        scadv.tl.train_classifier(a, "cell_type", progress=False)
    assert_unchanged(a, before)
    with pytest.raises(ScadvInputError, match="view"):
        scadv.tl.train_classifier(prepared[:60], "cell_type", progress=False)
