"""scadv.tl.pgd: strength on real data, budgets, realism constraints, outputs, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scadv
from scadv import _keys as K
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, model_counts, model_x, perturbed, snapshot, stored


def _delta(a: ad.AnnData, key: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    attacked = a.obs[K.attack_pred(key, eps)].notna().to_numpy()
    return perturbed(a, K.attack_layer(key, eps))[attacked] - model_x(a)[attacked], attacked


def test_pbmc3k_flip_rates(pbmc3k_trained):
    a = pbmc3k_trained
    rec = a.uns["scadv"]["pgd"]
    flips = np.asarray(rec["flip_rate"])
    # floors that catch a broken attack (measured 0.30 / 0.57 / 0.79 at seed 42)
    assert flips[0] > 0.15 and flips[1] > 0.4 and flips[2] > 0.6
    assert np.all(np.diff(flips) > 0)  # a larger budget flips more cells
    robust = np.asarray(rec["robust_accuracy"])
    assert robust[0] < rec["clean_accuracy"] and np.all(np.diff(robust) < 0)
    # per ε: the obs columns agree with the summary
    for e, f in zip(rec["eps"], flips, strict=True):
        col = a.obs[K.attack_flipped(key := "pgd", e)]
        assert col.notna().sum() == rec["n_cells"] == (a.obs["scadv_split"] == "test").sum()
        assert (col == True).sum() / rec["n_cells"] == pytest.approx(f)  # noqa: E712
        flipped_to = a.obs[K.attack_flipped_to(key, e)]
        assert ((flipped_to == K.UNCHANGED) == (col == False)).all()  # noqa: E712
        delta, _ = _delta(a, key, e)
        assert np.abs(delta).max() <= e + 1e-6
    per_class = np.asarray(rec["flip_rate_per_class"])
    assert per_class.shape == (3, 9)
    n = np.asarray(rec["n_cells_per_class"])
    np.testing.assert_allclose((per_class * n).sum(axis=1) / n.sum(), flips, atol=1e-9)


def test_unattacked_cells_keep_their_values(pbmc3k_trained):
    a = pbmc3k_trained
    layer = perturbed(a, "scadv_pgd_eps0.1")
    untouched = a.obs["scadv_pgd_eps0.1_pred"].isna().to_numpy()
    assert untouched.sum() == a.n_obs - a.uns["scadv"]["pgd"]["n_cells"]
    np.testing.assert_array_equal(layer[untouched], model_x(a)[untouched])


def test_adversarial_predictions_are_what_the_model_says(pbmc3k_trained):
    a = pbmc3k_trained
    scadv.tl.predict(a, layer="scadv_pgd_eps0.15", key_added="adv")
    attacked = a.obs["scadv_pgd_eps0.15_pred"].notna()
    np.testing.assert_array_equal(a.obs.loc[attacked, "scadv_adv_pred"].astype(str),
                                  a.obs.loc[attacked, "scadv_pgd_eps0.15_pred"].astype(str))


def test_l2_budget(small_trained):
    a = small_trained
    scadv.tl.pgd(a, eps=(1.0, 3.0), norm="l2", cells="all", progress=False, key_added="l2")
    for e in (1.0, 3.0):
        delta, _ = _delta(a, "l2", e)
        assert np.linalg.norm(delta, axis=1).max() <= e * (1 + 1e-5)
    rec = a.uns["scadv"]["l2"]
    assert rec["flip_rate"][1] >= rec["flip_rate"][0]
    assert {"scadv_l2_eps1", "scadv_l2_eps3"} <= set(stored(a))


def test_keep_zeros_and_observed_range(pbmc3k_trained):
    a = pbmc3k_trained
    scadv.tl.pgd(a, eps=0.5, keep_zeros=True, clip="observed", progress=False,
                 key_added="real")
    delta, attacked = _delta(a, "real", 0.5)
    counts = model_counts(a)[attacked]
    assert (delta[counts == 0] == 0).all()  # genes at zero stay at zero
    adv = perturbed(a, "scadv_real_eps0.5")[attacked]
    rec = a.uns["scadv"]["prepare"]
    assert (adv >= rec["zero_level"] - 1e-6).all()  # nothing drops below zero expression
    assert (adv <= rec["x_max"] + 1e-6).all() and (adv >= rec["x_min"] - 1e-6).all()
    moved = a.uns["scadv"]["real"]["genes_moved_mean"][0]
    unconstrained = a.uns["scadv"]["pgd"]["genes_moved_mean"][-1]
    assert moved < 0.2 * unconstrained  # a realistic attack touches far fewer genes
    assert a.uns["scadv"]["real"]["constraints"]["keep_zeros"]


def test_gene_mask_and_targeted(pbmc3k_trained):
    a = pbmc3k_trained
    genes = list(a.uns["scadv"]["classifier"]["genes"][:300])
    scadv.tl.pgd(a, eps=1.0, genes=genes, target="B", progress=False, key_added="tgt")
    scadv.tl.pgd(a, eps=1.0, target="B", progress=False, key_added="tgt_all")
    delta, attacked = _delta(a, "tgt", 1.0)
    assert (delta[:, 300:] == 0).all() and (delta[:, :300] != 0).any()
    some, every = a.uns["scadv"]["tgt"], a.uns["scadv"]["tgt_all"]
    assert some["target"] == "B"
    # fewer genes to move, fewer cells reach the target; all genes reach it for most cells
    assert 0 < some["target_success_rate"][0] < every["target_success_rate"][0]
    assert every["target_success_rate"][0] > 0.8
    # the reported success rate is what the per-cell predictions say
    clean = a.obs.loc[attacked, "scadv_pred"].astype(str)
    pred = a.obs.loc[attacked, "scadv_tgt_eps1_pred"].astype(str)
    eligible = clean != "B"
    assert (pred[eligible] == "B").mean() == pytest.approx(some["target_success_rate"][0])
    # with every gene free, flipped cells go to the target (a failed targeted run may still
    # leave its class on the way, so this is not true of the 300-gene run)
    pred_all = a.obs.loc[attacked, "scadv_tgt_all_eps1_pred"].astype(str)
    flipped = a.obs.loc[attacked, "scadv_tgt_all_eps1_flipped"] == True  # noqa: E712
    assert (pred_all[flipped] == "B").mean() > 0.95


def test_early_stop_is_never_weaker_and_restarts_help_or_tie(small_trained):
    a = small_trained
    common = {"eps": (0.3, 0.6), "cells": "all", "progress": False, "loss": "ce", "alpha": 0.05}
    scadv.tl.pgd(a, key_added="early", **common)
    scadv.tl.pgd(a, key_added="classic", early_stop=False, **common)
    early = a.uns["scadv"]["early"]["flip_rate"]
    classic = a.uns["scadv"]["classic"]["flip_rate"]
    assert np.all(early >= classic)
    scadv.tl.pgd(a, key_added="rs", random_start=True, n_restarts=3, seed=1, **common)
    assert np.all(a.uns["scadv"]["rs"]["flip_rate"] >= 0)


def test_same_seed_same_adversarial_layers(small_trained):
    a, b = small_trained.copy(), small_trained.copy()
    for x in (a, b):
        scadv.tl.pgd(x, eps=0.3, random_start=True, n_restarts=2, cells="all", seed=5,
                     progress=False)
    np.testing.assert_array_equal(perturbed(a, "scadv_pgd_eps0.3"),
                                  perturbed(b, "scadv_pgd_eps0.3"))
    c = small_trained.copy()
    scadv.tl.pgd(c, eps=0.3, random_start=True, cells="all", seed=6, progress=False)
    assert not np.array_equal(perturbed(a, "scadv_pgd_eps0.3"), perturbed(c, "scadv_pgd_eps0.3"))


def test_away_from_label_gives_standard_robust_accuracy(pbmc3k_trained):
    a = pbmc3k_trained
    scadv.tl.pgd(a, eps=0.1, away_from="label", progress=False, key_added="lab")
    rec = a.uns["scadv"]["lab"]
    # cells the model already gets wrong stay wrong, so robust accuracy ≤ clean accuracy
    assert rec["robust_accuracy"][0] <= rec["clean_accuracy"]
    pgd = a.uns["scadv"]["pgd"]
    assert rec["robust_accuracy"][0] <= pgd["robust_accuracy"][1] + 0.02


def test_cells_selection(small_trained):
    a = small_trained
    names = list(a.obs_names[:10])
    scadv.tl.pgd(a, eps=0.2, cells=names, progress=False, key_added="some")
    assert a.obs["scadv_some_eps0.2_pred"].notna().sum() == 10
    mask = np.zeros(a.n_obs, dtype=bool)
    mask[-7:] = True
    scadv.tl.pgd(a, eps=0.2, cells=mask, progress=False, key_added="mask")
    assert a.uns["scadv"]["mask"]["n_cells"] == 7


def test_copy_and_other_model_key(small_trained):
    a = small_trained
    scadv.tl.train_classifier(a, "cell_type", key_added="m2", split_key="scadv_split",
                              max_epochs=3, progress=False)
    before = snapshot(a)
    out = scadv.tl.pgd(a, eps=0.2, model="m2", progress=False, copy=True)
    assert_unchanged(a, before)
    assert "pgd_m2" in out.uns["scadv"] and "scadv_pgd_m2_eps0.2" in stored(out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, "eps must be positive"),
        ({"eps": (0.1, 0.1)}, "repeated"),
        ({"norm": "l1"}, "norm must be"),
        ({"loss": "hinge"}, "loss must be"),
        ({"steps": 0}, "steps must be ≥ 1"),
        ({"target": "T cell"}, "not a class"),
        ({"genes": ["NOPE"]}, "not model genes"),
        ({"clip": (1.0, -1.0)}, "low < high"),
        ({"clip": "range"}, "clip must be"),
        ({"model": "robust"}, "no scadv classifier 'robust'"),
        ({"cells": "train"}, "cells must be"),
        ({"cells": ["nope"]}, "not in adata.obs_names"),
        ({"away_from": "truth"}, "away_from"),
    ],
)
def test_bad_options(small_trained, kwargs, message):
    before = snapshot(small_trained)
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.pgd(small_trained, progress=False, **kwargs)
    assert_unchanged(small_trained, before)


def test_genes_missing_and_no_split(small_trained):
    genes = small_trained.uns["scadv"]["classifier"]["genes"]
    fewer = small_trained[:, small_trained.var_names != genes[0]].copy()
    with pytest.raises(ScadvInputError, match="missing"):
        scadv.tl.pgd(fewer, progress=False)
    new = small_trained.copy()
    del new.obs["scadv_split"]
    with pytest.raises(ScadvInputError, match="cells='all'"):
        scadv.tl.pgd(new, progress=False)


def test_results_survive_h5ad(pbmc3k_trained, tmp_path):
    a = pbmc3k_trained
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    rec_a, rec_b = a.uns["scadv"]["pgd"], b.uns["scadv"]["pgd"]
    for key in ("flip_rate", "flip_rate_per_class", "robust_accuracy", "eps", "linf_mean"):
        np.testing.assert_array_equal(np.asarray(rec_a[key]), np.asarray(rec_b[key]))
    np.testing.assert_array_equal(perturbed(a, "scadv_pgd_eps0.1"),
                                  perturbed(b, "scadv_pgd_eps0.1"))
    for col in a.obs.columns:
        pd.testing.assert_series_equal(a.obs[col], b.obs[col], check_categorical=False)
