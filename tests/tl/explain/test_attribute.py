"""scadv.tl.attribute: every method, its defining properties, storage and errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import scadv
from scadv import _model as M
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from scadv.tl._attacks import _engine as E
from scadv.tl._explain import _engine as X
from tests.conftest import assert_unchanged, model_x, snapshot


@pytest.mark.parametrize("method", X.METHODS)
def test_every_method_finds_the_simulated_markers(sim_trained, method):
    a = sim_trained
    scadv.tl.attribute(a, method=method, model="robust", progress=False)
    key = f"attr_{method}_robust"
    rec = a.uns["scadv"][key]
    assert rec["scores"].shape == (4, a.n_vars)
    table = rec["ranking"]
    assert list(table.columns) == ["class", "rank", "gene", "score"]
    assert (table.groupby("class", observed=True).size() == 100).all()
    scadv.tl.score_attributions(a, keys=key, k=10)
    truth = a.uns["scadv"]["attr_truth"]
    # every method, even the weakest, ranks the true markers far above chance (measured: AUPRC
    # 0.3 to 1.0 against 0.05 for a random ranking; precision@10 0.4 to 1.0)
    assert truth["auprc_mean"][0] >= 4 * np.nanmean(truth["auprc_random"])
    assert truth["precision_at_k_mean"][0] >= 0.3


def _logit_grad(model: M.MLP, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d logit_t / dx with the engine's exact backward pass."""
    def score(logits):
        onehot = torch.zeros_like(logits).scatter_(1, t.unsqueeze(1), 1.0)
        return (logits * onehot).sum(1), logits.argmax(1) == t, onehot

    grad = torch.empty_like(x)
    E.mlp_backward(model, x, score, grad_out=grad)
    return grad


def test_gradient_methods_match_the_exact_gradient(sim_trained):
    a = sim_trained
    for method in ("saliency", "grad_x_input"):
        scadv.tl.attribute(a, method=method, baseline="mean", per_cell=True, progress=False)
    rec = a.uns["scadv"]["attr_saliency"]
    cells = a.obs_names.get_indexer(rec["cells"])
    net = M.from_record(a.uns["scadv"]["classifier"])
    x = torch.as_tensor(model_x(a)[cells])
    grad = _logit_grad(net, x, torch.as_tensor(rec["targets"])).numpy()
    np.testing.assert_allclose(a.layers["scadv_attr_saliency"][cells], np.abs(grad), atol=1e-5)
    # gradient × input with the mean baseline (0 in z-score space) is the classic x · ∇f
    np.testing.assert_allclose(a.layers["scadv_attr_grad_x_input"][cells], grad * x.numpy(),
                               atol=1e-5)
    # cells that were not explained are NaN
    assert np.isnan(a.layers["scadv_attr_saliency"][a.obs["scadv_split"] != "test"]).all()


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_completeness_and_convergence_delta(sim_trained, method):
    a = sim_trained
    scadv.tl.attribute(a, method=method, model="robust", per_cell=True, progress=False)
    key = f"attr_{method}_robust"
    rec = a.uns["scadv"][key]
    cells = a.obs_names.get_indexer(rec["cells"])
    net = M.from_record(a.uns["scadv"]["robust"])
    with torch.no_grad():
        fx = net(torch.as_tensor(model_x(a, "robust")[cells])).numpy()
        fb = net(torch.as_tensor(rec["baseline_values"][None, :])).numpy()
    t = rec["targets"]
    gap = fx[np.arange(len(t)), t] - fb[0, t]
    total = a.layers[f"scadv_{key}"][cells].sum(axis=1)
    np.testing.assert_allclose(total, gap, atol=0.05 * np.abs(gap).mean())
    assert rec["delta_relative"] < 0.01
    np.testing.assert_allclose(a.obs[f"scadv_{key}_delta"].to_numpy()[cells], total - gap,
                               atol=1e-3 * np.abs(gap).mean())
    # the default baseline is zero expression: unexpressed genes get no attribution
    zero = np.isclose(model_x(a, "robust")[cells], rec["baseline_values"][None, :])
    assert zero.mean() > 0.2
    assert np.abs(a.layers[f"scadv_{key}"][cells][zero]).max() < 1e-6


def test_perturbation_methods_on_a_linear_model(sim_trained):
    """For a linear model, occlusion and LIME both recover w_t · (x − b) exactly."""
    a = sim_trained
    torch.manual_seed(0)
    lin = nn.Linear(a.n_vars, 3)
    x = model_x(a)[:20]
    base = np.full(a.n_vars, -0.5, dtype=np.float32)
    for method in ("occlusion", "lime", "grad_x_input"):
        scadv.tl.attribute(a, method=method, model=lin, target="1", classes=["0", "1", "2"],
                           cells=a.obs_names[:20], baseline=base, per_cell=True,
                           n_samples=1500 if method == "lime" else None, progress=False)
    expected = lin.weight.detach().numpy()[1] * (x - base)
    got = {m: a.layers[f"scadv_attr_{m}_custom"][:20] for m in ("occlusion", "lime",
                                                                "grad_x_input")}
    np.testing.assert_allclose(got["occlusion"], expected, atol=1e-4)
    np.testing.assert_allclose(got["grad_x_input"], expected, atol=1e-5)
    corr = np.corrcoef(got["lime"].ravel(), expected.ravel())[0, 1]
    assert corr > 0.95


