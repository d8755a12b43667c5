"""scadv.tl.meta_detect / meta_score / meta_evaluate: honest detection on real data, split
discipline, conformal thresholds, no labels at inference, storage, bad input."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scadv
from scadv import _detector as DT
from scadv import _keys as K
from scadv import _model as M
from scadv._errors import ScadvInputError
from scadv.tl._attacks import _engine as E
from scadv.tl._detect import _common as MC
from scadv.tl._detect import _features as MF
from tests.conftest import assert_unchanged, make_counts, model_x, snapshot


@pytest.fixture
def warned():
    """The messages scanpy's logger warns (it does not propagate to pytest's caplog)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = sc.settings._root_logger
    before = sc.settings.verbosity
    sc.settings.verbosity = 1
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    sc.settings.verbosity = before


def _ev(a: ad.AnnData, layer: str, method: str = "detector") -> dict:
    return a.uns["scadv"]["meta"]["evaluation"][layer][method]


# ---- the science, on PBMC3k -------------------------------------------------------------------


def test_pbmc3k_detector_at_the_stored_threshold(pbmc3k_meta):
    a = pbmc3k_meta
    rec = a.uns["scadv"]["meta"]
    assert rec["method"] == "consistency"
    # every model-space edit of measured counts leaves the count lattice: the gate flags it
    for layer in ("scadv_pgd_eps0.1", "scadv_realistic_eps0.5"):
        assert _ev(a, layer)["flagged"] > 0.99 and _ev(a, layer)["flagged_all"] > 0.99, layer
        assert _ev(a, layer, "input")["auroc"] > 0.99, layer
    # count-space attacks pass the gate and meet the consistency detector (seed 42 measured:
    # 94% of flips flagged at the stored threshold, AUROC 0.992)
    counts = _ev(a, "scadv_counts_umis60")
    assert counts["flagged"] > 0.8 and counts["auroc"] > 0.97
    assert _ev(a, "scadv_counts_umis60", "input")["flagged"] == 0.0
    # split-conformal at 5% on the validation cells: clean test cells flagged about as often
    assert 0.01 < counts["clean_flagged"] < 0.10
    # benign shifts (every kind, deeper libraries, batch, ambient RNA, doublets, missing genes
    # included) are flagged about as often as clean cells
    for kind in scadv.tl._detect._benign.KINDS:
        assert _ev(a, f"scadv_benign_{kind}")["flag_rate"] < 0.12, kind


def test_pbmc3k_default_beats_the_baselines_on_validation(pbmc3k_meta):
    val = pbmc3k_meta.uns["scadv"]["meta"]["validation"]
    best = max(val[m]["auroc"] for m in ("margin", "triplet", "logreg", "mahalanobis", "pca",
                                         "squeeze", "twin"))
    assert val["consistency"]["auroc"] >= best
    assert val["consistency"]["flagged"] > 0.8


def test_split_discipline_and_record(pbmc3k_meta):
    a = pbmc3k_meta
    rec = a.uns["scadv"]["meta"]
    split = a.obs["scadv_split"].astype(str)
    assert rec["training"]["n_train_cells"] == (split == "train").sum()
    cal = rec["calibration"]
    assert cal["n"] == (split == "val").sum() and cal["reliable"]
    assert cal["rank"] == int(np.ceil((cal["n"] + 1) * 0.95))
    assert cal["expected_fpr_bound"] <= 0.05
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
    table = rec["table"]
    assert isinstance(table, pd.DataFrame)
    assert {"detector", "consistency", "triplet", "logreg", "margin", "squeeze", "twin",
            "mahalanobis", "pca", "input"} <= set(table.method)
    assert list(table.columns[5:8]) == ["flagged", "flagged_all", "clean_flagged"]


