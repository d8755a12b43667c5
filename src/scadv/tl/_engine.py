"""The gradient attack engine behind :func:`scadv.tl.pgd` and :func:`scadv.tl.fgsm`.

Design, for speed on a CPU as on a GPU:

* **Budgets share a batch.** Every (budget, cell) pair is one row of a flat
  ``(n_eps · n_cells) × n_genes`` batch, so all budgets go through the network together.
* **No allocation per step.** A handful of row × gene buffers are allocated once per batch;
  every step works in place. (Fresh multi-megabyte tensors per step cost more in page faults
  than the arithmetic itself.)
* **Active set.** With ``early_stop`` a row that succeeded is written out and frozen; once a
  quarter of the batch has finished, finished rows are compacted away, so later steps only
  compute the rows still standing. A success is never lost.
* **Exact input gradient without autograd** for scadv's own :class:`~scadv._model.MLP`
  (a chain of linear layers and ReLUs), written straight into the gradient buffer. Any other
  ``nn.Module``, or a custom objective, goes through autograd.
* **Shared first step.** Without a random start every budget starts at the clean cell, so the
  first gradient is computed once per cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import _device as D
from .. import _model as M

Norm = Literal["linf", "l2"]
Loss = Literal["ce", "margin"]
#: ``objective(x, logits, y) -> per-row score to maximise`` (differentiable in ``x``).
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Compact the batch once this fraction of its rows has finished.
_COMPACT_AT = 0.25


@dataclass(frozen=True)
class Budget:
    """What the attacker may do: the norm ball, step rule and number of runs."""

    eps: tuple[float, ...]
    norm: Norm
    alpha: tuple[float, ...]
    steps: int
    random_start: bool
    n_restarts: int
    loss: Loss


@dataclass
class Constraints:
    """Which coordinates may move, and the box they must stay in (model space)."""

    genes: np.ndarray | None = None  # (n_genes,) bool: genes allowed to move
    keep_zeros: np.ndarray | None = None  # (n_cells, n_genes) bool: frozen entries
    lower: np.ndarray | None = None  # (n_genes,)
    upper: np.ndarray | None = None  # (n_genes,)


def objective_and_grad(logits: torch.Tensor, y: torch.Tensor, *, loss: Loss, targeted: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row attacker score (to maximise), success flag, and d score / d logits.

    Untargeted: push away from class ``y`` — cross-entropy of ``y``, or the margin
    ``max_{j≠y} z_j − z_y``; success when the top class is not ``y``. Targeted: pull toward
    ``y`` — minus its cross-entropy, or ``z_y − max_{j≠y} z_j``; success when the top class is
    ``y``.
    """
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    onehot = torch.zeros_like(logits).scatter_(1, y.unsqueeze(1), 1.0)
    if loss == "ce":
        lse = torch.logsumexp(logits, dim=1)
        score = lse - z_y
        dlogits = torch.softmax(logits, dim=1) - onehot
    else:
        other = logits.masked_fill(onehot.bool(), float("-inf"))
        best, j = other.max(dim=1)
        score = best - z_y
        dlogits = torch.zeros_like(logits).scatter_(1, j.unsqueeze(1), 1.0) - onehot
    if targeted:
        score, dlogits = -score, -dlogits
    top = logits.argmax(dim=1)
    success = top == y if targeted else top != y
    return score, success, dlogits


