"""scadv.tl.adaptive_pgd and adaptive_count_attack: attackers who know the detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scadv
from scadv import _model as M
from scadv._errors import ScadvInputError
from scadv.tl._detect import _common as MC
from tests.conftest import assert_unchanged, model_counts, model_x, perturbed, snapshot

CPU = torch.device("cpu")


def test_adaptive_pgd_lowers_the_method_score(small_meta):
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
    # model-space edits leave the count lattice: the realism gate still catches every cell
    assert (a.obs["scadv_plain_eps0.6_meta_score"] == 1).all()
    assert (a.obs["scadv_evade_eps0.6_meta_score"] == 1).all()
    # ... but the method's own score is what the attacker lowered
    det = MC.load(a, "meta", source=None, device=CPU)
    p_plain = det.scores(perturbed(a, "scadv_plain_eps0.6")).scores["consistency"]
    p_evade = det.scores(perturbed(a, "scadv_evade_eps0.6")).scores["consistency"]
    assert p_evade.mean() < p_plain.mean() - 0.1


def test_count_attack_writes_whole_counts(small_meta):
    a = small_meta
    scadv.tl.adaptive_count_attack(a, detector=None, budget=30, cells="all", progress=False)
    rec = a.uns["scadv"]["counts"]
    name = "scadv_counts_umis30"
    assert rec["method"] == "adaptive_counts" and list(rec["layers"]) == [name]
    assert a.uns["scadv"]["perturbations"][name]["space"] == "counts"
    adv = scadv.get.perturbed(a, name, cells=np.arange(a.n_obs), space="counts")
    delta = adv.toarray() - model_counts(a)
    np.testing.assert_array_equal(delta, np.round(delta))
    np.testing.assert_array_equal(np.abs(delta).sum(axis=1), a.obs[f"{name}_umis"])
    assert np.abs(delta).max() <= 3
    # what is stored is what was evaluated: the predictions of the rebuilt cells
    net = M.from_record(a.uns["scadv"]["classifier"], CPU)
    pred = M.infer(net, perturbed(a, name), device=CPU)[1].argmax(1)
    classes = list(a.uns["scadv"]["classifier"]["classes"])
    np.testing.assert_array_equal(np.asarray(classes)[pred],
                                  a.obs[f"{name}_pred"].astype(str).to_numpy())
    flipped = (a.obs[f"{name}_flipped"] == True).to_numpy()  # noqa: E712
    assert flipped.mean() == rec["flip_rate"][0] > 0.5
    # the detector evaluates it like any attack; whole counts pass the realism gate
    scadv.tl.meta_evaluate(a, progress=False)
    ev = a.uns["scadv"]["meta"]["evaluation"][name]
    assert ev["label"] == "adaptive_counts ≤30 UMIs (counts)" and ev["input"]["flagged_all"] == 0.0


def test_an_attacker_who_queries_the_detector_evades_more(small_meta):
    a = small_meta
    common = {"budget": 40, "cells": "all", "progress": False}
    scadv.tl.adaptive_count_attack(a, detector=None, key_added="plain", **common)
    scadv.tl.adaptive_count_attack(a, lam=3.0, key_added="evade", **common)
    rec = a.uns["scadv"]["evade"]
    assert rec["detector"] == "meta" and rec["lam"] == 3.0
    scadv.tl.meta_evaluate(a, progress=False)
    ev = a.uns["scadv"]["meta"]["evaluation"]

    def evaded(name: str) -> float:
        e = ev[name]
        return e["flip_rate"] * (1 - e["detector"]["flagged"])
    assert evaded("scadv_evade_umis40") > evaded("scadv_plain_umis40")
    # its own success flag agrees with the stored detector's verdict on the stored cells
    flag = (a.obs["scadv_evade_umis40_meta_flag"] == True).to_numpy()  # noqa: E712
    flip = (a.obs["scadv_evade_umis40_flipped"] == True).to_numpy()  # noqa: E712
    assert rec["success_rate"] == pytest.approx((flip & ~flag).mean(), abs=0.05)


def test_bad_input(small_meta, small_trained):
    with pytest.raises(ScadvInputError, match="lam must be"):
        scadv.tl.adaptive_pgd(small_meta, lam=-1.0, progress=False)
    with pytest.raises(ScadvInputError, match="kappa must be"):
        scadv.tl.adaptive_pgd(small_meta, kappa=0.0, progress=False)
    with pytest.raises(ScadvInputError, match="no scadv meta-detector"):
        scadv.tl.adaptive_pgd(small_trained, progress=False)
    before = snapshot(small_meta)
    for kw, msg in (({"lam": -1.0}, "lam must be"), ({"budget": 0}, "budget"),
                    ({"kappa": -1.0}, "kappa must be")):
        with pytest.raises(ScadvInputError, match=msg):
            scadv.tl.adaptive_count_attack(small_meta, progress=False, **kw)
    assert_unchanged(small_meta, before)
    a = small_trained
    a.X = scadv._recipe.lognormalize(a.X, target_sum=1e4)
    with pytest.raises(ScadvInputError, match="edits raw counts"):
        scadv.tl.adaptive_count_attack(a, detector=None, progress=False)
