"""scadv.tl.predict: a stored model rebuilds and predicts identically, on any input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv import _model as M
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, make_counts, snapshot


def test_h5ad_round_trip_predicts_identically(pbmc3k_trained, tmp_path):
    path = tmp_path / "trained.h5ad"
    pbmc3k_trained.write_h5ad(path)
    back = ad.read_h5ad(path)
    scadv.tl.predict(back, key_added="reloaded")
    np.testing.assert_array_equal(back.obs["scadv_reloaded_pred"].astype(str),
                                  pbmc3k_trained.obs["scadv_pred"].astype(str))
    np.testing.assert_array_equal(back.obsm["scadv_reloaded_proba"],
                                  pbmc3k_trained.obsm["scadv_proba"])
    np.testing.assert_array_equal(back.obsm["X_scadv_reloaded_emb"],
                                  pbmc3k_trained.obsm["X_scadv_emb"])


def test_colleague_applies_model_to_raw_counts(pbmc3k_trained, pbmc3k_raw, tmp_path):
    path = tmp_path / "model.h5ad"
    pbmc3k_trained.write_h5ad(path)
    source = ad.read_h5ad(path)
    new = pbmc3k_raw  # the same cells, as raw counts of all 32738 genes, never prepared
    x_before = new.X.copy()
    scadv.tl.predict(new, source=source)
    assert (new.X != x_before).nnz == 0  # X untouched
    np.testing.assert_array_equal(new.obs["scadv_pred"].astype(str),
                                  pbmc3k_trained.obs["scadv_pred"].astype(str))
    np.testing.assert_allclose(new.obsm["scadv_proba"], pbmc3k_trained.obsm["scadv_proba"],
                               atol=1e-5)
    assert new.uns["scadv"]["classifier"]["kind"] == M.MODEL_KIND  # copied for later calls


def test_predict_from_a_record_and_new_cells(small_trained):
    other = make_counts(seed=5)
    scadv.tl.predict(other, source=small_trained.uns["scadv"]["classifier"])
    acc = (other.obs["scadv_pred"].astype(str) == other.obs["cell_type"].astype(str)).mean()
    assert acc > 0.9  # the marker blocks are easy; a broken transform would fail this


def test_gene_mismatch(small_trained):
    other = make_counts(seed=5)
    other = other[:, 20:].copy()  # drops marker genes of type0 / type1
    before = snapshot(other)
    with pytest.raises(ScadvInputError, match="missing from"):
        scadv.tl.predict(other, source=small_trained)
    assert_unchanged(other, before)
    scadv.tl.predict(other, source=small_trained, missing_genes="mean")
    assert other.obs["scadv_pred"].notna().all()


def test_missing_model_and_foreign_uns(counts):
    with pytest.raises(ScadvInputError, match="no scadv classifier 'classifier'"):
        scadv.tl.predict(counts)
    with pytest.raises(ScadvInputError, match="not a scadv classifier record"):
        scadv.tl.predict(counts, source={"kind": "pickle", "weights": {}})


def test_tampered_weights_are_refused(small_trained):
    record = dict(small_trained.uns["scadv"]["classifier"])
    weights = dict(record["weights"])
    weights["head.weight"] = weights["head.weight"][:, :3]
    record["weights"] = weights
    with pytest.raises(ScadvInputError, match="head.weight"):
        scadv.tl.predict(small_trained.copy(), source=record)
    weights = dict(small_trained.uns["scadv"]["classifier"]["weights"])
    weights["evil"] = np.zeros(3, dtype=np.float32)
    record["weights"] = weights
    with pytest.raises(ScadvInputError, match="unexpected"):
        scadv.tl.predict(small_trained.copy(), source=record)