def test_scores_do_not_use_labels(pbmc3k_meta):
    a = pbmc3k_meta
    before = a.obs["scadv_meta_score"].to_numpy().copy()
    layer_before = a.obs["scadv_counts_umis60_meta_score"].to_numpy().copy()
    rng = np.random.default_rng(0)
    a.obs["cell_type"] = a.obs["cell_type"].to_numpy()[rng.permutation(a.n_obs)]
    scadv.tl.meta_score(a, layers=["scadv_counts_umis60"], progress=False)
    np.testing.assert_array_equal(a.obs["scadv_meta_score"].to_numpy(), before)
    np.testing.assert_array_equal(a.obs["scadv_counts_umis60_meta_score"].to_numpy(),
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
    np.testing.assert_array_equal(back.obs["scadv_counts_umis60_reloaded_score"],
                                  a.obs["scadv_counts_umis60_meta_score"])
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


def test_new_data_that_is_not_raw_counts(pbmc3k_meta, pbmc3k_raw):
    """Missing genes filled with their mean, CPM and median-normalised input: no false alarms
    (scadv 0.1 flagged 100% of such cells), the same scores as from the counts."""
    a = pbmc3k_meta
    cells = a.obs_names[(a.obs["scadv_split"] == "test").to_numpy()][:300]
    ref = a.obs.loc[cells, "scadv_meta_score"].to_numpy()
    for how in ("cpm", "median"):
        b = pbmc3k_raw[cells].copy()
        sc.pp.normalize_total(b, target_sum=1e6 if how == "cpm" else None)
        sc.pp.log1p(b)
        scadv.tl.meta_score(b, source=a, progress=False)
        np.testing.assert_allclose(b.obs["scadv_meta_score"], ref, atol=1e-4, err_msg=how)
    genes = np.asarray(a.uns["scadv"]["classifier"]["genes"])
    drop = np.random.default_rng(0).choice(genes, 100, replace=False)
    b = pbmc3k_raw[cells][:, ~pbmc3k_raw.var_names.isin(drop)].copy()
    with pytest.raises(ScadvInputError, match="missing from"):
        scadv.tl.meta_score(b.copy(), source=a, progress=False)
    scadv.tl.meta_score(b, source=a, missing_genes="mean", progress=False)
    flagged = (b.obs["scadv_meta_flag"] == True).mean()  # noqa: E712
    assert flagged < 0.15  # measured 5.3% (clean: 5.3%)


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
    fd, _ = MF.differentiable(net, torch.as_tensor(x), MF.GROUPS)
    np.testing.assert_allclose(fd.detach().numpy(), f, rtol=1e-4, atol=1e-6)
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
    assert rec["method"] == "consistency" and rec["training"]["attack"] == "counts"
    assert list(rec["features"]) == list(MF.GROUPS)
    assert 0 < rec["threshold"] <= 1
    assert set(rec["thresholds"]) >= {"consistency", "triplet", "logreg", "margin", "twin"}
    assert set(rec["evaluation"]) == {"scadv_pgd_eps0.3", "scadv_pgd_eps0.6"}
    n_test = (a.obs["scadv_split"] == "test").sum()
    assert rec["evaluation"]["scadv_pgd_eps0.3"]["n_changed"] == n_test
    assert a.obs["scadv_pgd_eps0.3_meta_score"].notna().all()  # scored for every attacked cell
    # the realism gate: clean cells of whole counts pass, every PGD-moved cell fails
    assert rec["gate"]["check_lattice"] and rec["gate"]["max_violations"] == 0
    assert (a.obs["scadv_pgd_eps0.3_meta_score"] == 1.0).all()


def test_conformal_threshold():
    rng = np.random.default_rng(0)
    clean = rng.random(99)
    cal = MC.conformal(clean, 0.05)
    k = int(np.ceil(100 * 0.95))  # 95
    assert cal["rank"] == k and cal["n"] == 99
    assert np.sort(clean)[k - 1] < cal["threshold"] <= np.sort(clean)[k]
    assert cal["expected_fpr_bound"] == pytest.approx(5 / 100)
    # the promise holds on fresh clean scores: P(flag) <= alpha, averaged over calibrations
    rates = []
    for _ in range(300):
        thr = MC.conformal(rng.random(99), 0.05)["threshold"]
        rates.append((rng.random(2000) >= thr).mean())
    assert np.mean(rates) <= 0.05 + 0.005
    few = MC.conformal(rng.random(10), 0.05)  # k = 11 > n: no threshold can promise it
    assert few["threshold"] == np.inf and not few["reliable"]
    assert not MC.conformal(rng.random(47), 0.05)["reliable"]  # realised FPR may reach 9.7%
    assert MC.conformal(rng.random(300), 0.05)["reliable"]


def test_too_few_validation_cells_warn(small_trained, warned):
    a = small_trained
    split = a.obs["scadv_split"].astype(str).to_numpy()
    scadv.tl.meta_detect(a, budget=30, baselines=False, progress=False)
    assert any("validation cells calibrate the threshold" in m for m in warned)
    cal = a.uns["scadv"]["meta"]["calibration"]
    assert cal["n"] == (split == "val").sum() and not cal["reliable"]


@pytest.mark.parametrize("method", ["triplet", "logreg"])
def test_other_methods(small_trained, method):
    a = scadv.tl.meta_detect(small_trained, method=method, budget=30, baselines=False,
                             triplet_epochs=2, detector_epochs=3, progress=False, copy=True)
    rec = a.uns["scadv"]["meta"]
    assert rec["method"] == method and set(rec["thresholds"]) >= {method, "input"}
    assert a.obs["scadv_meta_score"].between(0, 1).all() if method == "triplet" else True
    det = MC.load(a, "meta", source=None, device=torch.device("cpu"))
    x = model_x(a)[:8]
    np.testing.assert_allclose(  # the adaptive attacker's logit is the stored score
        det.torch_logit(torch.as_tensor(x)).detach().numpy(),
        det.scores(x).scores[method] if method == "logreg"
        else np.log(det.scores(x).scores[method] / (1 - det.scores(x).scores[method])),
        rtol=1e-3, atol=1e-3)


def test_consistency_logit_matches_the_scores(small_meta):
    det = MC.load(small_meta, "meta", source=None, device=torch.device("cpu"))
    x = model_x(small_meta)[:20]
    p = det.scores(x).scores["consistency"]
    logit = det.torch_logit(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), p, rtol=1e-4, atol=1e-6)
    assert det.threshold_logit() == pytest.approx(np.log(det.threshold / (1 - det.threshold)))


