"""The greedy count-space search: the recipe in torch, whole counts, caps, library range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

from scadv import _model as M
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from scadv.tl._detect import _count_search as CS
from tests.conftest import model_counts

CPU = torch.device("cpu")


def test_transform_is_the_recipe(small_trained):
    a = small_trained
    recipe = a.uns["scadv"]["prepare"]
    counts = model_counts(a)
    lib = a.obs["scadv_library_size"].to_numpy()
    t = CS.CountTransform.from_recipe(recipe, CPU)
    got = t(torch.as_tensor(counts), torch.as_tensor(lib)).numpy()
    want = R.lognorm_to_model(R.lognormalize(sparse.csr_matrix(counts), target_sum=float(
        recipe["target_sum"]), library_size=lib), recipe)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got, R.source(a, recipe).dense(), atol=2e-6)
    with pytest.raises(ScadvInputError, match="raw counts"):
        CS.CountTransform.from_recipe({**recipe, "input_kind": "lognorm"}, CPU)


def test_search_flips_with_whole_counts_within_the_caps(small_trained):
    a = small_trained
    rec = a.uns["scadv"]["classifier"]
    recipe = rec["prepare"]
    net = M.from_record(rec, CPU)
    net.requires_grad_(False)
    counts = model_counts(a)[:40]
    lib = a.obs["scadv_library_size"].to_numpy()[:40]
    x0 = R.source(a, recipe).rows(np.arange(40))
    pred = M.infer(net, x0, device=CPU)[1].argmax(1)
    lo, hi = float(lib.min()), float(lib.max())
    res = CS.search(CS.margin_objective(net, pred, device=CPU), counts, lib, recipe,
                    budget=40, cap_add=2, cap_remove=2, library_range=(lo, hi), device=CPU)
    delta = res.delta.toarray()
    assert res.success.mean() > 0.5
    np.testing.assert_array_equal(delta, np.round(delta))
    assert np.abs(delta).max() <= 2 and (counts + delta >= 0).all()
    used = np.abs(delta).sum(axis=1)
    np.testing.assert_array_equal(used[res.success], res.umis[res.success])
    new_lib = lib + delta.sum(axis=1)
    assert ((new_lib >= min(lo, 1) - 1e-9) & (new_lib <= np.maximum(hi, lib))).all()
    # the returned model input is the recipe's of the returned counts, and it is flipped
    x = R.lognorm_to_model(R.lognormalize(sparse.csr_matrix(counts + delta), target_sum=float(
        recipe["target_sum"]), library_size=new_lib), recipe)
    np.testing.assert_allclose(res.x, x, atol=2e-6)
    flipped = M.infer(net, x, device=CPU)[1].argmax(1) != pred
    np.testing.assert_array_equal(flipped[res.success], True)
    # pushed to a margin of 2: never cheaper than the first flip
    res2 = CS.search(CS.margin_objective(net, pred, kappa=2.0, device=CPU), counts, lib, recipe,
                     budget=40, cap_add=2, cap_remove=2, library_range=(lo, hi), device=CPU)
    both = res.success & res2.success
    assert (res2.umis[both] >= res.umis[both]).all()
    logits = M.infer(net, res2.x, device=CPU)[1]
    top = np.sort(logits, axis=1)
    other = np.where(np.arange(logits.shape[1])[None] == pred[:, None], -np.inf, logits).max(1)
    assert (other - logits[np.arange(40), pred])[res2.success].min() > 2.0
    assert np.isfinite(top).all()


def test_an_unreachable_goal_uses_the_whole_budget(small_trained):
    a = small_trained
    rec = a.uns["scadv"]["classifier"]
    net = M.from_record(rec, CPU)
    counts = model_counts(a)[:5]
    lib = a.obs["scadv_library_size"].to_numpy()[:5]

    def never(x, rows):
        return -x.sum(dim=1), torch.zeros(len(x), dtype=torch.bool)
    res = CS.search(never, counts, lib, rec["prepare"], budget=3, device=CPU)
    assert (res.umis == -1).all() and not res.success.any()
    assert (np.abs(res.delta.toarray()).sum(axis=1) == 3).all()
    del net
