"""Layers are labelled by what their run really did, and malformed run records are errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError
from scadv.tl._detect import _common as MC


def test_layers_are_labelled_by_their_runs_method(small_trained: ad.AnnData) -> None:
    a = small_trained
    scadv.tl.pgd(a, eps=0.2, cells="all", steps=1, progress=False)
    scadv.tl.pgd(a, eps=0.3, cells="all", steps=1, key_added="fgsm", progress=False)
    scadv.tl.fgsm(a, eps=0.4, cells="all", key_added="one_step", progress=False)
    scadv.tl.pgd(a, eps=0.5, norm="l2", cells="all", steps=1, key_added="l2", progress=False)
    labels = {i.layer: i.label for i in MC.find_layers(a, "classifier")}
    assert labels == {
        "scadv_pgd_eps0.2": "pgd ε=0.2",
        "scadv_fgsm_eps0.3": "pgd ε=0.3 (fgsm)",  # a PGD run stored under 'fgsm'
        "scadv_one_step_eps0.4": "fgsm ε=0.4 (one_step)",
        "scadv_l2_eps0.5": "pgd L2 ε=0.5 (l2)",
    }


@pytest.mark.parametrize(("entry", "value", "message"), [
    ("eps", np.array(["a", "b"]), "'eps' must hold numbers"),
    ("eps", np.array([0.2, 0.3, 0.4]), "'eps' has 3 entries"),
    ("layers", np.array([1, 2]), "'layers' must hold strings"),
    ("eps", np.array([0.3, np.nan]), "NaN"),
])
def test_malformed_attack_records_are_clear_errors(small_meta: ad.AnnData, entry: str,
                                                   value: object, message: str) -> None:
    a = small_meta
    a.uns["scadv"]["pgd"][entry] = value
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.meta_evaluate(a, progress=False)
