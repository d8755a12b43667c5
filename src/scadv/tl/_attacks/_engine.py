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
  (a chain of linear layers and ReLUs) and for linear classifiers (CellTypist, scikit-learn
  linear models: the gradient is ``(d score / d logits) W``), written straight into the
  gradient buffer (:func:`exact_backward`). Any other ``nn.Module``, or a custom objective,
  goes through autograd.
* **Shared first step.** Without a random start every budget starts at the clean cell, so the
  first gradient is computed once per cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ... import _device as D
from ... import _model as M
from ... import _progress as PB

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
    return mlp_backward(model, x, lambda logits: objective_and_grad(
        logits, y, loss=loss, targeted=targeted), grad_out=grad_out)


#: ``score_fn(logits) -> (score, success, d score / d logits)``, per row.
ScoreFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def mlp_backward(model: M.MLP, x: torch.Tensor, score_fn: ScoreFn, *,
                 grad_out: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`mlp_input_grad` for any score of the logits whose logit gradient is known.

    ``score_fn`` maps the logits to the per-row score, success flag and d score / d logits;
    the rest is the exact backward pass of the MLP in eval mode.
    """
    with torch.no_grad():
        linears = [m for m in model.body if isinstance(m, nn.Linear)]
        h = x
        if isinstance(model.input, nn.Linear):
            h = torch.addmm(model.input.bias, h, model.input.weight.t())
        masks: list[torch.Tensor | None] = []
        for lin in linears:
            h = torch.addmm(lin.bias, h, lin.weight.t())
            masks.append(h > 0)
            h.clamp_(min=0)
        logits = torch.addmm(model.head.bias, h, model.head.weight.t())
        score, success, dlogits = score_fn(logits)
        if grad_out is None:
            return logits, score, success, None
        g = dlogits @ model.head.weight
        weights = [lin.weight for lin in linears]
        if isinstance(model.input, nn.Linear):
            weights = [model.input.weight, *weights]
            masks = [None, *masks]
        for i in range(len(weights) - 1, -1, -1):
            if (relu_mask := masks[i]) is not None:
                g.mul_(relu_mask)
            if i == 0:
                torch.mm(g, weights[0], out=grad_out)
            else:
                g = g @ weights[i]
        return logits, score, success, grad_out


def linear_backward(model: nn.Module, x: torch.Tensor, score_fn: ScoreFn, *,
                    grad_out: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`mlp_backward` for a linear classifier (logits ``x W^T + b``, see
    :func:`scadv._model.linear_weights`): the input gradient is ``(d score / d logits) W``,
    one matrix product, no autograd."""
    wb = M.linear_weights(model)
    if wb is None:
        raise ValueError("internal: linear_backward on a model that is not linear")
    w, b = wb
    with torch.no_grad():
        logits = torch.addmm(b, x, w.t())
        score, success, dlogits = score_fn(logits)
        if grad_out is not None:
            torch.mm(dlogits, w, out=grad_out)
        return logits, score, success, grad_out


#: ``backward(x, score_fn, grad_out=...) -> (logits, score, success, grad)``: an exact forward
#: and input-gradient pass without autograd.
Backward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]


