"""scadv.tl.benign_perturb: counts rebuilt exactly, re-processed with the stored recipe."""

from __future__ import annotations

import numpy as np
import pytest

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from scadv.tl._detect._benign import _full_counts
from tests.conftest import assert_unchanged, snapshot


def test_counts_are_rebuilt_exactly(small_trained):
    a = small_trained
    mask = np.ones(a.n_obs, dtype=bool)
    counts, genes, _ = _full_counts(a, a.uns["scadv"]["prepare"], mask)
    pos = [list(genes).index(g) for g in a.var_names]
    np.testing.assert_array_equal(counts[:, pos].toarray(), a.layers["counts"].toarray())
    np.testing.assert_allclose(np.asarray(counts.sum(axis=1)).ravel(),
                               a.obs["scadv_library_size"], rtol=1e-6)


def test_perturbations(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, cells="all", seed=3)
    rec = a.uns["scadv"]["benign"]
    assert list(rec["kinds"]) == ["downsample", "dropout", "noise"]
    zero = np.asarray(a.uns["scadv"]["prepare"]["zero_level"])
    clean_zero = np.isclose(a.X, zero, atol=1e-5)
    for kind in rec["kinds"]:
        layer = a.layers[f"scadv_benign_{kind}"]
        assert layer.shape == a.shape and np.isfinite(layer).all()
        now_zero = np.isclose(layer, zero, atol=1e-5)
        assert (now_zero | ~clean_zero).all(), kind  # nothing unexpressed becomes expressed
        assert not np.allclose(layer, a.X), kind
        assert a.obs[f"scadv_benign_{kind}_pred"].notna().all()
    # dropout and down-sampling lose expressed genes, noise keeps them all
    for kind, fewer in (("downsample", True), ("dropout", True), ("noise", False)):
        n_zero = np.isclose(a.layers[f"scadv_benign_{kind}"], zero, atol=1e-5).sum()
        assert (n_zero > clean_zero.sum()) == fewer, kind
    # down-sampling re-processed by hand gives the same layer
    counts, genes, _ = _full_counts(a, a.uns["scadv"]["prepare"], np.ones(a.n_obs, bool))
    rng = np.random.default_rng(3)
    counts.data = rng.binomial(counts.data.astype(np.int64), 0.5).astype(np.float32)
    counts.eliminate_zeros()
    recipe = a.uns["scadv"]["prepare"]
    ln = R.lognormalize(counts, target_sum=float(recipe["target_sum"]))
    aligned, _ = R.align(ln, genes, recipe["genes"], missing_genes="error", what="x")
    np.testing.assert_allclose(a.layers["scadv_benign_downsample"],
                               R.lognorm_to_model(aligned, recipe), atol=1e-6)
    assert 0 <= rec["pred_changed"][0] <= 1


def test_default_cells_are_the_test_split(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, kinds=("noise",), key_added="n")
    test = (a.obs["scadv_split"] == "test").to_numpy()
    np.testing.assert_array_equal(a.obs["scadv_n_noise_pred"].notna().to_numpy(), test)
    np.testing.assert_array_equal(a.layers["scadv_n_noise"][~test], a.X[~test])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kinds": ("blur",)}, "kinds must be"), ({"downsample": 1.0}, "downsample"),
     ({"dropout": 0.0}, "dropout"), ({"noise": -0.1}, "noise must be positive")],
)
def test_bad_options(small_trained, kwargs, message):
    before = snapshot(small_trained)
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.benign_perturb(small_trained, **kwargs)
    assert_unchanged(small_trained, before)


def test_needs_counts(small_trained):
    a = small_trained
    del a.obs["scadv_library_size"]
    with pytest.raises(ScadvInputError, match="counts of all genes"):
        scadv.tl.benign_perturb(a)
