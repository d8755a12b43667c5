"""scadv.get: the model input and stored perturbations as arrays."""

from __future__ import annotations

import numpy as np
import pytest

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError


def test_model_input_of_selected_cells(small_trained):
    a = small_trained
    full = scadv.get.model_input(a)
    assert full.shape == (a.n_obs, len(a.uns["scadv"]["classifier"]["genes"]))
    np.testing.assert_array_equal(full, R.source(a, a.uns["scadv"]["prepare"]).dense())
    names = a.obs_names[[3, 1]]
    np.testing.assert_array_equal(scadv.get.model_input(a, cells=names), full[[3, 1]])
    mask = np.zeros(a.n_obs, bool)
    mask[[1, 3]] = True
    np.testing.assert_array_equal(scadv.get.model_input(a, cells=mask), full[[1, 3]])
    with pytest.raises(ScadvInputError, match="not in adata.obs_names"):
        scadv.get.model_input(a, cells=["nope"])
    with pytest.raises(ScadvInputError, match="no scadv classifier"):
        scadv.get.model_input(a, model="other")


def test_perturbed_cells_default_to_the_changed_ones(small_trained):
    a = small_trained
    scadv.tl.pgd(a, eps=(0.2,), progress=False)
    name = "scadv_pgd_eps0.2"
    adv = scadv.get.perturbed(a, name)
    test = (a.obs["scadv_split"] == "test").to_numpy()
    assert adv.shape == (test.sum(), 100)
    clean = scadv.get.model_input(a, cells=test)
    moved = np.abs(adv - clean).max(axis=1)
    assert (moved <= 0.2 + 1e-5).all() and (moved > 0).all()
    with pytest.raises(ScadvInputError, match="space must be"):
        scadv.get.perturbed(a, name, space="genes")