def test_same_seed_same_detector(small_trained):
    kw = {"budget": 30, "progress": False, "baselines": False}
    a = scadv.tl.meta_detect(small_trained, copy=True, **kw)
    b = scadv.tl.meta_detect(small_trained, copy=True, **kw)
    c = scadv.tl.meta_detect(small_trained, copy=True, seed=1, **kw)
    np.testing.assert_array_equal(a.obs["scadv_meta_score"], b.obs["scadv_meta_score"])
    assert not np.array_equal(a.obs["scadv_meta_score"], c.obs["scadv_meta_score"])


def test_copy_leaves_input_untouched(small_trained):
    before = snapshot(small_trained)
    out = scadv.tl.meta_detect(small_trained, budget=30, baselines=False, progress=False,
                               copy=True)
    assert_unchanged(small_trained, before)
    assert "meta" in out.uns["scadv"] and "scadv_meta_score" in out.obs


def test_tampered_or_foreign_detector_is_refused(small_meta):
    a = small_meta
    rec = dict(a.uns["scadv"]["meta"])
    cons = dict(rec["consistency"])
    cons["twin_weight"] = cons["twin_weight"][:, :5]
    a.uns["scadv"]["bad"] = {**rec, "consistency": cons}
    with pytest.raises(ScadvInputError, match="twin_weight"):
        scadv.tl.meta_score(a, key="bad", progress=False)
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
        ({"method": "forest"}, "method must be"),
        ({"attack": "cw"}, "attack must be"),
        ({"positives": "some"}, "positives must be"),
        ({"threshold": "otsu"}, "threshold must be"),
        ({"target_fpr": 0.0}, "target_fpr"),
        ({"budget": 0}, "budget must be"),
        ({"features": ("embedding", "spin")}, "unknown"),
        ({"features": ()}, "non-empty"),
        ({"attack": "pgd", "eps": -1.0}, "eps must be positive"),
        ({"detector_epochs": 0}, "detector_epochs"),
        ({"attack": "pgd", "eps": 1e-4}, "succeeded on only"),
        ({"budget": 1}, "succeeded on only"),
        ({"model": "other"}, "no scadv classifier 'other'"),
    ],
)
def test_bad_options(small_trained, kwargs, message):
    before = snapshot(small_trained)
    with pytest.raises(ScadvInputError, match=message):
        scadv.tl.meta_detect(small_trained, progress=False, triplet_epochs=1, **kwargs)
    assert_unchanged(small_trained, before)


def test_count_attack_needs_counts(small_trained):
    a = small_trained
    a.X = scadv._recipe.lognormalize(a.X, target_sum=1e4)
    with pytest.raises(ScadvInputError, match="attack='counts' edits raw counts"):
        scadv.tl.meta_detect(a, attack="counts", progress=False)
    # the default falls back to the data-respecting z-space attack
    scadv.tl.meta_detect(a, baselines=False, progress=False)
    assert a.uns["scadv"]["meta"]["training"]["attack"] == "pgd_realistic"


def test_scoring_counts_without_the_recipe_of_the_training_data(small_meta):
    raw = ad.AnnData(X=small_meta.X.copy(), obs=small_meta.obs.copy(),
                     var=small_meta.var.copy())
    raw.uns["scadv"] = {k: v for k, v in small_meta.uns["scadv"].items()
                        if k not in ("prepare", "perturbations")}
    x_before = raw.X.copy()
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
    # the genes filled with their mean are not values the gate calls impossible
    assert (other.obs["scadv_meta_score"] < 1).all()