def exact_backward(model: nn.Module) -> Backward | None:
    """The hand-derived forward/backward of ``model`` when it has one (scadv's MLP, linear
    classifiers), else ``None`` (autograd)."""
    if isinstance(model, M.MLP):
        return partial(mlp_backward, model)
    if M.linear_weights(model) is not None:
        return partial(linear_backward, model)
    return None


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
    batch_size
        Cells per batch; a batch holds one row per cell and budget. The buffers of one batch
        are allocated once and reused by every batch.
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
    backward = exact_backward(model) if objective is None else None
    n_classes = _n_out(model, d, device)
    ws = _Workspace(min(batch_size, n) * n_eps, d, device, budget=budget,
                    box=budget.norm == "linf" or constraints.lower is not None
                    or constraints.upper is not None,
                    per_row_mask=constraints.keep_zeros is not None)
    shared = _Shared(
        model=model, budget=budget, targeted=targeted, early_stop=early_stop, backward=backward,
        objective=objective, gen=D.generator(seed, device),
        counts=stats if stats is not None else {},
        eps=torch.tensor(budget.eps, dtype=torch.float32, device=device),
        alpha=torch.tensor(budget.alpha, dtype=torch.float32, device=device),
        genes=None if constraints.genes is None else torch.as_tensor(
            constraints.genes, dtype=torch.float32, device=device),
        lower=None if constraints.lower is None else torch.as_tensor(
            constraints.lower, dtype=torch.float32, device=device),
        upper=None if constraints.upper is None else torch.as_tensor(
            constraints.upper, dtype=torch.float32, device=device),
    )
    adv_out = np.empty((n_eps, n, d), dtype=np.float32)
    logit_out = np.empty((n_eps, n, n_classes), dtype=np.float32)
    restarts = budget.n_restarts if budget.random_start else 1
    shared.bar = PB.bar(total=-(-n // batch_size) * restarts * budget.steps, desc="attack",
                      unit="step", progress=progress)
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            keep_zeros = None if constraints.keep_zeros is None else constraints.keep_zeros[lo:hi]
            out = _output_view(adv_out, lo, hi, device)
            batch = _Batch(shared, ws, torch.as_tensor(x0[lo:hi], device=device),
                           torch.as_tensor(y[lo:hi], device=device), keep_zeros, out, n_classes)
            out, logits = batch.attack(restarts)
            if out.device.type != "cpu" or not _shares_memory(out, adv_out):
                adv_out[:, lo:hi] = out.cpu().numpy()
            logit_out[:, lo:hi] = logits.view(n_eps, hi - lo, -1).cpu().numpy()
    finally:
        shared.bar.close()
        for p, flag in zip(model.parameters(), params, strict=True):
            p.requires_grad_(flag)
    return adv_out, logit_out


def kl_score(p_clean: torch.Tensor) -> ScoreFn:
    """TRADES' inner objective: ``KL(p_clean ‖ softmax(logits))`` per row (success: the top
    class changed). Its logit gradient is ``softmax(logits) − p_clean``."""

    def score_fn(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_q = torch.log_softmax(logits, dim=1)
        score = (p_clean * (torch.log(p_clean.clamp_min(1e-12)) - log_q)).sum(dim=1)
        success = logits.argmax(dim=1) != p_clean.argmax(dim=1)
        return score, success, torch.softmax(logits, dim=1) - p_clean

    return score_fn


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, eps: float,
            alpha: float, steps: int, norm: Norm = "linf", loss: Loss | Literal["kl"] = "ce",
            random_start: bool = True, gen: torch.Generator | None = None,
            p_clean: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor-level PGD for training loops: adversarial versions of a batch, on its device.

    Unlike :func:`run` (numpy in and out, many budgets, early stopping, constraints), this
    attacks one tensor batch at one budget and returns the last iterate (classic PGD, as
    adversarial training uses it), detached. The gradients are taken in eval mode (dropout
    off); the model's train/eval mode and its parameters' ``requires_grad`` are restored
    afterwards, and no parameter gradient is accumulated.

    Parameters
    ----------
    model
        scadv's :class:`~scadv._model.MLP` or a linear classifier (exact gradient without
        autograd) or any differentiable module returning logits (autograd).
    x, y
        Clean batch and the classes to push away from (``loss='ce'`` / ``'margin'``).
    eps, alpha, steps, norm
        Budget, step size, number of steps, ``'linf'`` or ``'l2'``.
    loss
        ``'ce'``, ``'margin'``, or ``'kl'``: TRADES' ``KL(p_clean ‖ p(x'))`` (``y`` unused);
        with ``'kl'`` the start is ``x + 0.001·N(0, 1)`` when there is no random start,
        because the KL's gradient vanishes at ``x`` itself.
    random_start
        Start from a uniform point of the L∞ ball (a random direction and radius under L2).
    gen
        Generator for the random start.
    p_clean
        Class probabilities of the clean batch (``loss='kl'``).
    """
    if loss == "kl":
        if p_clean is None:
            raise ValueError("internal: loss='kl' needs p_clean")
        score_fn = kl_score(p_clean)
    else:
        if y is None:
            raise ValueError(f"internal: loss={loss!r} needs the classes y")
        away_from: torch.Tensor = y
        score_fn = lambda logits: objective_and_grad(  # noqa: E731
            logits, away_from, loss=loss, targeted=False)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        x = x.detach()
        adv = x.clone()
        if random_start:
            noise = torch.empty_like(x)
            if norm == "linf":
                noise.uniform_(-eps, eps, generator=gen)
            else:
                noise.normal_(generator=gen)
                radius = torch.rand((len(x), 1), generator=gen, device=x.device) * eps
                noise.mul_(radius / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))
            adv.add_(noise)
        elif loss == "kl":
            adv.add_(0.001 * torch.randn(x.shape, generator=gen, device=x.device))
        grad = torch.empty_like(x)
        backward = exact_backward(model)
        for _ in range(int(steps)):
            if backward is not None:
                backward(adv, score_fn, grad_out=grad)
            else:
                with torch.enable_grad():
                    xg = adv.detach().requires_grad_(True)
                    score, _, _ = score_fn(model(xg))
                    (g,) = torch.autograd.grad(score.sum(), xg)
                grad.copy_(g)
            if norm == "linf":
                adv.add_(grad.sign_(), alpha=float(alpha))
                adv = torch.min(torch.max(adv, x - eps), x + eps)
            else:
                grad.div_(grad.norm(dim=1, keepdim=True).clamp_min(1e-12))
                adv.add_(grad, alpha=float(alpha))
                delta = adv - x
                delta.mul_(torch.clamp(eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12),
                                       max=1.0))
                adv = x + delta
        return adv.detach()
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _n_out(model: nn.Module, d: int, device: torch.device) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, d, device=device)).shape[1])


def _output_view(adv_out: np.ndarray, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    """Where a batch's results go: straight into the numpy output on the CPU (no extra
    buffer, no copy), a device buffer otherwise."""
    view = torch.from_numpy(adv_out)[:, lo:hi]
    return view if device.type == "cpu" else torch.empty(view.shape, device=device)


def _shares_memory(t: torch.Tensor, arr: np.ndarray) -> bool:
    return t.device.type == "cpu" and np.shares_memory(t.numpy(), arr)


@dataclass
class _Shared:
    """What every batch of one attack shares."""

    model: nn.Module
    budget: Budget
    targeted: bool
    early_stop: bool
    backward: Backward | None  # exact forward/backward without autograd, if the model has one
    objective: Objective | None
    gen: torch.Generator
    counts: dict[str, int]
    eps: torch.Tensor  # (n_eps,)
    alpha: torch.Tensor  # (n_eps,)
    genes: torch.Tensor | None  # (d,) 0/1
    lower: torch.Tensor | None  # (d,)
    upper: torch.Tensor | None  # (d,)
    bar: tqdm | None = None


class _Workspace:
    """Row × gene buffers, allocated once per attack and reused by every batch.

    Compaction swaps buffer roles instead of copying through a scratch buffer: after a step
    the gradient buffer ``G`` is free, so a buffer is compacted by gathering its kept rows
    into ``G`` and exchanging the two.
    """

    def __init__(self, rows: int, d: int, device: torch.device, *, budget: Budget, box: bool,
                 per_row_mask: bool) -> None:
        def buf() -> torch.Tensor:
            return torch.empty((rows, d), device=device)

        self.X, self.G = buf(), buf()
        self.LO: torch.Tensor | None = buf() if box else None
        self.HI: torch.Tensor | None = buf() if box else None
        self.X0: torch.Tensor | None = buf() if budget.norm == "l2" else None
        self.M: torch.Tensor | None = buf() if per_row_mask else None

    def box(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first ``n`` rows of the lower and upper bounds, if the attack has a box."""
        if self.LO is None or self.HI is None:
            return None
        return self.LO[:n], self.HI[:n]

    def compact(self, n: int, where: torch.Tensor) -> None:
        """Keep rows ``where`` (sorted) of the first ``n`` rows, moved to the front."""
        k = len(where)
        for name in ("X", "LO", "HI", "X0", "M"):
            buf = getattr(self, name)
            if buf is not None:
                torch.index_select(buf[:n], 0, where, out=self.G[:k])
                setattr(self, name, self.G)
                self.G = buf


