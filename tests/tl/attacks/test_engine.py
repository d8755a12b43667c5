"""The attack engine: exact gradients, active-set bookkeeping, custom objectives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from scadv import _model as M
from scadv.tl._attacks import _engine as E


@pytest.fixture(params=[None, 7], ids=["plain", "low-rank"])
def mlp(request) -> M.MLP:
    torch.manual_seed(0)
    model = M.MLP(40, 5, hidden=(32, 16, 8), dropout=(0.4, 0.4, 0.3), input_rank=request.param)
    return model.eval()


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("targeted", [False, True])
def test_hand_derived_gradient_equals_autograd(mlp, loss, targeted):
    x = torch.randn(64, 40)
    y = torch.randint(0, 5, (64,))
    g_fast = torch.empty_like(x)
    g_auto = torch.empty_like(x)
    lf, sf, okf, _ = E.mlp_input_grad(mlp, x, y, loss=loss, targeted=targeted, grad_out=g_fast)
    la, sa, oka, _ = E.autograd_input_grad(mlp, x, y, loss=loss, targeted=targeted,
                                           grad_out=g_auto)
    torch.testing.assert_close(lf, la)
    torch.testing.assert_close(sf, sa)
    assert torch.equal(okf, oka)
    torch.testing.assert_close(g_fast, g_auto, rtol=1e-5, atol=1e-6)
    assert g_fast.abs().sum() > 0


def _run(model, x, y, **kw):
    budget = E.Budget(eps=kw.pop("eps", (0.3, 1.0)), norm=kw.pop("norm", "linf"),
                      alpha=kw.pop("alpha", (0.1, 0.1)), steps=kw.pop("steps", 10),
                      random_start=kw.pop("random_start", False),
                      n_restarts=kw.pop("n_restarts", 1), loss=kw.pop("loss", "ce"))
    return E.run(model, x, y, budget, kw.pop("constraints", E.Constraints()), targeted=False,
                 device=torch.device("cpu"), seed=0, batch_size=kw.pop("batch_size", 1000),
                 progress=False, **kw)


def test_fast_and_generic_paths_agree_end_to_end(mlp):
    """The same attack through scadv's MLP fast path and through autograd on a wrapper."""

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    x = np.random.default_rng(0).normal(size=(50, 40)).astype(np.float32)
    with torch.no_grad():
        y = mlp(torch.from_numpy(x)).argmax(1).numpy()
    adv_fast, logits_fast = _run(mlp, x, y)
    adv_gen, logits_gen = _run(Wrapped(mlp), x, y)
    np.testing.assert_allclose(adv_fast, adv_gen, atol=1e-5)
    np.testing.assert_allclose(logits_fast, logits_gen, atol=1e-4)


def test_batches_and_compaction_do_not_change_results(mlp):
    x = np.random.default_rng(1).normal(size=(97, 40)).astype(np.float32)
    with torch.no_grad():
        y = mlp(torch.from_numpy(x)).argmax(1).numpy()
    one, lo1 = _run(mlp, x, y, batch_size=1000)
    many, lo2 = _run(mlp, x, y, batch_size=13)
    np.testing.assert_allclose(one, many, atol=1e-6)
    np.testing.assert_allclose(lo1, lo2, atol=1e-5)
    # early-stopped cells keep their first successful iterate, the rest run to the end
    success = lo1.argmax(-1) != y[None]
    _, lo_classic = _run(mlp, x, y, early_stop=False)
    assert success.sum() >= (lo_classic.argmax(-1) != y[None]).sum()
    # with budgets that flip most cells early, the active set shrinks
    big = {"eps": (2.0, 5.0), "alpha": (0.5, 0.5)}
    stats: dict[str, int] = {}
    _, logits = _run(mlp, x, y, stats=stats, **big)
    assert (logits.argmax(-1) != y[None]).mean() > 0.5
    classic_stats: dict[str, int] = {}
    _run(mlp, x, y, early_stop=False, stats=classic_stats, **big)
    assert stats["backward_rows"] < 0.75 * classic_stats["backward_rows"]
    # classic: 2 budgets × 97 cells × 10 steps, the first step shared by the budgets
    assert classic_stats["backward_rows"] == 97 * (1 + 2 * 9)


