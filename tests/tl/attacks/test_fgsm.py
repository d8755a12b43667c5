"""scadv.tl.fgsm: the one-step attack."""

from __future__ import annotations

import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError
from tests.conftest import model_x, perturbed


def test_fgsm_is_one_full_step(pbmc3k_trained):
    a = pbmc3k_trained
    scadv.tl.fgsm(a, progress=False)
    rec = a.uns["scadv"]["fgsm"]
    assert rec["method"] == "fgsm" and int(rec["steps"]) == 1
    attacked = a.obs["scadv_fgsm_eps0.1_pred"].notna().to_numpy()
    delta = perturbed(a, "scadv_fgsm_eps0.1")[attacked] - model_x(a)[attacked]
    moved = delta[delta != 0]
    np.testing.assert_allclose(np.abs(moved), 0.1, atol=1e-5)  # every moved gene moves by ε
    # one step is weaker than ten, but not by much on this near-linear model
    flips = np.asarray(rec["flip_rate"])
    pgd = np.asarray(a.uns["scadv"]["pgd"]["flip_rate"])
    assert np.all(flips <= pgd + 1e-9) and np.all(flips > 0.5 * pgd)


def test_fgsm_equals_one_step_pgd(small_trained):
    a = small_trained
    scadv.tl.fgsm(a, eps=0.4, loss="ce", cells="all", progress=False)
    scadv.tl.pgd(a, eps=0.4, alpha=0.4, steps=1, loss="ce", cells="all", progress=False,
                 key_added="one")
    np.testing.assert_array_equal(perturbed(a, "scadv_fgsm_eps0.4"),
                                  perturbed(a, "scadv_one_eps0.4"))


def test_fgsm_rejects_bad_budget(small_trained):
    with pytest.raises(ScadvInputError, match="eps must be positive"):
        scadv.tl.fgsm(small_trained, eps=-1, progress=False)
