"""scadv.tl.adaptive_pgd: an attacker who follows the detector lowers its scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scadv
from scadv._errors import ScadvInputError
from scadv.tl._detect import _common as MC
from tests.conftest import model_x, perturbed


def test_adaptive_attacker_lowers_detector_scores(small_meta):
    a = small_meta
    common = {"eps": 0.6, "cells": "all", "progress": False, "steps": 10}
    scadv.tl.adaptive_pgd(a, lam=0.0, key_added="plain", **common)
    scadv.tl.adaptive_pgd(a, lam=10.0, key_added="evade", **common)
    rec = a.uns["scadv"]["evade"]
    assert rec["method"] == "adaptive_pgd" and rec["lam"] == 10.0 and rec["detector"] == "meta"
    assert np.abs(perturbed(a, "scadv_evade_eps0.6") - model_x(a)).max() <= 0.6 + 1e-5
    scadv.tl.meta_evaluate(a, progress=False)
    meta = a.uns["scadv"]["meta"]
    assert {"scadv_plain_eps0.6", "scadv_evade_eps0.6"} <= set(meta["evaluation"])
    plain = a.obs["scadv_plain_eps0.6_meta_score"].to_numpy()
    evade = a.obs["scadv_evade_eps0.6_meta_score"].to_numpy()
    # the unconstrained attack leaves the zero level: the realism gate still catches it
    assert (plain == 1).all() and (evade == 1).all()
    # ... but the meta-detector's own probability is what the attacker lowered
    det = MC.load(a, "meta", source=None, device=torch.device("cpu"))
    p_plain = det.features(perturbed(a, "scadv_plain_eps0.6")).meta
    p_evade = det.features(perturbed(a, "scadv_evade_eps0.6")).meta
    assert p_evade.mean() < p_plain.mean() - 0.1


def test_realistic_adaptive_attacker_respects_the_gate(small_meta):
    a = small_meta
    scadv.tl.adaptive_pgd(a, lam=1.0, eps=1.0, keep_zeros=True, clip="observed",
                          cells="all", progress=False, steps=5)
    layer = perturbed(a, "scadv_adaptive_lam1_eps1")
    gate = a.uns["scadv"]["meta"]["gate"]
    zero, gap = np.asarray(gate["zero_level"]), np.asarray(gate["gap"])
    x = model_x(a)
    expressed = ~np.isclose(x, zero, atol=1e-5)
    assert np.isclose(layer[~expressed], np.broadcast_to(zero, x.shape)[~expressed]).all()
    assert (layer[expressed] >= np.broadcast_to(zero + gap, x.shape)[expressed] - 1e-5).all()


def test_bad_input(small_meta, small_trained):
    with pytest.raises(ScadvInputError, match="lam must be"):
        scadv.tl.adaptive_pgd(small_meta, lam=-1.0, progress=False)
    with pytest.raises(ScadvInputError, match="kappa must be"):
        scadv.tl.adaptive_pgd(small_meta, kappa=0.0, progress=False)
    with pytest.raises(ScadvInputError, match="no scadv meta-detector"):
        scadv.tl.adaptive_pgd(small_trained, progress=False)
