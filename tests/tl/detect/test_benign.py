"""scadv.tl.benign_perturb: whole counts changed like another measurement, re-processed with the
stored recipe."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from scadv.tl._detect import _gate as G
from scadv.tl._detect._benign import KINDS, _count_reader
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


def _implied(a, layer):
    """Per cell, the library size the perturbed model input implies (model genes' level sum)
    relative to the clean cell's, and whether the cell is still on the count lattice."""
    recipe = a.uns["scadv"]["prepare"]
    gate = G.gate_arrays(recipe)
    x = perturbed(a, layer)
    return G.violations(gate, x) == 0, x


def test_every_kind_is_a_cell_that_could_have_been_measured(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, cells="all", seed=3, missing=20)
    rec = a.uns["scadv"]["benign"]
    assert tuple(rec["kinds"]) == KINDS
    x = model_x(a)
    zero = np.asarray(a.uns["scadv"]["prepare"]["zero_level"])
    expressed = ~np.isclose(x, zero, atol=1e-5)
    for kind in rec["kinds"]:
        name = f"scadv_benign_{kind}"
        on_lattice, layer = _implied(a, name)
        assert on_lattice.all(), kind  # whole counts: the realism gate has nothing to flag
        assert not np.allclose(layer, x), kind
        assert a.obs[f"{name}_pred"].notna().all()
        now = ~np.isclose(layer, zero, atol=1e-5)
        if kind in ("downsample", "dropout", "noise", "batch"):
            assert (now <= expressed | (kind == "batch")).all(), kind
        if kind in ("ambient", "doublet"):
            assert now.sum() >= expressed.sum(), kind  # genes only gained
        if kind == "deeper":  # Poisson(4 × count): a gene of one count is lost with p = e^-4
            assert 0.97 * expressed.sum() <= now.sum() <= expressed.sum(), kind
    missing = perturbed(a, "scadv_benign_missing")
    gone = (missing == 0).all(axis=0) & ~(x == 0).all(axis=0)
    assert gone.sum() == rec["missing"]
    assert 0 <= rec["pred_changed"].min() and rec["pred_changed"].max() <= 1


def test_downsampling_by_hand(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, kinds=("downsample",), cells="all", seed=3)
    raw = sparse.csr_matrix(a.X, dtype=np.float32, copy=True)
    rng = np.random.default_rng(3)
    raw.data = rng.binomial(raw.data.astype(np.int64), 0.5).astype(np.float32)
    raw.eliminate_zeros()
    recipe = a.uns["scadv"]["prepare"]
    ln = R.lognormalize(raw, target_sum=float(recipe["target_sum"]))
    aligned, _ = R.align(ln, a.var_names, recipe["genes"], missing_genes="error", what="x")
    np.testing.assert_allclose(perturbed(a, "scadv_benign_downsample"),
                               R.lognorm_to_model(aligned, recipe), atol=1e-5)


def test_doublets_are_the_sum_of_two_cells_of_one_class(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, kinds=("doublet",), cells="all", seed=0)
    recipe = a.uns["scadv"]["prepare"]
    counts = sparse.csr_matrix(a.X, dtype=np.float32)
    pred = a.obs["scadv_pred"].astype(str).to_numpy()
    got = perturbed(a, "scadv_benign_doublet")
    genes = list(recipe["genes"])
    cols = [list(a.var_names).index(g) for g in genes]
    for i in range(0, a.n_obs, 17):
        partners = [j for j in range(a.n_obs) if pred[j] == pred[i]]
        match = [j for j in partners if np.allclose(R.lognorm_to_model(R.lognormalize(
            (counts[i] + counts[j])[:, cols], target_sum=1e4, library_size=np.asarray(
                (counts[i] + counts[j]).sum(axis=1)).ravel()), recipe), got[i], atol=1e-5)]
        assert match, i


def test_default_cells_are_the_test_split(small_trained):
    a = small_trained
    scadv.tl.benign_perturb(a, kinds=("noise",), key_added="n")
    test = (a.obs["scadv_split"] == "test").to_numpy()
    np.testing.assert_array_equal(a.obs["scadv_n_noise_pred"].notna().to_numpy(), test)
    np.testing.assert_array_equal(perturbed(a, "scadv_n_noise")[~test], model_x(a)[~test])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kinds": ("blur",)}, "kinds must be"), ({"downsample": 1.0}, "downsample"),
     ({"dropout": 0.0}, "dropout"), ({"noise": -0.1}, "noise must be positive"),
     ({"depth": 1.0}, "depth must be"), ({"ambient": 1.5}, "ambient"),
     ({"batch": 0.0}, "batch must be"), ({"missing": 0}, "missing must be"),
     ({"kinds": ("missing",), "missing": 5000}, "fewer than the model")],
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
