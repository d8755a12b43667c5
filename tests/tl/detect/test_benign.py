"""scadv.tl.benign_perturb: counts rebuilt exactly, re-processed with the stored recipe."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from scadv.tl._detect._benign import _count_reader
from tests.conftest import assert_unchanged, model_x, perturbed, snapshot


def test_counts_are_rebuilt_exactly_for_data_prepared_in_place(counts):
    """Data prepared with subset=True keeps only the model genes' counts: the counts of all
    genes are rebuilt from .raw and the library sizes."""
    a = counts
    scadv.pp.prepare(a, n_top_genes=100, subset=True)
    src = R.source(a, a.uns["scadv"]["prepare"])
    read = _count_reader(a, src, a.uns["scadv"]["prepare"])
    rebuilt, genes, lib = read(np.arange(a.n_obs))
    pos = [list(genes).index(g) for g in a.var_names]
    np.testing.assert_array_equal(rebuilt[:, pos].toarray(), a.layers["counts"].toarray())
    np.testing.assert_allclose(lib, a.obs["scadv_library_size"], rtol=1e-6)


def test_perturbations(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, cells="all", seed=3)
    rec = a.uns["scadv"]["benign"]
    assert list(rec["kinds"]) == ["downsample", "dropout", "noise"]
    zero = np.asarray(a.uns["scadv"]["prepare"]["zero_level"])
    x = scadv.get.model_input(a)
    clean_zero = np.isclose(x, zero, atol=1e-5)
    layers = {}
    for kind in rec["kinds"]:
        layer = layers[kind] = scadv.get.perturbed(a, f"scadv_benign_{kind}",
                                                    cells=a.obs_names)
        assert layer.shape == x.shape and np.isfinite(layer).all()
        now_zero = np.isclose(layer, zero, atol=1e-5)
        assert (now_zero | ~clean_zero).all(), kind  # nothing unexpressed becomes expressed
        assert not np.allclose(layer, x), kind
        assert a.obs[f"scadv_benign_{kind}_pred"].notna().all()
    # dropout and down-sampling lose expressed genes, noise keeps them all
    for kind, fewer in (("downsample", True), ("dropout", True), ("noise", False)):
        n_zero = np.isclose(layers[kind], zero, atol=1e-5).sum()
        assert (n_zero > clean_zero.sum()) == fewer, kind
    # down-sampling re-processed by hand (from the raw counts in X) gives the same cells
    raw = sparse.csr_matrix(a.X, dtype=np.float32, copy=True)
    rng = np.random.default_rng(3)
    raw.data = rng.binomial(raw.data.astype(np.int64), 0.5).astype(np.float32)
    raw.eliminate_zeros()
    recipe = a.uns["scadv"]["prepare"]
    ln = R.lognormalize(raw, target_sum=float(recipe["target_sum"]))
    aligned, _ = R.align(ln, a.var_names, recipe["genes"], missing_genes="error", what="x")
    np.testing.assert_allclose(layers["downsample"], R.lognorm_to_model(aligned, recipe),
                               atol=1e-5)
    assert 0 <= rec["pred_changed"][0] <= 1


def test_default_cells_are_the_test_split(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, kinds=("noise",), key_added="n")
    test = (a.obs["scadv_split"] == "test").to_numpy()
    np.testing.assert_array_equal(a.obs["scadv_n_noise_pred"].notna().to_numpy(), test)
    np.testing.assert_array_equal(perturbed(a, "scadv_n_noise")[~test], model_x(a)[~test])


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
    a.X = R.lognormalize(a.X, target_sum=1e4)  # log-normalised data only: no counts anywhere
    with pytest.raises(ScadvInputError, match="raw counts of all genes"):
        scadv.tl.benign_perturb(a)