def mlp_input_grad(model: M.MLP, x: torch.Tensor, y: torch.Tensor, *, loss: Loss,
                   targeted: bool, grad_out: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, score, success and d score / d x of scadv's MLP in eval mode, without autograd.

    The backward pass is the exact chain rule of linear layers and ReLUs (dropout is the
    identity in eval mode); the input gradient is written into ``grad_out`` when given.
    """
    with torch.no_grad():
        linears = [m for m in model.body if isinstance(m, nn.Linear)]
        h = x
        if isinstance(model.input, nn.Linear):
            h = torch.addmm(model.input.bias, h, model.input.weight.t())
        masks = []
        for lin in linears:
            h = torch.addmm(lin.bias, h, lin.weight.t())
            masks.append(h > 0)
            h.clamp_(min=0)
        logits = torch.addmm(model.head.bias, h, model.head.weight.t())
        score, success, dlogits = objective_and_grad(logits, y, loss=loss, targeted=targeted)
        if grad_out is None:
            return logits, score, success, None
        g = dlogits @ model.head.weight
        weights = [lin.weight for lin in linears]
        if isinstance(model.input, nn.Linear):
            weights = [model.input.weight, *weights]
            masks = [None, *masks]
        for i in range(len(weights) - 1, -1, -1):
            if masks[i] is not None:
                g.mul_(masks[i])
            if i == 0:
                torch.mm(g, weights[0], out=grad_out)
            else:
                g = g @ weights[i]
        return logits, score, success, grad_out


def autograd_input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: Loss,
                        targeted: bool, grad_out: torch.Tensor | None,
                        objective: Objective | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same as :func:`mlp_input_grad` for any differentiable model (or custom objective)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(grad_out is not None)
        logits = model(xg)
        score, success, _ = objective_and_grad(logits, y, loss=loss, targeted=targeted)
        if objective is not None:
            score = objective(xg, logits, y)
        if grad_out is not None:
            (grad,) = torch.autograd.grad(score.sum(), xg)
            grad_out.copy_(grad)
    return logits.detach(), score.detach(), success, grad_out


def run(model: nn.Module, x0: np.ndarray, y: np.ndarray, budget: Budget, constraints: Constraints,
        *, targeted: bool, device: torch.device, seed: int, batch_size: int, progress: bool,
        early_stop: bool = True, objective: Objective | None = None,
        stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attack the rows of ``x0``; returns adversarial inputs and logits, ``(n_eps, n, ·)`` each.

    Parameters
    ----------
    model
        Classifier in eval mode (its parameters are not changed; gradients are taken with
        respect to the input only).
    x0, y
        Clean inputs and, per cell, the class to leave (untargeted) or reach (targeted).
    budget, constraints
        The threat model.
    early_stop
        Freeze each row at its first success (default); ``False`` runs all steps and returns
        the last iterate (classic PGD).
    objective
        Custom differentiable score to maximise (e.g. an adaptive attacker's); success is still
        judged on the logits.
    stats
        If given, receives ``'forward_rows'`` and ``'backward_rows'``: rows that went through a
        forward and a backward pass.
    """
    n, d = x0.shape
    n_eps = len(budget.eps)
    model = model.to(device).eval()
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    fast = isinstance(model, M.MLP) and objective is None
    counts = stats if stats is not None else {}
    gen = D.generator(seed, device)
    eps = torch.tensor(budget.eps, dtype=torch.float32, device=device)
    alpha = torch.tensor(budget.alpha, dtype=torch.float32, device=device)
    genes = None if constraints.genes is None else torch.as_tensor(
        constraints.genes, dtype=torch.float32, device=device)
    lower = None if constraints.lower is None else torch.as_tensor(
        constraints.lower, dtype=torch.float32, device=device)
    upper = None if constraints.upper is None else torch.as_tensor(
        constraints.upper, dtype=torch.float32, device=device)

    n_classes = model.head.out_features if fast else _n_out(model, d, device)
    adv_out = np.empty((n_eps, n, d), dtype=np.float32)
    logit_out = np.empty((n_eps, n, n_classes), dtype=np.float32)
    restarts = budget.n_restarts if budget.random_start else 1
    bar = tqdm(total=-(-n // batch_size) * restarts * budget.steps, desc="attack", unit="step",
               disable=not progress, leave=False)
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            keep_zeros = None if constraints.keep_zeros is None else constraints.keep_zeros[lo:hi]
            batch = _Batch(model, torch.as_tensor(x0[lo:hi], device=device),
                           torch.as_tensor(y[lo:hi], device=device), eps, alpha, budget,
                           n_classes=n_classes,
                           genes=genes, keep_zeros=keep_zeros, lower=lower, upper=upper,
                           targeted=targeted, early_stop=early_stop, fast=fast,
                           objective=objective, gen=gen, bar=bar, counts=counts)
            x_adv, logits = batch.attack(restarts)
            adv_out[:, lo:hi] = x_adv.view(n_eps, hi - lo, d).cpu().numpy()
            logit_out[:, lo:hi] = logits.view(n_eps, hi - lo, -1).cpu().numpy()
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    return adv_out, logit_out


def _n_out(model: nn.Module, d: int, device: torch.device) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, d, device=device)).shape[1])


