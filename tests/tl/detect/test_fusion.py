"""meta_detect(fusion='or'): the OR rule over the consistency detector's views — its scale,
its conformal threshold, storage, rescoring, the attacker who queries it, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import scadv
from scadv._errors import ScadvInputError
from scadv.tl._detect import _common as MC
from scadv.tl._detect import _consistency as CO
from tests.conftest import model_x

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def _small_or(_small_trained_once: ad.AnnData) -> ad.AnnData:
    adata = _small_trained_once.copy()
    # 12 validation cells: a 10% target is the lowest a conformal threshold can promise
    scadv.tl.meta_detect(adata, fusion="or", budget=30, target_fpr=0.1, baselines=False,
                         key_added="meta_or", progress=False)
    return adata


@pytest.fixture
def small_or(_small_or: ad.AnnData) -> ad.AnnData:
    return _small_or.copy()


def test_fit_or_scales_each_view_to_its_bonferroni_quantile():
    rng = np.random.default_rng(0)
    neg = np.c_[rng.normal(5, 2, 3000), rng.normal(-4, 1, 3000), rng.normal(-3, 0.5, 3000)]
    fit = CO.fit_or(neg, 0.06)
    assert fit["fusion"] == "or" and fit["or_alpha"] == 0.06
    # oriented views: -margin, squeeze, twin; 1 at the 98% quantile of each, 0 at the median
    np.testing.assert_allclose(fit["or_center"], [5, -4, -3], atol=0.15)
    np.testing.assert_allclose(fit["or_scale"], [2 * 2.054, 2.054, 0.5 * 2.054], rtol=0.08)
    rec = {**CO.record((np.zeros((2, 4), np.float32), np.zeros(2, np.float32)),
                       {**CO.fit_fusion(neg[:100], neg[100:200] + 1, 0), **fit})}
    recipe = {"mean": np.zeros(4), "std": np.ones(4), "max_value": 10.0, "target_sum": 1e4}
    mod = CO.Consistency(torch.nn.Linear(4, 2), recipe, rec)
    parts = mod.or_parts_np(neg)
    # each view alone is over 1 in about α/3 of the clean cells; the OR's logit is the largest
    np.testing.assert_allclose((parts > 1).mean(axis=0), 0.02, atol=0.007)
    np.testing.assert_array_equal(mod.fuse_np(neg), parts.max(axis=1))
    # a small margin is suspicious: the margin view counts negated
    assert mod.fuse_np(np.array([[-5.0, -4, -3]]))[0] == pytest.approx(10 / (2 * 2.054), rel=0.08)
    assert mod.fuse_np(np.array([[15.0, -4, -3]]))[0] < 0.1
    t = mod.fuse(torch.as_tensor(neg[:50], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(t, parts[:50].max(axis=1), rtol=1e-5, atol=1e-5)


def test_or_detector_scores_and_record(small_or):
    a = small_or
    rec = a.uns["scadv"]["meta_or"]
    cons = rec["consistency"]
    assert rec["method"] == "consistency" and cons["fusion"] == "or"
    assert cons["or_alpha"] == 0.1 and (np.asarray(cons["or_scale"]) > 0).all()
    assert cons["n_adaptive_positives"] == 0  # no weights learnt on attacks: no 2nd round
    det = MC.load(a, "meta_or", source=None, device=CPU)
    x = model_x(a)
    v = CO.views_np(det.consistency, x, device=CPU)
    p = det.scores(x).scores["consistency"]
    parts = det.consistency.or_parts_np(v)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-parts.max(axis=1))), rtol=1e-6)
    # the attackers see the same logit (differentiable)
    logit = det.torch_logit(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), p, rtol=1e-4, atol=1e-6)
    # split-conformal at 10% on the validation cells: at most 10% of them are flagged
    val = (a.obs["scadv_split"] == "val").to_numpy()
    assert (p[val] >= rec["threshold"]).mean() <= 0.1
    # every count-space training attack of the validation cells is flagged on this easy data
    assert rec["validation"]["consistency"]["flagged"] > 0.9


def test_or_detector_survives_h5ad_and_rescoring(small_or, tmp_path):
    path = tmp_path / "or.h5ad"
    small_or.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert str(back.uns["scadv"]["meta_or"]["consistency"]["fusion"]) == "or"
    scadv.tl.meta_score(back, key="meta_or", key_added="again", progress=False)
    np.testing.assert_allclose(back.obs["scadv_again_score"], small_or.obs["scadv_meta_or_score"],
                               rtol=1e-6)
    # the OR and the logistic fusion are different detectors of the same views
    logistic = scadv.tl.meta_detect(small_or, budget=30, target_fpr=0.1, baselines=False,
                                    progress=False, copy=True)
    assert not np.allclose(logistic.obs["scadv_meta_score"], small_or.obs["scadv_meta_or_score"])


def test_querying_attacker_follows_the_or_rule(small_or):
    a = small_or
    scadv.tl.adaptive_count_attack(a, detector="meta_or", budget=30, cells="all",
                                   key_added="q", progress=False)
    name = "scadv_q_umis30"
    scadv.tl.meta_evaluate(a, key="meta_or", layers=[name], progress=False)
    rec = a.uns["scadv"]["q"]
    flipped = (a.obs[f"{name}_flipped"] == True).to_numpy()  # noqa: E712
    flagged = (a.obs[f"{name}_meta_or_flag"] == True).to_numpy()  # noqa: E712
    # what the attacker counts as an evasion is what the stored detector does not flag
    assert rec["success_rate"] == pytest.approx((flipped & ~flagged).mean(), abs=0.02)
    assert rec["detector"] == "meta_or"


@pytest.mark.parametrize("value", ["and", "OR", 3, None, True])
def test_bad_fusion(small_trained, value):
    with pytest.raises(ScadvInputError, match="fusion must be one of"):
        scadv.tl.meta_detect(small_trained, fusion=value, progress=False)


def test_tampered_or_record_is_refused(small_or):
    a = small_or
    rec = dict(a.uns["scadv"]["meta_or"])
    for key, value, match in (("or_scale", np.array([1.0, -1.0, 1.0], np.float32), "positive"),
                              ("or_center", np.zeros(2, np.float32), "or_center"),
                              ("fusion", "max", "fusion must be one of")):
        a.uns["scadv"]["bad"] = {**rec, "consistency": {**rec["consistency"], key: value}}
        with pytest.raises(ScadvInputError, match=match):
            scadv.tl.meta_score(a, key="bad", progress=False)
