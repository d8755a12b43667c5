"""scadv.tl.meta_detect / meta_score / meta_evaluate: honest detection on real data, split
discipline, no labels at inference, storage, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scadv
from scadv import _detector as DT
from scadv import _keys as K
from scadv import _model as M
from scadv._errors import ScadvInputError
from scadv.tl._attacks import _engine as E
from scadv.tl._detect import _features as MF
from tests.conftest import assert_unchanged, make_counts, model_x, snapshot


def _ev(a: ad.AnnData, layer: str, method: str = "detector") -> dict:
    return a.uns["scadv"]["meta"]["evaluation"][layer][method]


# ---- the science, on PBMC3k -------------------------------------------------------------------


def test_pbmc3k_detector_beats_chance(pbmc3k_meta):
    a = pbmc3k_meta
    # unconstrained PGD at a training budget: the realism gate catches every attacked cell
    # (measured: AUROC 1.000, TPR 1.000 at 5% FPR)
    unconstrained = _ev(a, "scadv_pgd_eps0.1")
    assert unconstrained["auroc"] > 0.99 and unconstrained["tpr_at_5fpr"] > 0.95
    # the classifier's own signals alone (measured 0.91 / 0.92 at seed 42): well above chance
    assert _ev(a, "scadv_pgd_eps0.1", "meta")["auroc"] > 0.8
    realistic = _ev(a, "scadv_realistic_eps0.5")
    assert realistic["auroc"] > 0.8  # the gate does not see these; the meta-detector does
    assert _ev(a, "scadv_realistic_eps0.5", "input")["auroc"] < 0.6
    # calibrated at 5% validation FPR: clean test cells are flagged at about that rate
    assert 0.01 < 1 - realistic["clean_detection_rate"] < 0.12
    # benign perturbations are flagged about as often as clean cells
    for kind in ("downsample", "dropout", "noise"):
        assert _ev(a, f"scadv_benign_{kind}")["flag_rate"] < 0.12, kind


def test_split_discipline_and_record(pbmc3k_meta):
    a = pbmc3k_meta
    rec = a.uns["scadv"]["meta"]
    split = a.obs["scadv_split"].astype(str)
    assert rec["training"]["n_train_cells"] == (split == "train").sum()
    assert rec["calibration"]["n_clean"] == (split == "val").sum()
    ev = rec["evaluation"]["scadv_pgd_eps0.1"]
    assert ev["n_clean"] == (split == "test").sum()
    assert ev["n_changed"] == (split == "test").sum()  # the attack covered the test split
    flipped = a.obs["scadv_pgd_eps0.1_flipped"] == True  # noqa: E712
    assert ev["n_flipped"] == flipped.sum()
    cm = np.asarray(ev["detector"]["confusion_matrix"])
    assert cm[0].sum() == ev["n_clean"] and cm[1].sum() == ev["n_flipped"]
    # the flag columns agree with the scores and the threshold
    thr = rec["threshold"]
    score, flag = a.obs["scadv_meta_score"], a.obs["scadv_meta_flag"] == True  # noqa: E712
    np.testing.assert_array_equal(flag.to_numpy(), (score >= thr).to_numpy())
    layer_score = a.obs["scadv_pgd_eps0.1_meta_score"]
    assert layer_score.notna().sum() == (split == "test").sum()
    # the printable table has a row per layer and method
    table = rec["table"]
    assert isinstance(table, pd.DataFrame)
    assert {"detector", "meta", "no_grad", "logreg", "mahalanobis", "input"} <= set(table.method)
    assert len(table) == 6 * len(rec["evaluation"])


def test_scores_do_not_use_labels(pbmc3k_meta):
    a = pbmc3k_meta
    before = a.obs["scadv_meta_score"].to_numpy().copy()
    layer_before = a.obs["scadv_realistic_eps0.5_meta_score"].to_numpy().copy()
    rng = np.random.default_rng(0)
    a.obs["cell_type"] = a.obs["cell_type"].to_numpy()[rng.permutation(a.n_obs)]
    scadv.tl.meta_score(a, layers=["scadv_realistic_eps0.5"], progress=False)
    np.testing.assert_array_equal(a.obs["scadv_meta_score"].to_numpy(), before)
    np.testing.assert_array_equal(a.obs["scadv_realistic_eps0.5_meta_score"].to_numpy(),
                                  layer_before)
    del a.obs["cell_type"]
    scadv.tl.meta_score(a, key_added="again", progress=False)
    np.testing.assert_array_equal(a.obs["scadv_again_score"].to_numpy(), before)


def test_h5ad_round_trip_and_new_raw_cells(pbmc3k_meta, pbmc3k_raw, tmp_path):
    a = pbmc3k_meta
    path = tmp_path / "meta.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(back.uns["scadv"]["meta"]["table"],
                                  a.uns["scadv"]["meta"]["table"])
    scadv.tl.meta_score(back, key_added="reloaded", layers=None, progress=False)
    np.testing.assert_array_equal(back.obs["scadv_reloaded_score"],
                                  a.obs["scadv_meta_score"])
    np.testing.assert_array_equal(back.obs["scadv_pgd_eps0.1_reloaded_score"],
                                  a.obs["scadv_pgd_eps0.1_meta_score"])
    # a colleague scores raw counts (all genes, another gene order) with the reloaded detector
    new = pbmc3k_raw[:400, np.random.default_rng(1).permutation(pbmc3k_raw.n_vars)].copy()
    scadv.tl.meta_score(new, source=back, progress=False)
    np.testing.assert_allclose(new.obs["scadv_meta_score"],
                               a.obs["scadv_meta_score"].iloc[:400], atol=1e-4)
    assert new.uns["scadv"]["meta"]["kind"] == DT.DETECTOR_KIND  # copied for later calls
    # re-evaluating the reloaded file gives the same evaluation
    scadv.tl.meta_evaluate(back, progress=False)
    pd.testing.assert_frame_equal(back.uns["scadv"]["meta"]["table"],
                                  a.uns["scadv"]["meta"]["table"])


def test_missing_genes_are_an_error(pbmc3k_meta, pbmc3k_raw):
    new = pbmc3k_raw[:50].copy()
    genes = pbmc3k_meta.uns["scadv"]["classifier"]["genes"]
    new = new[:, ~new.var_names.isin(genes[:20])].copy()
    before = snapshot(new)
    with pytest.raises(ScadvInputError, match="missing from"):
        scadv.tl.meta_score(new, source=pbmc3k_meta, progress=False)
    assert_unchanged(new, before)


# ---- features, networks, storage (fast, synthetic) --------------------------------------------


def test_gradient_feature_uses_the_predicted_class(small_trained):
    rec = small_trained.uns["scadv"]["classifier"]
    net = M.from_record(rec, "cpu")
    x = model_x(small_trained)[:16]
    f, logits, emb = MF.compute(net, x, MF.GROUPS, device=torch.device("cpu"))
    xt = torch.as_tensor(x).requires_grad_(True)
    out = net(xt)
    ce = torch.nn.functional.cross_entropy(out, out.argmax(1).detach(), reduction="sum")
    (g,) = torch.autograd.grad(ce, xt)
    g = g.abs().numpy()
    np.testing.assert_allclose(f[:, -3], g.mean(1), rtol=1e-4)
    np.testing.assert_allclose(f[:, -1], np.linalg.norm(g, axis=1), rtol=1e-4)
    np.testing.assert_allclose(f[:, :emb.shape[1]], emb)
    top = np.sort(logits, axis=1)
    names = MF.names(MF.GROUPS, list(rec["classes"]), emb.shape[1])
    np.testing.assert_allclose(f[:, names.index("margin")], top[:, -1] - top[:, -2], rtol=1e-5)
    # the differentiable version (adaptive attacker) computes the same features
    fd, _ = MF.differentiable(net, torch.as_tensor(x), MF.GROUPS)
    np.testing.assert_allclose(fd.detach().numpy(), f, rtol=1e-4, atol=1e-6)
    # ... and the fast gradient agrees with the engine's for the predicted class
    buf = torch.empty(x.shape)
    E.mlp_input_grad(net, torch.as_tensor(x), torch.as_tensor(logits.argmax(1)), loss="ce",
                     targeted=False, grad_out=buf)
    np.testing.assert_allclose(np.abs(buf.numpy()), g, rtol=1e-4, atol=1e-7)


def test_small_run_writes_its_keys(small_meta):
    a = small_meta
    rec = a.uns["scadv"]["meta"]
    for col in ("scadv_meta_score", "scadv_meta_flag", "scadv_pgd_eps0.3_meta_score",
                "scadv_pgd_eps0.6_meta_flag"):
        assert col in a.obs, col
    assert rec["kind"] == DT.DETECTOR_KIND and rec["model"] == "classifier"
    assert list(rec["features"]) == list(MF.GROUPS)
    assert 0 < rec["threshold"] <= 1
    assert set(rec["evaluation"]) == {"scadv_pgd_eps0.3", "scadv_pgd_eps0.6"}
    # evaluation uses test cells only, though the attack covered every cell
    n_test = (a.obs["scadv_split"] == "test").sum()
    assert rec["evaluation"]["scadv_pgd_eps0.3"]["n_changed"] == n_test
    assert a.obs["scadv_pgd_eps0.3_meta_score"].notna().all()  # scored for every attacked cell


def test_same_seed_same_detector(small_trained):
    kw = {"eps": (0.3, 0.6, 1.0), "triplet_epochs": 2, "detector_epochs": 3, "progress": False,
          "baselines": False}
    a = scadv.tl.meta_detect(small_trained, copy=True, **kw)
    b = scadv.tl.meta_detect(small_trained, copy=True, **kw)
    c = scadv.tl.meta_detect(small_trained, copy=True, seed=1, **kw)
    np.testing.assert_array_equal(a.obs["scadv_meta_score"], b.obs["scadv_meta_score"])
    assert not np.array_equal(a.obs["scadv_meta_score"], c.obs["scadv_meta_score"])


def test_copy_leaves_input_untouched(small_trained):
    before = snapshot(small_trained)
    out = scadv.tl.meta_detect(small_trained, eps=(0.3, 0.6, 1.0), triplet_epochs=1,
                               detector_epochs=2, baselines=False, progress=False, copy=True)
    assert_unchanged(small_trained, before)
    assert "meta" in out.uns["scadv"] and "scadv_meta_score" in out.obs


def test_tampered_or_foreign_detector_is_refused(small_meta):
    a = small_meta
    rec = dict(a.uns["scadv"]["meta"])
    weights = dict(rec["detector_weights"])
    weights["head.weight"] = weights["head.weight"][:, :5]
    a.uns["scadv"]["bad"] = {**rec, "detector_weights": weights}
    with pytest.raises(ScadvInputError, match="head.weight"):
        scadv.tl.meta_score(a, key="bad", progress=False)
    a.uns["scadv"]["bad"] = {**rec, "kind": "pickle"}
    with pytest.raises(ScadvInputError, match="not a scadv meta-detector"):
        scadv.tl.meta_score(a, key="bad", progress=False)
    with pytest.raises(ScadvInputError, match="no scadv meta-detector 'nope'"):
        scadv.tl.meta_score(a, key="nope", progress=False)


def test_detector_refuses_a_retrained_classifier(small_meta):
    a = small_meta
    scadv.tl.train_classifier(a, "cell_type", split_key="scadv_split", max_epochs=2, seed=3,
                              progress=False)
    with pytest.raises(ScadvInputError, match="another version of classifier"):
        scadv.tl.meta_score(a, progress=False)


def test_no_classifier_no_split_no_layers(small_meta, counts):
    scadv.pp.prepare(counts, n_top_genes=100)
    with pytest.raises(ScadvInputError, match="no scadv classifier"):
        scadv.tl.meta_detect(counts, progress=False)
    a = small_meta.copy()
    del a.obs["scadv_split"]
    with pytest.raises(ScadvInputError, match="needs the classifier's split"):
        scadv.tl.meta_detect(a, progress=False)
    b = small_meta.copy()
    reg = b.uns["scadv"]["perturbations"]
    b.uns["scadv"]["perturbations"] = {k: v for k, v in reg.items()
                                       if not k.startswith("scadv_pgd")}
    with pytest.raises(ScadvInputError, match="no adversarial layer"):
        scadv.tl.meta_evaluate(b, progress=False)
    with pytest.raises(ScadvInputError, match="'nope' not found"):
        scadv.tl.meta_score(small_meta, layers=["nope"], progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attack": "cw"}, "attack must be"),
        ({"positives": "some"}, "positives must be"),
        ({"threshold": "otsu"}, "threshold must be"),
        ({"target_fpr": 0.0}, "target_fpr"),
        ({"features": ("embedding", "spin")}, "unknown"),
        ({"features": ()}, "non-empty"),
        ({"eps": -1.0}, "eps must be positive"),
        ({"detector_epochs": 0}, "detector_epochs"),
        ({"eps": 1e-4}, "succeeded on only"),
        ({"model": "other"}, "no scadv classifier 'other'"),
    ],
)
def test_bad_options(small_trained, kwargs, message):
    before = snapshot(small_trained)
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.meta_detect(small_trained, progress=False, triplet_epochs=1, **kwargs)
    assert_unchanged(small_trained, before)


def test_scoring_counts_without_the_recipe_of_the_training_data(small_meta):
    raw = ad.AnnData(X=small_meta.X.copy(), obs=small_meta.obs.copy(),
                     var=small_meta.var.copy())
    raw.uns["scadv"] = {k: v for k, v in small_meta.uns["scadv"].items()
                        if k not in ("prepare", "perturbations")}
    x_before = raw.X.copy()
    # the classifier's own copy of the recipe is applied on the fly, X untouched
    scadv.tl.meta_score(raw, progress=False)
    assert (raw.X != x_before).nnz == 0
    np.testing.assert_allclose(raw.obs["scadv_meta_score"], small_meta.obs["scadv_meta_score"],
                               atol=1e-5)


def test_other_data_scored_with_missing_genes_mean(small_meta):
    other = make_counts(seed=7)
    other = other[:, 5:].copy()
    scadv.tl.meta_score(other, source=small_meta, missing_genes="mean", progress=False)
    assert other.obs["scadv_meta_score"].between(0, 1).all()
    assert K.meta_flag("meta") in other.obs


def test_evaluate_named_layers_keeps_the_others(small_meta):
    a = small_meta
    before = dict(a.uns["scadv"]["meta"]["evaluation"])
    scadv.tl.pgd(a, eps=0.9, cells="all", key_added="late", progress=False)
    scadv.tl.meta_evaluate(a, layers=["scadv_late_eps0.9"], progress=False)
    after = a.uns["scadv"]["meta"]["evaluation"]
    assert set(after) == set(before) | {"scadv_late_eps0.9"}
    assert "scadv_late_eps0.9_meta_score" in a.obs
    assert set(a.uns["scadv"]["meta"]["table"].attack) >= {"pgd ε=0.9 (late)", "pgd ε=0.3"}


def test_scoring_with_a_source_never_overwrites_other_models(small_meta, small_trained):
    other = small_meta.copy()
    other.uns["scadv"]["meta"] = {"kind": "something else"}
    with pytest.raises(ScadvInputError, match="different entry under"):
        scadv.tl.meta_score(other, source=small_meta, progress=False)
    mine = small_trained.copy()
    scadv.tl.train_classifier(mine, "cell_type", max_epochs=2, seed=9, progress=False)
    with pytest.raises(ScadvInputError, match="different classifier"):
        scadv.tl.meta_score(mine, source=small_meta, progress=False)
    # the same records are fine (e.g. scoring the source's own cells again)
    same = small_meta.copy()
    scadv.tl.meta_score(same, source=small_meta, key_added="again", progress=False)
    np.testing.assert_array_equal(same.obs["scadv_again_score"], small_meta.obs["scadv_meta_score"])
