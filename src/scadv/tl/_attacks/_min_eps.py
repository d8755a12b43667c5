"""Per-cell fragility in model space: the smallest L∞ budget ε at which PGD flips each cell.

Two stages, batched over cells:

1. **Bracket on a shared grid.** The gradient engine (:func:`._engine.run`, early stop) attacks
   every cell at a geometric grid of budgets in one pass; each cell's smallest flipping grid
   budget ``hi`` and the grid budget below it ``lo`` bracket its fragility.
2. **Bisection per cell** (in log space) with a per-row-budget PGD that uses the engine's exact
   input gradient (:func:`._engine.mlp_backward`): each round attacks every cell at its own
   midpoint, and a flip lowers ``hi``, no flip raises ``lo``, until ``hi / lo ≤ 1 + tol``.

The answer ``eps`` is always a budget at which an adversarial input was found (it is
returned); ``eps_no_flip`` is the bisection's lower end, a budget below it at which the attack
found no flip. A final check attacks each cell once more at ``eps · (1 − tol)`` with twice the
steps; where that flips (PGD is not exactly monotone in ε), ``eps`` is lowered to it and the
cell is bisected again below it (at most three rounds). ``eps`` is an upper bound on the true
minimal ε (as any attack's is), and a tight one where the final check finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ... import _model as M
from . import _engine as E

#: Rounds of "bisect, then check at ε·(1 − tol)" at most.
_CHECK_ROUNDS = 3


@dataclass
class Fragility:
    """Minimal-ε results per cell (``n`` cells, ``d`` model genes)."""

    #: Smallest L∞ budget found that flips the cell (``inf``: none up to the largest budget).
    eps: np.ndarray
    #: The bisection's lower end: a budget below ``eps`` at which the attack found no flip
    #: (0 when the grid's first budget flipped).
    eps_no_flip: np.ndarray
    #: ``(n, d)`` adversarial input found at ``eps`` (the clean input where ``eps`` is inf).
    adv: np.ndarray
    #: ``(n, C)`` logits of ``adv``.
    logits: np.ndarray
    #: ``grid_rows``, ``bisection_rows``, ``check_rows`` (cell-budget rows attacked per stage),
    #: ``check_lowered`` (cells whose ε the final check lowered).
    stats: dict[str, int] = field(default_factory=dict)


def min_eps(model: nn.Module, x0: np.ndarray, y: np.ndarray, *, targeted: bool = False,
            eps_min: float = 0.01, eps_max: float = 10.0, grid: int = 12, tol: float = 0.02,
            steps: int = 20, constraints: E.Constraints | None = None,
            device: torch.device | None = None, seed: int = 0, batch_size: int = 512,
            progress: bool = False) -> Fragility:
    """Smallest L∞ ε (model-input units) at which PGD flips each row of ``x0``.

    Parameters
    ----------
    model
        Classifier (model input → logits).
    x0, y
        Clean inputs and the class to leave (untargeted) or to reach (targeted).
    eps_min, eps_max, grid
        The geometric grid of budgets of the first stage (``grid`` values).
    tol
        Relative width at which the bisection stops (``hi / lo ≤ 1 + tol``).
    steps
        PGD steps per attack (margin loss, step ``2.5 · ε / steps``, early stop).
    constraints
        Genes allowed to move and a box (``lower`` / ``upper``); per-cell ``keep_zeros`` masks
        are supported too.
    """
    dev = device or torch.device("cpu")
    cons = constraints or E.Constraints()
    n = x0.shape[0]
    x0 = np.asarray(x0, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    model = model.to(dev).eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    stats = {"grid_rows": 0, "bisection_rows": 0, "check_rows": 0, "check_lowered": 0}
    try:
        eps_grid = np.geomspace(eps_min, eps_max, int(grid)).astype(np.float64)
        budget = E.Budget(eps=tuple(float(e) for e in eps_grid), norm="linf",
                          alpha=tuple(float(2.5 * e / steps) for e in eps_grid), steps=steps,
                          random_start=False, n_restarts=1, loss="margin")
        adv_g, logits_g = E.run(model, x0, y, budget, cons, targeted=targeted, device=dev,
                                seed=seed, batch_size=max(1, batch_size // len(eps_grid)),
                                progress=progress, early_stop=True)
        stats["grid_rows"] = n * len(eps_grid)
        flipped = _success(logits_g, y, targeted)  # (n_grid, n)
        first = np.where(flipped.any(axis=0), flipped.argmax(axis=0), -1)
        found = first >= 0
        hi = np.where(found, eps_grid[np.maximum(first, 0)], np.inf)
        lo = np.where(found & (first > 0), eps_grid[np.maximum(first - 1, 0)], 0.0)
        lo[~found] = eps_grid[-1]
        adv = x0.astype(np.float32, copy=True)
        logits = _logits(model, x0, dev)
        cols = np.flatnonzero(found)
        adv[cols] = adv_g[first[cols], cols]
        logits[cols] = logits_g[first[cols], cols]
        pgd = _RowPGD(model, cons, targeted=targeted, steps=steps, device=dev)
        check_pgd = _RowPGD(model, cons, targeted=targeted, steps=2 * steps, device=dev)
        todo = found.copy()
        for _ in range(_CHECK_ROUNDS):
            while True:
                open_ = todo & (hi > lo * (1 + tol))
                if not open_.any():
                    break
                idx = np.flatnonzero(open_)
                mid = np.where(lo[idx] > 0, np.sqrt(lo[idx] * hi[idx]), hi[idx] / 2)
                ok, a, lg = pgd(x0[idx], y[idx], mid, cells=idx)
                stats["bisection_rows"] += len(idx)
                hi[idx[ok]], adv[idx[ok]], logits[idx[ok]] = mid[ok], a[ok], lg[ok]
                lo[idx[~ok]] = mid[~ok]
            idx = np.flatnonzero(todo)
            check = hi[idx] * (1 - tol)
            ok, a, lg = check_pgd(x0[idx], y[idx], check, cells=idx)
            stats["check_rows"] += len(idx)
            stats["check_lowered"] += int(ok.sum())
            hi[idx[ok]], adv[idx[ok]], logits[idx[ok]] = check[ok], a[ok], lg[ok]
            lo[idx[~ok]] = np.maximum(lo[idx[~ok]], check[~ok])
            # PGD is not exactly monotone in ε: a lowered cell bisects again from the largest
            # grid budget below its new answer (the grid found no flip there)
            low = idx[ok]
            below = np.searchsorted(eps_grid, hi[low], side="left") - 1
            lo[low] = np.where(below >= 0, eps_grid[np.maximum(below, 0)], 0.0)
            todo[:] = False
            todo[low] = True
            if not todo.any():
                break
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return Fragility(hi, lo, adv, logits, stats)


def _success(logits: np.ndarray, y: np.ndarray, targeted: bool) -> np.ndarray:
    top = logits.argmax(axis=-1)
    return top == y if targeted else top != y


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    out = [model(torch.as_tensor(x[lo:lo + 4096], device=device)).cpu().numpy()
           for lo in range(0, len(x), 4096)]
    return np.concatenate(out).astype(np.float32) if out else np.empty((0, 0), np.float32)


class _RowPGD:
    """L∞ PGD with one budget per row, early stop (each row keeps its first success)."""

    def __init__(self, model: nn.Module, cons: E.Constraints, *, targeted: bool, steps: int,
                 device: torch.device) -> None:
        self.model, self.cons, self.targeted, self.steps, self.dev = (
            model, cons, targeted, steps, device)
        self.mlp = model if isinstance(model, M.MLP) else None

    def _grad(self, x: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grad = torch.empty_like(x)
        if self.mlp is not None:
            logits, _, success, _ = E.mlp_input_grad(self.mlp, x, y, loss="margin",
                                                     targeted=self.targeted, grad_out=grad)
        else:
            logits, _, success, _ = E.autograd_input_grad(self.model, x, y, loss="margin",
                                                          targeted=self.targeted, grad_out=grad)
        return logits, success, grad

    def __call__(self, x0: np.ndarray, y: np.ndarray, eps: np.ndarray, *, cells: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Success per row, adversarial inputs (clean where no success) and their logits."""
        dev, cons = self.dev, self.cons
        x0_t = torch.as_tensor(np.asarray(x0, dtype=np.float32), device=dev)
        y_t = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
        e = torch.as_tensor(np.asarray(eps, dtype=np.float32), device=dev).unsqueeze(1)
        lo, hi = x0_t - e, x0_t + e
        if cons.lower is not None:  # the box never moves a clean value
            box = torch.as_tensor(cons.lower, dtype=torch.float32, device=dev)
            lo = torch.maximum(lo, torch.minimum(x0_t, box))
        if cons.upper is not None:
            box = torch.as_tensor(cons.upper, dtype=torch.float32, device=dev)
            hi = torch.minimum(hi, torch.maximum(x0_t, box))
        mask = torch.ones_like(x0_t)
        if cons.genes is not None:
            mask = mask * torch.as_tensor(cons.genes, dtype=torch.float32, device=dev)
        if cons.keep_zeros is not None:
            frozen = torch.as_tensor(np.asarray(cons.keep_zeros)[cells], device=dev)
            mask = mask * (~frozen).to(torch.float32)
        alpha = 2.5 * e / self.steps
        n = len(x0_t)
        ok = torch.zeros(n, dtype=torch.bool, device=dev)
        adv = x0_t.clone()
        out_logits = torch.empty((n, 0), device=dev)
        alive = torch.arange(n, device=dev)
        x = x0_t.clone()
        for step in range(self.steps + 1):
            logits, success, grad = self._grad(x, y_t[alive])
            if step == 0:
                out_logits = logits.new_empty((n, logits.shape[1]))
                out_logits[:] = logits
            won = torch.nonzero(success).squeeze(1)
            if len(won):
                rows = alive[won]
                ok[rows], adv[rows], out_logits[rows] = True, x[won], logits[won]
            keep = torch.nonzero(~success).squeeze(1)
            if step == self.steps or len(keep) == 0:
                break
            alive, x, grad = alive[keep], x[keep], grad[keep]
            x = x + alpha[alive] * grad.sign_() * mask[alive]
            x = torch.minimum(torch.maximum(x, lo[alive]), hi[alive])
        return ok.cpu().numpy(), adv.cpu().numpy(), out_logits.cpu().numpy()
