"""The count-space attack engine: exactness against brute force, constraints, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse
from torch import nn

from scadv.tl._counts import _engine as CE
from scadv.tl._counts import _transform as T

from . import _tiny

CPU = torch.device("cpu")


def _attack(net, counts, rest, y, rec, *, budgets=(1, 2, 3, 4), beam=1, top_k=1, targeted=False,
            seed=0, batch_size=64, **limits):
    return CE.run(net, counts, rest, y, T.CountTransform.from_recipe(rec),
                  search=CE.Search(budgets=budgets, beam=beam, top_k=top_k),
                  limits=CE.Limits(**limits), targeted=targeted, device=CPU, seed=seed,
                  batch_size=batch_size)


def _problem(seed, n=24, g=5, n_classes=3):
    rec = _tiny.recipe(g, seed)
    net = _tiny.model(g, n_classes, seed)
    counts, rest = _tiny.cells(n, g, seed)
    y = _tiny.predict(net, counts, rest, rec)
    return rec, net, counts, rest, y


def _check_result(res, net, counts, rest, y, rec, *, cap_add, cap_remove, library=None,
                  detected_only=False, genes=None, targeted=False):
    """Everything a result promises, checked through the numpy recipe."""
    lib0 = counts.sum(axis=1) + rest
    for i, b in enumerate(res.budgets):
        d = res.deltas[i].toarray()
        assert res.deltas[i].dtype == np.int32
        cost = np.abs(d).sum(axis=1)
        assert (cost <= b).all()
        adv = counts + d
        assert (adv >= 0).all()
        assert (d <= cap_add).all() and (-d <= cap_remove).all()
        if detected_only:
            assert (d[counts == 0] == 0).all()
        if genes is not None:
            assert (d[:, ~genes] == 0).all()
        lib = adv.sum(axis=1) + rest
        if library is not None:
            assert (lib >= np.minimum(library[0], lib0)).all()
            assert (lib <= np.maximum(library[1], lib0)).all()
        pred = _tiny.predict(net, adv, rest, rec)
        np.testing.assert_array_equal(res.pred[i], pred)
        ok = pred == y if targeted else pred != y
        np.testing.assert_array_equal(res.success[i], ok)
        within = (res.min_umis >= 0) & (res.min_umis <= b)
        np.testing.assert_array_equal(res.success[i], within)
        np.testing.assert_array_equal(cost[within], res.min_umis[within])


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize(("detected_only", "library"), [(False, None), (True, None),
                                                         (False, (4000.0, 4004.0))])
def test_exhaustive_beam_finds_the_brute_force_minimum(targeted, detected_only, library):
    rec, net, counts, rest, y = _problem(seed=3)
    if targeted:
        y = (y + 1) % 3
    if library is not None:  # cells around the window's edges
        rest = rest - rest + 4001 - counts.sum(axis=1)
        rest[::3] += 2
    limits = {"cap_add": 2, "cap_remove": 2, "library": library, "detected_only": detected_only}
    truth = _tiny.brute_force(net, counts, rest, y, rec, budget=4, targeted=targeted, **limits)
    assert len(np.unique(truth[truth > 0])) >= 2  # a non-trivial case
    # 360 states of 5 genes cost 4 UMIs (caps 2): a beam of 400 keeps them all
    exact = _attack(net, counts, rest, y, rec, beam=400, top_k=10, targeted=targeted, **limits)
    np.testing.assert_array_equal(exact.min_umis, truth)
    _check_result(exact, net, counts, rest, y, rec, targeted=targeted, **limits)
    greedy = _attack(net, counts, rest, y, rec, targeted=targeted, **limits)
    _check_result(greedy, net, counts, rest, y, rec, targeted=targeted, **limits)
    # any attack gives an upper bound; the greedy one never beats the true minimum
    found = greedy.min_umis >= 0
    assert (truth[found] >= 0).all() and (greedy.min_umis[found] >= truth[found]).all()


def test_rescoring_and_beam_never_lose_to_plain_greedy_on_average():
    rec, net, counts, rest, y = _problem(seed=5, n=200, g=12)
    budgets = (1, 2, 3, 4, 5, 6)
    plain = _attack(net, counts, rest, y, rec, budgets=budgets, cap_add=3, cap_remove=3)
    strong = _attack(net, counts, rest, y, rec, budgets=budgets, beam=4, top_k=8, cap_add=3,
                     cap_remove=3)
    assert strong.success[-1].sum() >= plain.success[-1].sum()
    assert strong.success[-1].mean() > 0.3  # the attack does something on this model


def test_same_seed_same_result_and_batching_changes_nothing():
    rec, net, counts, rest, y = _problem(seed=1, n=60, g=10)
    kw = {"beam": 3, "top_k": 6, "cap_add": 3, "cap_remove": 1, "budgets": (1, 3, 6)}
    a = _attack(net, counts, rest, y, rec, seed=7, **kw)
    b = _attack(net, counts, rest, y, rec, seed=7, **kw)
    c = _attack(net, sparse.csr_matrix(counts), rest, y, rec, seed=7, batch_size=7, **kw)
    for other in (b, c):
        np.testing.assert_array_equal(a.min_umis, other.min_umis)
        np.testing.assert_array_equal(a.pred, other.pred)
        for da, db in zip(a.deltas, other.deltas, strict=True):
            assert (da != db).nnz == 0


def test_generic_module_path_matches_the_mlp_fast_path():
    rec, net, counts, rest, y = _problem(seed=2, n=40, g=8)

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    kw = {"beam": 2, "top_k": 5, "cap_add": 2, "cap_remove": 2}
    fast = _attack(net, counts, rest, y, rec, **kw)
    slow = _attack(Wrapped(net), counts, rest, y, rec, **kw)
    np.testing.assert_array_equal(fast.min_umis, slow.min_umis)
    assert fast.stats["candidate_rows"] == slow.stats["candidate_rows"] > 0


def test_low_rank_input_layer_fast_path_is_exact():
    rec = _tiny.recipe(6, 4)
    net = _tiny.model(6, 3, 4, rank=3)
    counts, rest = _tiny.cells(30, 6, 4)
    y = _tiny.predict(net, counts, rest, rec)
    truth = _tiny.brute_force(net, counts, rest, y, rec, budget=3, cap_add=2, cap_remove=2,
                              library=None, detected_only=False, targeted=False)
    exact = _attack(net, counts, rest, y, rec, budgets=(1, 2, 3), beam=300, top_k=12,
                    cap_add=2, cap_remove=2)
    np.testing.assert_array_equal(exact.min_umis, truth)


def test_a_cell_already_on_target_costs_zero_and_stalled_cells_keep_their_state():
    rec, net, counts, rest, y = _problem(seed=3, n=10)
    res = _attack(net, counts, rest, y, rec, targeted=True, cap_add=1, cap_remove=0)
    assert (res.min_umis == 0).all() and res.success.all()
    assert all(d.nnz == 0 for d in res.deltas)
    # one gene allowed, one UMI: after one edit nothing is left to try
    genes = np.zeros(5, dtype=bool)
    genes[0] = True
    res = _attack(net, counts, rest, y, rec, cap_add=1, cap_remove=0, genes=genes)
    _check_result(res, net, counts, rest, y, rec, cap_add=1, cap_remove=0, genes=genes)
    assert (np.abs(res.deltas[-1].toarray()).sum(axis=1) <= 1).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), g=st.integers(2, 9), cap_add=st.integers(0, 3),
       cap_remove=st.integers(0, 3), detected_only=st.booleans(), beam=st.integers(1, 3),
       top_k=st.integers(1, 6), window=st.sampled_from([None, (0, 2), (3, 1)]),
       targeted=st.booleans(), mask_genes=st.booleans())
def test_constraints_hold_for_any_problem(seed, g, cap_add, cap_remove, detected_only, beam,
                                          top_k, window, targeted, mask_genes):
    rng = np.random.default_rng(seed)
    rec = _tiny.recipe(g, seed)
    net = _tiny.model(g, 3, seed)
    counts, rest = _tiny.cells(12, g, seed)
    y = _tiny.predict(net, counts, rest, rec)
    if targeted:
        y = (y + 1 + rng.integers(0, 2, len(y))) % 3
    lib0 = counts.sum(axis=1) + rest
    library = None if window is None else (float(np.median(lib0) - window[0]),
                                           float(np.median(lib0) + window[1]))
    genes = rng.random(g) < 0.6 if mask_genes else None
    limits = {"cap_add": cap_add, "cap_remove": cap_remove, "library": library,
              "detected_only": detected_only, "genes": genes}
    res = _attack(net, counts, rest, y, rec, budgets=(1, 2, 5, 8), beam=beam, top_k=top_k,
                  targeted=targeted, **limits)
    _check_result(res, net, counts, rest, y, rec, targeted=targeted, **limits)
