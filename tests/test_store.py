"""Compact perturbations: only the changed cells are stored, and rebuilt bit for bit."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scadv
from scadv import _store as ST
from scadv._errors import ScadvInputError


def _rebuilt(a, name, idx):
    return scadv.get.perturbed(a, name, cells=idx)


def test_dense_changes_are_stored_as_rows_and_rebuilt_exactly(small_trained, tmp_path):
    a = small_trained
    scadv.tl.pgd(a, eps=(0.3,), cells="all", progress=False)
    name = "scadv_pgd_eps0.3"
    ent = a.uns["scadv"]["perturbations"][name]
    assert ent["format"] == "rows" and name not in a.obsm  # unconstrained PGD moves every gene
    assert np.asarray(ent["delta"]).shape == (a.n_obs, 100)
    x = _rebuilt(a, name, np.arange(a.n_obs))
    # what is stored is what was evaluated: the stored prediction comes back
    net = scadv._model.from_record(a.uns["scadv"]["classifier"])
    _, logits = scadv._model.infer(net, x, device=scadv._device.resolve("cpu"))
    classes = list(a.uns["scadv"]["classifier"]["classes"])
    pred = np.asarray(classes)[logits.argmax(axis=1)]
    np.testing.assert_array_equal(pred, a.obs[f"{name}_pred"].astype(str).to_numpy())
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    np.testing.assert_array_equal(_rebuilt(b, name, np.arange(b.n_obs)), x)


def test_sparse_changes_are_stored_in_obsm_and_follow_subsetting(small_trained, tmp_path):
    a = small_trained
    scadv.tl.pgd(a, eps=(1.0,), cells="all", keep_zeros=True, clip="observed",
                 key_added="real", progress=False)
    name = "scadv_real_eps1"
    assert a.uns["scadv"]["perturbations"][name]["format"] == "obsm"
    delta = a.obsm[name]
    assert sparse.issparse(delta) and delta.shape == (a.n_obs, 100)
    assert delta.nnz < 0.5 * a.n_obs * 100
    full = _rebuilt(a, name, np.arange(a.n_obs))
    sub = a[::2].copy()
    np.testing.assert_array_equal(_rebuilt(sub, name, np.arange(sub.n_obs)), full[::2])
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    np.testing.assert_array_equal(_rebuilt(ad.read_h5ad(path), name, np.arange(a.n_obs)), full)


def test_only_attacked_cells_are_stored(small_trained):
    a = small_trained
    scadv.tl.pgd(a, eps=(0.3,), progress=False)  # test split
    test = (a.obs["scadv_split"] == "test").to_numpy()
    ent = a.uns["scadv"]["perturbations"]["scadv_pgd_eps0.3"]
    assert len(ent["cells"]) == test.sum()
    np.testing.assert_array_equal(ST.changed(a, "scadv_pgd_eps0.3"), test)
    clean = scadv.get.model_input(a)
    np.testing.assert_array_equal(_rebuilt(a, "scadv_pgd_eps0.3", np.flatnonzero(~test)),
                                  clean[~test])
    table = scadv.get.perturbations(a)
    assert table.loc["scadv_pgd_eps0.3", "n_cells"] == test.sum()
    assert table.loc["scadv_pgd_eps0.3", "run"] == "pgd"


def test_dense_layers_of_scadv_0_1_are_still_read(counts):
    a = counts
    scadv.pp.prepare(a, n_top_genes=100, subset=True)  # X holds the model input, as in 0.1
    scadv.tl.train_classifier(a, "cell_type", max_epochs=3, progress=False)
    legacy = np.asarray(a.X) + 0.25
    a.layers["scadv_old_eps0.25"] = legacy
    assert ST.exists(a, "scadv_old_eps0.25")
    np.testing.assert_array_equal(
        scadv.get.perturbed(a, "scadv_old_eps0.25", cells=a.obs_names), legacy)
    with pytest.raises(ScadvInputError, match="no perturbation"):
        scadv.get.perturbed(a, "missing")


def test_rebuilding_a_perturbation_of_another_model_is_refused(small_trained):
    a = small_trained
    scadv.tl.pgd(a, eps=(0.3,), progress=False)
    ent = a.uns["scadv"]["perturbations"]["scadv_pgd_eps0.3"]
    ent["delta"] = np.asarray(ent["delta"])[:, :10]
    with pytest.raises(ScadvInputError, match="another model"):
        scadv.get.perturbed(a, "scadv_pgd_eps0.3")
