"""scadv.pp.transform: new cells transformed exactly like the reference."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

import scadv
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, make_counts, snapshot


@pytest.fixture
def reference(counts):
    ref = counts.copy()
    scadv.pp.prepare(ref, n_top_genes=100, subset=True)  # X holds the model input
    return ref


def test_same_cells_give_the_same_matrix(counts, reference):
    new = counts.copy()
    assert scadv.pp.transform(new, reference) is None
    assert list(new.var_names) == list(reference.var_names)
    np.testing.assert_allclose(new.X, reference.X, atol=1e-5)
    np.testing.assert_array_equal(new.layers["counts"].toarray(),
                                  reference.layers["counts"].toarray())
    np.testing.assert_allclose(new.obs["scadv_library_size"], reference.obs["scadv_library_size"])
    assert new.raw is not None and new.raw.n_vars == counts.n_vars


def test_genes_are_matched_by_name_not_position(counts, reference):
    order = np.random.default_rng(1).permutation(counts.n_vars)
    shuffled = counts[:, order].copy()
    out = scadv.pp.transform(shuffled, reference, copy=True)
    np.testing.assert_allclose(out.X, reference.X, atol=1e-5)


def test_new_cells_use_reference_statistics(reference):
    other = make_counts(seed=7)
    out = scadv.pp.transform(other, reference, copy=True)
    rec = reference.uns["scadv"]["prepare"]
    lognorm = other.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    expected = (lognorm[:, list(rec["genes"])].X.toarray() - rec["mean"]) / rec["std"]
    np.testing.assert_allclose(out.X, np.clip(expected, -10, 10), atol=1e-4)


def test_lognorm_new_data(counts, reference):
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    out = scadv.pp.transform(lognorm, reference, copy=True)
    np.testing.assert_allclose(out.X, reference.X, atol=1e-4)
    assert "counts" not in out.layers


def test_missing_genes(counts, reference):
    genes = list(reference.var_names)
    partial = counts[:, [g for g in counts.var_names if g != genes[0]]].copy()
    before = snapshot(partial)
    with pytest.raises(ScadvInputError, match="1 of the model's 100 genes are missing"):
        scadv.pp.transform(partial, reference)
    assert_unchanged(partial, before)
    out = scadv.pp.transform(partial, reference, missing_genes="mean", copy=True)
    assert out.n_vars == 100
    np.testing.assert_array_equal(out.X[:, 0], 0.0)  # training mean = z-score 0
    # the other genes differ only through the slightly smaller library sizes
    assert np.abs(out.X[:, 1:] - reference.X[:, 1:]).max() < 0.1
    assert "counts" not in out.layers  # no made-up counts for the missing gene


def test_reference_holding_only_a_classifier(small_trained, counts):
    record = small_trained.uns["scadv"]["classifier"]
    holder = counts[:5].copy()
    holder.uns["scadv"] = {"classifier": record}
    out = scadv.pp.transform(counts, holder, copy=True)
    np.testing.assert_allclose(out.X, scadv.get.model_input(small_trained), atol=1e-5)


def test_bad_reference(counts):
    with pytest.raises(ScadvInputError, match="no scadv recipe"):
        scadv.pp.transform(counts, counts.copy())
    with pytest.raises(ScadvInputError, match="reference must be"):
        scadv.pp.transform(counts, {"genes": []})


def test_transform_is_idempotent(counts, reference):
    new = counts.copy()
    scadv.pp.transform(new, reference)
    before = snapshot(new)
    scadv.pp.transform(new, reference)
    assert_unchanged(new, before)