def test_non_integer_counts_switch_the_lattice_check_off(small_meta, warned):
    b = ad.AnnData(X=small_meta.X.copy(), obs=small_meta.obs[[]].copy(),
                   var=small_meta.var.copy())
    # "ambient-corrected" counts: each gene's counts scaled down by its own fraction
    factor = np.random.default_rng(0).uniform(0.6, 0.95, b.n_vars)
    b.X = scadv._recipe.lognormalize(b.X.multiply(factor[None, :]).tocsr(), target_sum=1e4)
    scadv.tl.meta_score(b, source=small_meta, progress=False)
    assert any("not whole counts" in m for m in warned)
    assert (b.obs["scadv_meta_score"] < 1).all()


def test_evaluate_named_layers_keeps_the_others(small_meta):
    a = small_meta
    before = dict(a.uns["scadv"]["meta"]["evaluation"])
    scadv.tl.pgd(a, eps=0.9, cells="all", key_added="late", progress=False)
    scadv.tl.meta_evaluate(a, layers=["scadv_late_eps0.9"], progress=False)
    after = a.uns["scadv"]["meta"]["evaluation"]
    assert set(after) == set(before) | {"scadv_late_eps0.9"}
    assert "scadv_late_eps0.9_meta_score" in a.obs
    assert set(a.uns["scadv"]["meta"]["table"].attack) >= {"pgd ε=0.9 (late)", "pgd ε=0.3"}


def test_gene_level_attacks_are_evaluated(small_meta):
    a = small_meta
    scadv.tl.cgd(a, cluster_key="cell_type", target="type0", add_layer=True, add_obs=True,
                 progress=False)
    scadv.tl.meta_evaluate(a, progress=False)
    ev = a.uns["scadv"]["meta"]["evaluation"]["scadv_cgd"]
    test0 = ((a.obs["scadv_split"] == "test") & (a.obs["cell_type"] == "type0")).sum()
    assert ev["method"] == "cgd" and ev["n_changed"] == test0
    assert ev["detector"]["flagged_all"] == 1.0  # model-space edits leave the count lattice


def test_scoring_with_a_source_never_overwrites_other_models(small_meta, small_trained):
    other = small_meta.copy()
    other.uns["scadv"]["meta"] = {"kind": "something else"}
    with pytest.raises(ScadvInputError, match="different entry under"):
        scadv.tl.meta_score(other, source=small_meta, progress=False)
    mine = small_trained.copy()
    scadv.tl.train_classifier(mine, "cell_type", max_epochs=2, seed=9, progress=False)
    with pytest.raises(ScadvInputError, match="different classifier"):
        scadv.tl.meta_score(mine, source=small_meta, progress=False)
    same = small_meta.copy()
    scadv.tl.meta_score(same, source=small_meta, key_added="again", progress=False)
    np.testing.assert_array_equal(same.obs["scadv_again_score"], small_meta.obs["scadv_meta_score"])


def test_max_cells_caps_the_cells_the_detector_is_built_on(small_trained):
    """An atlas's splits are subsampled (seeded) to max_cells for fitting, attacking and
    calibrating; every cell is still scored, and the record says what was used."""
    a = small_trained
    split = a.obs["scadv_split"].astype(str).to_numpy()
    n_train = int((split == "train").sum())
    kw = dict(budget=30, baselines=False, target_fpr=0.1, progress=False, copy=True)
    capped = scadv.tl.meta_detect(a, max_cells=n_train // 2, **kw)
    again = scadv.tl.meta_detect(a, max_cells=n_train // 2, **kw)
    full = scadv.tl.meta_detect(a, **kw)
    tr = capped.uns["scadv"]["meta"]["training"]
    assert tr["n_train_cells"] == n_train // 2 < tr["n_train_cells_available"] == n_train
    assert tr["n_val_cells"] == tr["n_val_cells_available"] == (split == "val").sum()
    assert tr["max_cells"] == n_train // 2
    assert full.uns["scadv"]["meta"]["training"]["n_train_cells"] == n_train
    assert capped.obs["scadv_meta_score"].notna().all()  # every cell scored
    np.testing.assert_array_equal(capped.obs["scadv_meta_score"], again.obs["scadv_meta_score"])
    assert not np.array_equal(capped.obs["scadv_meta_score"], full.obs["scadv_meta_score"])
