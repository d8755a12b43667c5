"""Per-cell minimal L∞ budget (model space)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from scadv.tl._attacks import _engine as E
from scadv.tl._attacks import _min_eps as F

from . import _tiny

CPU = torch.device("cpu")


def test_linear_model_gets_its_exact_minimal_budget():
    """For two classes and a linear model the smallest L∞ flip is |margin| / ‖w₁ − w₀‖₁."""
    torch.manual_seed(0)
    lin = nn.Linear(20, 2).eval()
    x0 = np.random.default_rng(0).normal(size=(80, 20)).astype(np.float32)
    with torch.no_grad():
        logits = lin(torch.as_tensor(x0)).numpy()
    y = logits.argmax(axis=1)
    w = (lin.weight[1] - lin.weight[0]).detach().numpy()
    exact = np.abs(logits[:, 1] - logits[:, 0]) / np.abs(w).sum()
    res = F.min_eps(lin, x0, y, eps_min=1e-3, eps_max=20.0, tol=0.01, device=CPU)
    assert np.isfinite(res.eps).all()
    assert (res.eps >= exact * (1 - 1e-4)).all()  # no attack beats the true minimum
    assert (res.eps <= exact * 1.011 + 1e-6).all()
    assert (res.eps_no_flip <= res.eps).all() and (res.eps_no_flip >= exact * 0.95).all()


def test_every_answer_is_a_real_flip_within_its_budget():
    net = _tiny.model(12, 4, 0, rank=5)
    x0 = np.random.default_rng(1).normal(size=(40, 12)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.as_tensor(x0)).argmax(dim=1).numpy()
    keep = np.random.default_rng(2).random((40, 12)) < 0.3
    cons = E.Constraints(keep_zeros=keep)
    res = F.min_eps(net, x0, y, eps_max=50.0, tol=0.02, constraints=cons, device=CPU)
    found = np.isfinite(res.eps)
    assert found.mean() > 0.9
    with torch.no_grad():
        pred = net(torch.as_tensor(res.adv)).argmax(dim=1).numpy()
    assert (pred[found] != y[found]).all()
    np.testing.assert_array_equal(res.logits.argmax(axis=1), pred)
    dist = np.abs(res.adv - x0).max(axis=1)
    assert (dist[found] <= res.eps[found] * (1 + 1e-5)).all()
    assert (res.adv[keep] == x0[keep]).all()
    assert (res.eps_no_flip[found] < res.eps[found]).all()
    # the bracket is tight for most cells (PGD is not exactly monotone in ε: a cell lowered
    # by the last check keeps a wider bracket)
    assert (res.eps[found] <= res.eps_no_flip[found] * 1.0201 + 1e-9).mean() > 0.8
    assert res.stats["check_rows"] >= found.sum()
    again = F.min_eps(net, x0, y, eps_max=50.0, tol=0.02, constraints=cons, device=CPU)
    np.testing.assert_array_equal(res.eps, again.eps)