class _Batch:
    """One batch of cells × budgets, attacked in place in the workspace.

    Row ``r`` is budget ``r // b`` of cell ``r % b``. The first ``n`` rows of each workspace
    buffer hold the rows still being attacked; ``idx[:n]`` says which original row each is.
    """

    def __init__(self, shared: _Shared, ws: _Workspace, x0: torch.Tensor, y: torch.Tensor,
                 keep_zeros: np.ndarray | None, out: torch.Tensor, n_classes: int) -> None:
        self.s, self.ws = shared, ws
        self.x0, self.b = x0, x0.shape[0]
        self.n_eps = len(shared.budget.eps)
        self.rows = self.n_eps * self.b
        device = x0.device
        self.y_rows = y.repeat(self.n_eps)
        self.eps_rows = shared.eps.repeat_interleave(self.b).unsqueeze(1)
        self.alpha_rows = shared.alpha.repeat_interleave(self.b).unsqueeze(1)
        movable = shared.genes
        if keep_zeros is not None:
            free = torch.as_tensor(~keep_zeros, dtype=torch.float32, device=device)
            movable = free if movable is None else free * movable
        self.movable = movable  # (d,) or (b, d)
        self.out = out  # (n_eps, b, d)
        self.out_logits = torch.empty((self.rows, n_classes), device=device)
        self.succeeded = torch.zeros(self.rows, dtype=torch.bool, device=device)

    # ---- set-up of the rows to attack -----------------------------------------------------

    def _load(self, rows: torch.Tensor) -> int:
        """Fill the workspace's first rows for the original rows ``rows``; returns their count."""
        ws, n = self.ws, len(rows)
        cells = rows % self.b
        X = ws.X[:n]
        if n == self.rows:
            X.view(self.n_eps, self.b, -1).copy_(self.x0.expand(self.n_eps, -1, -1))
        else:
            torch.index_select(self.x0, 0, cells, out=X)
        self.idx = rows.clone()
        self.y = self.y_rows[rows]
        self.eps = self.eps_rows[rows]
        self.alpha = self.alpha_rows[rows].clone()
        if ws.X0 is not None:
            ws.X0[:n].copy_(X)
        if ws.M is not None and self.movable is not None:  # M exists only for per-cell masks
            torch.index_select(self.movable, 0, cells, out=ws.M[:n])
        if ws.LO is not None:
            self._box(n)
        if self.s.budget.random_start:
            self._random_start(n)
        return n

    def _box(self, n: int) -> None:
        """Per-row bounds: the L∞ ball ∩ the allowed range, widened where the clean value lies
        outside the range (the constraint itself never moves a clean cell)."""
        ws, s = self.ws, self.s
        box = ws.box(n)
        if box is None:
            raise RuntimeError("internal: per-row bounds without their buffers")
        X, (LO, HI) = ws.X[:n], box
        if s.budget.norm == "linf":
            torch.sub(X, self.eps, out=LO)
            torch.add(X, self.eps, out=HI)
        else:
            LO.fill_(float("-inf"))
            HI.fill_(float("inf"))
        scratch = ws.G[:n]
        if s.lower is not None:
            torch.minimum(X, s.lower, out=scratch)
            torch.maximum(LO, scratch, out=LO)
        if s.upper is not None:
            torch.maximum(X, s.upper, out=scratch)
            torch.minimum(HI, scratch, out=HI)

    def _mask(self, n: int) -> torch.Tensor | None:
        return self.ws.M[:n] if self.ws.M is not None else self.movable

    def _random_start(self, n: int) -> None:
        ws, gen = self.ws, self.s.gen
        X, noise = ws.X[:n], ws.G[:n]
        if self.s.budget.norm == "linf":
            noise.uniform_(-1.0, 1.0, generator=gen).mul_(self.eps)
        else:
            noise.normal_(generator=gen)
            if (mask := self._mask(n)) is not None:
                noise.mul_(mask)
            radius = torch.rand((n, 1), generator=gen, device=X.device) * self.eps
            noise.mul_(radius / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if (mask := self._mask(n)) is not None:
            noise.mul_(mask)
        X.add_(noise)
        if (box := ws.box(n)) is not None:
            torch.clamp(X, *box, out=X)

    # ---- the iteration ---------------------------------------------------------------------

    def attack(self, restarts: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(self.rows, device=self.x0.device)
        for restart in range(restarts):
            n = self._load(rows)
            self._iterate(n, shared_start=restart == 0 and not self.s.budget.random_start)
            rows = torch.nonzero(~self.succeeded).squeeze(1)
            if len(rows) == 0:
                break
        return self.out, self.out_logits

    def _evaluate(self, n: int, *, need_grad: bool, blocks: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and success of the first ``n`` rows, and their gradient into ``G``.

        With ``blocks > 1`` the rows are identical copies of the first ``n / blocks`` rows:
        those are evaluated once and repeated.
        """
        s, ws = self.s, self.ws
        m = n // blocks
        grad_out = ws.G[:m] if need_grad else None
        if s.backward is not None:
            y, loss, targeted = self.y[:m], s.budget.loss, s.targeted
            logits, _, success, _ = s.backward(
                ws.X[:m], lambda z: objective_and_grad(z, y, loss=loss, targeted=targeted),
                grad_out=grad_out)
        else:
            logits, _, success, _ = autograd_input_grad(
                s.model, ws.X[:m], self.y[:m], loss=s.budget.loss, targeted=s.targeted,
                grad_out=grad_out, objective=s.objective)
        s.counts["forward_rows"] = s.counts.get("forward_rows", 0) + m
        s.counts["backward_rows"] = s.counts.get("backward_rows", 0) + (m if need_grad else 0)
        if blocks > 1:
            if need_grad:
                ws.G[m:n].view(blocks - 1, m, -1).copy_(ws.G[:m].expand(blocks - 1, -1, -1))
            logits, success = logits.repeat(blocks, 1), success.repeat(blocks)
        return logits, success

    def _iterate(self, n: int, *, shared_start: bool) -> None:
        s, ws = self.s, self.ws
        steps = s.budget.steps
        alive = torch.ones(n, dtype=torch.bool, device=ws.X.device)
        for step in range(steps + 1):
            last = step == steps
            blocks = self.n_eps if (shared_start and step == 0 and n == self.rows) else 1
            logits, success = self._evaluate(n, need_grad=not last, blocks=blocks)
            finished = alive if last else (alive & success if s.early_stop else None)
            if finished is not None and bool(finished.any()):
                rows = self.idx[finished]
                self.out[rows // self.b, rows % self.b] = ws.X[:n][finished]
                self.out_logits[rows] = logits[finished]
                self.succeeded[rows] = success[finished]
                alive &= ~finished
                n_alive = int(alive.sum())
                if last or n_alive == 0:
                    if s.bar is not None:
                        s.bar.update(steps - step)
                    return
                self.alpha *= alive.unsqueeze(1)  # finished rows take no more steps
            self._step(n)
            if s.bar is not None:
                s.bar.update(1)
            if n - int(alive.sum()) >= _COMPACT_AT * n:  # drop the finished rows
                where = torch.nonzero(alive).squeeze(1)
                ws.compact(n, where)
                self.idx, self.y = self.idx[where], self.y[where]
                self.eps, self.alpha = self.eps[where], self.alpha[where]
                n, alive = len(where), alive[where]

    def _step(self, n: int) -> None:
        ws = self.ws
        X, G, mask = ws.X[:n], ws.G[:n], self._mask(n)
        if self.s.budget.norm == "linf":
            G.sign_()
            if mask is not None:
                G.mul_(mask)
            X.addcmul_(G, self.alpha)
            if (box := ws.box(n)) is None:
                raise RuntimeError("internal: an L-inf attack without its bounds")
            torch.clamp(X, *box, out=X)
            return
        if mask is not None:
            G.mul_(mask)
        G.div_(G.norm(dim=1, keepdim=True).clamp_min(1e-12))
        X.addcmul_(G, self.alpha)
        # project onto the L2 ball around x0, then into the box (which only shrinks δ)
        if ws.X0 is None:
            raise RuntimeError("internal: an L2 attack without its x0 buffer")
        X0 = ws.X0[:n]
        X.sub_(X0)
        X.mul_(torch.clamp(self.eps / X.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0))
        X.add_(X0)
        if (box := ws.box(n)) is not None:
            torch.clamp(X, *box, out=X)
