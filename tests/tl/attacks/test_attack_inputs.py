"""Attack inputs that used to be silently wrong or crash: budgets written alike, cells named
twice, non-finite options."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv import _store as ST
from scadv._errors import ScadvInputError

from ...conftest import assert_unchanged, snapshot


def test_budgets_written_alike_are_refused(small_trained: ad.AnnData) -> None:
    """``eps=(0.1, 0.1000001)`` used to write both budgets into one layer."""
    a = small_trained
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="written alike"):
        scadv.tl.pgd(a, eps=(0.1, 0.1000001), cells="all", progress=False)
    with pytest.raises(ScadvInputError, match="written alike"):
        scadv.tl.fgsm(a, eps=[0.3, 0.30000001], cells="all", progress=False)
    assert_unchanged(a, before)
    scadv.tl.pgd(a, eps=(0.1, 0.10001), cells="all", steps=1, progress=False)
    assert {"scadv_pgd_eps0.1", "scadv_pgd_eps0.10001"} <= set(ST.names(a))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": float("nan")}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"),
    ({"eps": float("inf")}, "eps must be a finite number"),
    ({"eps": "0.1"}, "eps must be a number"),
    ({"eps": True}, "eps must be a number"),
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"batch_size": 0}, "batch_size must be ≥ 1"),
    ({"clip": (1.0, float("nan"))}, "clip"),
    ({"seed": -1}, "seed must be ≥ 0"),
    ({"key_added": "my/run"}, "contains '/'"),
])
def test_non_finite_and_mistyped_options_are_refused(small_trained: ad.AnnData, kwargs: dict,
                                                      message: str) -> None:
    a = small_trained
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.pgd(a, **{"eps": 0.1, "cells": "all", "progress": False, **kwargs})
    assert_unchanged(a, before)


def test_cells_named_twice_in_the_data_are_an_error_not_a_crash(
        small_trained: ad.AnnData) -> None:
    a = small_trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.obs_names = np.r_[a.obs_names[:-1], a.obs_names[:1]]  # the first name twice
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="repeated cell names"):
        scadv.tl.pgd(a, eps=0.1, cells=[a.obs_names[1]], progress=False)
    assert_unchanged(a, before)
    mask = np.zeros(a.n_obs, dtype=bool)
    mask[:5] = True
    scadv.tl.pgd(a, eps=0.1, cells=mask, steps=1, progress=False)  # a mask needs no names
    assert int(a.obs["scadv_pgd_eps0.1_pred"].notna().sum()) == 5