class _Batch:
    """One batch of cells × budgets, attacked in place in preallocated buffers.

    Row ``r`` is budget ``r // b`` of cell ``r % b``. The first ``n`` rows of each buffer hold
    the rows still being attacked; ``idx[:n]`` says which original row each one is.
    """

    def __init__(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                 alpha: torch.Tensor, budget: Budget, *, n_classes: int,
                 genes: torch.Tensor | None,
                 keep_zeros: np.ndarray | None, lower: torch.Tensor | None,
                 upper: torch.Tensor | None, targeted: bool, early_stop: bool, fast: bool,
                 objective: Objective | None, gen: torch.Generator, bar: tqdm,
                 counts: dict[str, int]) -> None:
        self.model, self.budget, self.targeted = model, budget, targeted
        self.early_stop, self.fast, self.objective = early_stop, fast, objective
        self.gen, self.bar, self.counts = gen, bar, counts
        self.x0, self.b = x0, x0.shape[0]
        self.n_eps = len(budget.eps)
        rows = self.n_eps * self.b
        device = x0.device
        self.y_rows = y.repeat(self.n_eps)
        self.eps_rows = eps.repeat_interleave(self.b).unsqueeze(1)
        self.alpha_rows = alpha.repeat_interleave(self.b).unsqueeze(1)
        self.lower, self.upper = lower, upper
        movable = genes
        if keep_zeros is not None:
            free = torch.as_tensor(~keep_zeros, dtype=torch.float32, device=device)
            movable = free if genes is None else free * genes
        self.per_row_mask = movable is not None and movable.dim() == 2
        self.movable = movable  # (d,) or (b, d) — expanded per row when per-row
        shape = (rows, x0.shape[1])
        self.X = torch.empty(shape, device=device)  # iterate
        self.G = torch.empty(shape, device=device)  # input gradient
        self.S = torch.empty(shape, device=device)  # scratch for compaction
        self.OUT = torch.empty(shape, device=device)  # results, by original row
        self.LO = torch.empty(shape, device=device) if self._needs_box() else None
        self.HI = torch.empty(shape, device=device) if self._needs_box() else None
        self.X0 = torch.empty(shape, device=device) if budget.norm == "l2" else None
        self.M = torch.empty(shape, device=device) if self.per_row_mask else None
        self.out_logits = torch.empty((rows, n_classes), device=device)
        self.succeeded = torch.zeros(rows, dtype=torch.bool, device=device)

    def _needs_box(self) -> bool:
        return self.budget.norm == "linf" or self.lower is not None or self.upper is not None

    # ---- set-up of the rows to attack -----------------------------------------------------

    def _load(self, rows: torch.Tensor) -> int:
        """Fill the buffers' first rows for the original rows ``rows``; returns their count."""
        n = len(rows)
        cells = rows % self.b
        X = self.X[:n]
        if n == self.X.shape[0]:
            X.view(self.n_eps, self.b, -1).copy_(self.x0.expand(self.n_eps, -1, -1))
        else:
            torch.index_select(self.x0, 0, cells, out=X)
        self.idx = rows.clone()
        self.y = self.y_rows[rows]
        self.eps = self.eps_rows[rows]
        self.alpha = self.alpha_rows[rows].clone()
        if self.X0 is not None:
            self.X0[:n].copy_(X)
        if self.M is not None:
            torch.index_select(self.movable, 0, cells, out=self.M[:n])
        if self.LO is not None:
            self._box(n)
        if self.budget.random_start:
            self._random_start(n)
        return n

    def _box(self, n: int) -> None:
        """Per-row bounds: the L∞ ball ∩ the allowed range, widened where the clean value lies
        outside the range (the constraint itself never moves a clean cell)."""
        X, LO, HI = self.X[:n], self.LO[:n], self.HI[:n]
        if self.budget.norm == "linf":
            torch.sub(X, self.eps, out=LO)
            torch.add(X, self.eps, out=HI)
        else:
            LO.fill_(float("-inf"))
            HI.fill_(float("inf"))
        scratch = self.S[:n]
        if self.lower is not None:
            torch.minimum(X, self.lower, out=scratch)
            torch.maximum(LO, scratch, out=LO)
        if self.upper is not None:
            torch.maximum(X, self.upper, out=scratch)
            torch.minimum(HI, scratch, out=HI)

    def _mask(self, n: int) -> torch.Tensor | None:
        return self.M[:n] if self.M is not None else self.movable

    def _random_start(self, n: int) -> None:
        X, noise = self.X[:n], self.G[:n]
        if self.budget.norm == "linf":
            noise.uniform_(-1.0, 1.0, generator=self.gen).mul_(self.eps)
        else:
            noise.normal_(generator=self.gen)
            if (mask := self._mask(n)) is not None:
                noise.mul_(mask)
            radius = torch.rand((n, 1), generator=self.gen, device=X.device) * self.eps
            noise.mul_(radius / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if (mask := self._mask(n)) is not None:
            noise.mul_(mask)
        X.add_(noise)
        if self.LO is not None:
            torch.clamp(X, self.LO[:n], self.HI[:n], out=X)

    # ---- the iteration ---------------------------------------------------------------------

    def attack(self, restarts: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(self.X.shape[0], device=self.X.device)
        for restart in range(restarts):
            n = self._load(rows)
            self._iterate(n, shared_start=restart == 0 and not self.budget.random_start)
            rows = torch.nonzero(~self.succeeded).squeeze(1)
            if len(rows) == 0:
                break
        return self.OUT, self.out_logits

    def _evaluate(self, n: int, *, need_grad: bool, blocks: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and success of the first ``n`` rows, and their gradient into ``G``.

        With ``blocks > 1`` the rows are identical copies of the first ``n / blocks`` rows:
        those are evaluated once and repeated.
        """
        m = n // blocks
        grad_out = self.G[:m] if need_grad else None
        fn = mlp_input_grad if self.fast else autograd_input_grad
        extra = {} if self.fast else {"objective": self.objective}
        logits, _, success, _ = fn(self.model, self.X[:m], self.y[:m], loss=self.budget.loss,
                                   targeted=self.targeted, grad_out=grad_out, **extra)
        self.counts["forward_rows"] = self.counts.get("forward_rows", 0) + m
        self.counts["backward_rows"] = self.counts.get("backward_rows", 0) + (m if need_grad else 0)
        if blocks > 1:
            if need_grad:
                self.G[m:n].view(blocks - 1, m, -1).copy_(self.G[:m].expand(blocks - 1, -1, -1))
            logits, success = logits.repeat(blocks, 1), success.repeat(blocks)
        return logits, success

    def _iterate(self, n: int, *, shared_start: bool) -> None:
        budget = self.budget
        alive = torch.ones(n, dtype=torch.bool, device=self.X.device)
        for step in range(budget.steps + 1):
            last = step == budget.steps
            blocks = self.n_eps if (shared_start and step == 0 and n == self.X.shape[0]) else 1
            logits, success = self._evaluate(n, need_grad=not last, blocks=blocks)
            finished = alive if last else (alive & success if self.early_stop else None)
            if finished is not None and bool(finished.any()):
                rows = self.idx[finished]
                self.OUT[rows] = self.X[:n][finished]
                self.out_logits[rows] = logits[finished]
                self.succeeded[rows] = success[finished]
                alive &= ~finished
                n_alive = int(alive.sum())
                if last or n_alive == 0:
                    self.bar.update(budget.steps - step)
                    return
                if n - n_alive >= _COMPACT_AT * n:
                    n, alive = self._compact(n, alive), alive[alive]
                self.alpha[:n] *= alive.unsqueeze(1)  # finished rows take no more steps
            self._step(n)
            self.bar.update(1)

    def _compact(self, n: int, keep: torch.Tensor) -> int:
        """Move the rows to keep to the front of every buffer; returns their count."""
        where = torch.nonzero(keep).squeeze(1)
        k = len(where)
        for buf in (self.X, self.G, self.LO, self.HI, self.X0, self.M):
            if buf is not None:
                torch.index_select(buf[:n], 0, where, out=self.S[:k])
                buf[:k].copy_(self.S[:k])
        self.idx, self.y = self.idx[where], self.y[where]
        self.eps, self.alpha = self.eps[where], self.alpha[where]
        return k

    def _step(self, n: int) -> None:
        X, G, mask = self.X[:n], self.G[:n], self._mask(n)
        alpha = self.alpha[:n]
        if self.budget.norm == "linf":
            G.sign_()
            if mask is not None:
                G.mul_(mask)
            X.addcmul_(G, alpha)
            torch.clamp(X, self.LO[:n], self.HI[:n], out=X)
            return
        if mask is not None:
            G.mul_(mask)
        G.div_(G.norm(dim=1, keepdim=True).clamp_min(1e-12))
        X.addcmul_(G, alpha)
        # project onto the L2 ball around x0, then into the box (which only shrinks δ)
        X0 = self.X0[:n]
        X.sub_(X0)
        X.mul_(torch.clamp(self.eps / X.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0))
        X.add_(X0)
        if self.LO is not None:
            torch.clamp(X, self.LO[:n], self.HI[:n], out=X)