def test_budget_and_mask_are_exact(mlp):
    x = np.random.default_rng(2).normal(size=(30, 40)).astype(np.float32)
    y = np.zeros(30, dtype=np.int64)
    genes = np.zeros(40, dtype=bool)
    genes[:10] = True
    keep = np.zeros((30, 40), dtype=bool)
    keep[:, 5] = True
    cons = E.Constraints(genes=genes, keep_zeros=keep, lower=np.full(40, -0.5, np.float32),
                         upper=np.full(40, 0.5, np.float32))
    adv, _ = _run(mlp, x, y, constraints=cons, early_stop=False, eps=(0.2, 2.0))
    delta = adv - x[None]
    assert np.abs(delta[0]).max() <= 0.2 + 1e-6
    assert (delta[:, :, 10:] == 0).all() and (delta[:, :, 5] == 0).all()
    inside = (x >= -0.5) & (x <= 0.5)
    moved = adv[1][:, :10][inside[:, :10]]
    assert moved.min() >= -0.5 - 1e-6 and moved.max() <= 0.5 + 1e-6
    # a clean value outside the box may move back toward it, never further out
    above, below = x[:, :10] > 0.5, x[:, :10] < -0.5
    assert above.any() and below.any()
    assert (adv[1][:, :10][above] <= x[:, :10][above] + 1e-6).all()
    assert (adv[1][:, :10][below] >= x[:, :10][below] - 1e-6).all()


def test_l2_ball(mlp):
    x = np.random.default_rng(3).normal(size=(20, 40)).astype(np.float32)
    y = np.zeros(20, dtype=np.int64)
    for random_start in (False, True):
        adv, _ = _run(mlp, x, y, norm="l2", eps=(0.5, 2.0), alpha=(0.2, 0.8), early_stop=False,
                      random_start=random_start, n_restarts=2)
        norms = np.linalg.norm(adv - x[None], axis=-1)
        assert norms[0].max() <= 0.5 + 1e-5 and norms[1].max() <= 2.0 + 1e-5
        assert norms[1].mean() > 1.0


def test_custom_objective_is_used():
    """An objective that rewards moving gene 0 up moves gene 0 up, whatever the logits."""
    torch.manual_seed(0)
    model = M.MLP(10, 3, hidden=(8,), dropout=(0.0,)).eval()
    x = np.zeros((5, 10), dtype=np.float32)
    y = np.zeros(5, dtype=np.int64)
    budget = E.Budget(eps=(0.5,), norm="linf", alpha=(0.1,), steps=10, random_start=False,
                      n_restarts=1, loss="ce")
    adv, _ = E.run(model, x, y, budget, E.Constraints(), targeted=False,
                   device=torch.device("cpu"), seed=0, batch_size=10, progress=False,
                   early_stop=False, objective=lambda xx, logits, yy: xx[:, 0])
    np.testing.assert_allclose(adv[0][:, 0], 0.5, atol=1e-6)


def test_model_parameters_keep_requires_grad(mlp):
    x = np.zeros((3, 40), dtype=np.float32)
    _run(mlp, x, np.zeros(3, dtype=np.int64))
    assert all(p.requires_grad for p in mlp.parameters())


class _Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_kl_score_gradient_equals_autograd(mlp):
    """TRADES' inner objective through the hand-derived backward pass and through autograd."""
    x = torch.randn(32, 40)
    with torch.no_grad():
        p = torch.softmax(mlp(x + 0.3), dim=1)
    fast = torch.empty_like(x)
    _, score, _, _ = E.mlp_backward(mlp, x, E.kl_score(p), grad_out=fast)
    xg = x.clone().requires_grad_(True)
    kl = (p * (torch.log(p) - torch.log_softmax(mlp(xg), dim=1))).sum(1)
    (auto,) = torch.autograd.grad(kl.sum(), xg)
    torch.testing.assert_close(score, kl.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast, auto, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "margin", "kl"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturb_for_training_loops(mlp, loss, norm):
    x = torch.randn(50, 40)
    with torch.no_grad():
        y = mlp(x).argmax(1)
        p = torch.softmax(mlp(x), dim=1)
    mlp.train()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    kw = {"eps": 0.5, "alpha": 0.15, "steps": 5, "norm": norm, "loss": loss,
          "random_start": True, "p_clean": p}
    adv = E.perturb(mlp, x, y, gen=torch.Generator().manual_seed(0), **kw)
    # the model is back in train mode, untouched, with no gradient accumulated
    assert mlp.training
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())
    assert all(q.grad is None and q.requires_grad for q in mlp.parameters())
    assert not adv.requires_grad
    dist = (adv - x).abs().amax(1) if norm == "linf" else (adv - x).norm(dim=1)
    assert dist.max() <= 0.5 + 1e-5 and dist.mean() > 0.2
    # it attacks: the objective rises from the clean cells
    mlp.eval()
    with torch.no_grad():
        clean, attacked = mlp(x), mlp(adv)
    if loss == "kl":
        gain = E.kl_score(p)(attacked)[0].mean() - E.kl_score(p)(clean)[0].mean()
    else:
        gain = (nn.functional.cross_entropy(attacked, y)
                - nn.functional.cross_entropy(clean, y))
    assert gain > 0
    # scadv's fast path and autograd on a wrapped module give the same adversarial batch (up
    # to the sign of a gradient entry within rounding of zero)
    other = E.perturb(_Wrapped(mlp).eval(), x, y, gen=torch.Generator().manual_seed(0), **kw)
    assert ((adv - other).abs() > 1e-4).float().mean() < 0.02
    assert not mlp.training  # eval mode was kept too