def test_black_box_callable(sim_trained):
    a = sim_trained
    net = M.from_record(a.uns["scadv"]["robust"])

    def proba(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.as_tensor(x)), dim=1).numpy()

    classes = list(a.uns["scadv"]["robust"]["classes"])
    scadv.tl.attribute(a, method="occlusion", model=proba, classes=classes, progress=False)
    rec = a.uns["scadv"]["attr_occlusion_custom"]
    assert rec["output"] == "probability"
    scadv.tl.score_attributions(a, keys="attr_occlusion_custom", k=10)
    assert a.uns["scadv"]["attr_truth"]["precision_at_k_mean"][0] >= 0.5
    with pytest.raises(ScadvInputError, match="needs gradients"):
        scadv.tl.attribute(a, method="integrated_gradients", model=proba, progress=False)
    with pytest.raises(ScadvInputError, match="classes has 2 names"):
        scadv.tl.attribute(a, method="lime", model=proba, classes=["a", "b"], progress=False)


@pytest.mark.parametrize("method", ["smoothgrad", "deepshap", "lime"])
def test_seeded_methods_are_deterministic(sim_trained, method):
    a = sim_trained
    kw = {"method": method, "n_samples": 200 if method == "lime" else None, "progress": False}
    scadv.tl.attribute(a, seed=1, key_added="one", **kw)
    scadv.tl.attribute(a, seed=1, key_added="two", **kw)
    scadv.tl.attribute(a, seed=2, key_added="three", **kw)
    s = {k: a.uns["scadv"][k]["scores"] for k in ("one", "two", "three")}
    np.testing.assert_array_equal(s["one"], s["two"])
    assert not np.array_equal(s["one"], s["three"])


def test_targets_layers_and_h5ad_round_trip(sim_trained, tmp_path):
    a = sim_trained
    scadv.tl.pgd(a, eps=0.2, model="robust", key_added="atk", progress=False)
    scadv.tl.attribute(a, method="integrated_gradients", model="robust", target="label",
                       layer="scadv_atk_eps0.2", per_cell=True, key_added="ig_adv",
                       progress=False)
    rec = a.uns["scadv"]["ig_adv"]
    labels = a.obs.loc[rec["cells"], "cell_type"].astype(str).to_numpy()
    assert (np.asarray(rec["classes"])[rec["targets"]] == labels).all()
    assert rec["layer"] == "scadv_atk_eps0.2"
    scadv.tl.attribute(a, method="saliency", target="type2", key_added="one_class",
                       progress=False)
    one = a.uns["scadv"]["one_class"]
    assert one["n_cells_per_class"][2] == len(one["cells"])
    assert np.isnan(one["scores"][[0, 1, 3]]).all()
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    for key in ("ig_adv", "one_class"):
        ra, rb = a.uns["scadv"][key], b.uns["scadv"][key]
        np.testing.assert_array_equal(ra["scores"], rb["scores"])
        np.testing.assert_array_equal(ra["cells"], rb["cells"])
        pd.testing.assert_frame_equal(ra["ranking"], rb["ranking"], check_categorical=False)
    np.testing.assert_array_equal(a.layers["scadv_ig_adv"], b.layers["scadv_ig_adv"])
    # the robust model itself survives the round trip: same predictions
    scadv.tl.predict(b, model="robust", key_added="again")
    np.testing.assert_array_equal(b.obsm["scadv_again_proba"], a.obsm["scadv_robust_proba"])


def test_per_cell_goes_to_obsm_outside_model_space(sim_trained):
    a = sim_trained
    # log-normalised values of all genes, here in another order
    raw = ad.AnnData(X=R.lognormalize(a.X, target_sum=1e4), obs=a.obs[[]].copy(), var=a.var)
    raw = raw[:, np.random.default_rng(0).permutation(raw.n_vars)].copy()
    raw.uns["scadv"] = {"classifier": a.uns["scadv"]["classifier"]}
    scadv.tl.attribute(raw, method="saliency", cells="all", per_cell=True, progress=False)
    assert raw.obsm["scadv_attr_saliency"].shape == (raw.n_obs, a.n_vars)
    assert raw.uns["scadv"]["attr_saliency"]["per_cell"] == "obsm"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "shap"}, "unknown attribution method 'shap'"),
        ({"model": "nope"}, "no scadv classifier 'nope'"),
        ({"baseline": np.zeros(3)}, "baseline array needs"),
        ({"baseline": "median"}, "baseline must be"),
        ({"target": "type9"}, "target must be"),
        ({"n_steps": 1}, "n_steps"),
        ({"cells": "train"}, "cells must be"),
        ({"model": 3}, "model must be"),
        ({"key_added": "robust", "per_cell": True}, "holds a trained classifier"),
    ],
)
def test_bad_options(sim_trained, kwargs, message):
    before = snapshot(sim_trained)
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.attribute(sim_trained, progress=False, **kwargs)
    assert_unchanged(sim_trained, before)


def test_label_target_needs_labels(sim_trained):
    a = sim_trained
    del a.obs["cell_type"]
    with pytest.raises(ScadvInputError, match="target='label' needs"):
        scadv.tl.attribute(a, target="label", progress=False)
