"""The count-space attack engine: the fewest UMIs that change a cell's predicted type.

The attacker edits the raw counts of the model genes one UMI at a time (+1 or −1 on one gene);
every state goes through the stored recipe (:class:`~._transform.CountTransform`, the library
size included) and the classifier. Constraints: counts stay whole numbers ≥ 0, at most
``cap_add`` UMIs added to and ``cap_remove`` removed from any one gene, the library size stays
in a range (widened to include the clean cell's own), optionally only genes the cell already
expresses are edited, optionally only some genes. The cost of a state is ``Σ |Δcounts|``: an edit
never undoes an earlier one (a gene once raised is only raised further), so after ``s`` steps a
state has cost exactly ``s``.

Search, level by level (a level = one more UMI), batched over cells with no loop over cells:

1. **Exact evaluation.** Every state of every cell still standing goes through the transform
   and the classifier in one batch; a cell whose state flips stops at this level, which is its
   minimal UMI count found. For scadv's :class:`~scadv._model.MLP` the input gradient of the
   attack score comes from the engine's hand-derived backward pass
   (:func:`scadv.tl._attacks._engine.mlp_backward`), autograd otherwise.
2. **Candidates from the gradient, with the exact discrete step.** Each single-UMI edit
   ``(g, ±1)`` changes the model input exactly by ``Δx = (x(c, L±1) − x) + e_g·(x_g(c_g±1, L±1) −
   x_g(c, L±1))``: a shift shared by all ``+1`` (all ``−1``) edits from the library size, plus
   one gene's jump. The score change is estimated as ``∇_x score · Δx`` for all ``2·G`` edits at
   once (elementwise, no extra network call); invalid edits are masked.
3. **Exact re-scoring** of each state's ``top_k`` best candidates in one batched forward. For
   the MLP the first linear layer is applied once to the two shifted inputs, and each candidate
   is a rank-one update of it (``h1 + W1[:, g]·jump``), so a candidate costs only the layers
   after the first.
4. **Beam.** The ``beam`` best distinct children of each cell (by exact score; a state reached
   in two orders is kept once, recognised by an exact integer hash of its edits) form the next
   level. ``beam=1, top_k=1`` is the plain gradient-guided greedy search; with ``beam`` at least
   the number of states of a level and ``top_k`` at least ``2·G`` the search is an exhaustive
   breadth-first search, so the UMI count it reports is the true minimum (used by the tests
   against brute force on tiny models).

Work per level is a few elementwise passes over ``states × genes`` and two network passes; cells
that flipped (or ran out of valid edits) are compacted away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn

from ... import _device as D
from ... import _model as M
from ... import _progress as PB
from .._attacks import _engine as E
from ._transform import CountTransform


@dataclass(frozen=True)
class Search:
    """How hard the engine searches."""

    #: UMI budgets (sorted, distinct, ≥ 1); the search runs to the largest.
    budgets: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    #: States kept per cell and level.
    beam: int = 4
    #: Candidate edits per state re-scored exactly (1 with ``beam=1``: plain greedy).
    top_k: int = 16


@dataclass
class Limits:
    """What the attacker may do to the counts."""

    #: Most UMIs added to one gene.
    cap_add: int = 3
    #: Most UMIs removed from one gene (0: never remove).
    cap_remove: int = 3
    #: ``(low, high)`` library size allowed (each cell's range is widened to include its own
    #: clean library size); ``None``: any.
    library: tuple[float, float] | None = None
    #: Only edit genes with a count > 0 in the clean cell.
    detected_only: bool = False
    #: ``(G,)`` bool: genes that may be edited (``None``: all model genes).
    genes: np.ndarray | None = None


@dataclass
class CountResult:
    """What the engine found, per cell (``n`` cells, ``G`` model genes)."""

    #: Budgets, as searched.
    budgets: tuple[int, ...]
    #: Smallest number of UMIs found that succeeds (flip, or reach the target); -1 if none
    #: within the largest budget; 0 if the clean cell already succeeds.
    min_umis: np.ndarray
    #: Per budget, ``(n × G)`` int32 count changes of the state returned at that budget: the
    #: succeeding state once one is found, else the best state (highest attack score) found
    #: within the budget.
    deltas: list[sparse.csr_matrix]
    #: ``(n_budgets, n)`` predicted class of those states.
    pred: np.ndarray
    #: ``(n_budgets, n)`` whether they succeed.
    success: np.ndarray
    #: ``(n, C)`` logits of the state returned at the largest budget.
    logits: np.ndarray
    #: ``forward_rows`` (states evaluated exactly through transform and network),
    #: ``candidate_rows`` (candidates re-scored), ``levels`` (search levels run).
    stats: dict[str, int] = field(default_factory=dict)


#: Score of the attacker (to maximise), success, d score / d logits, from logits.
_ScoreFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def run(model: nn.Module, counts: np.ndarray | sparse.spmatrix, rest: np.ndarray, y: np.ndarray,
        transform: CountTransform, *, search: Search, limits: Limits, targeted: bool,
        device: torch.device, seed: int = 0, batch_size: int = 256, progress: bool = False
        ) -> CountResult:
    """Attack the cells whose model-gene counts are the rows of ``counts``.

    Parameters
    ----------
    model
        Classifier mapping the model input to logits (put in eval mode; parameters untouched).
    counts, rest
        Whole-number counts of the model genes (cells × G, dense or sparse) and, per cell, the
        counts on all other genes (library size − Σ model-gene counts).
    y
        Per cell, the class to leave (untargeted; usually the clean prediction) or to reach
        (targeted).
    transform
        The recipe as a torch function (:meth:`CountTransform.from_recipe`).
    search, limits
        Search effort and the threat model.
    targeted
        Reach ``y`` instead of leaving it.
    seed
        Seeds the hash that recognises repeated states (results do not depend on it unless two
        distinct states collide, with probability about ``2⁻³¹`` per pair).
    batch_size
        Cells per batch (a batch holds ``beam`` states per cell, each ``top_k`` candidates).
    """
    n, g = counts.shape
    budgets = tuple(int(b) for b in search.budgets)
    model = model.to(device).eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    gen = D.generator(seed, torch.device("cpu"))
    weights = torch.randint(0, 2**31, (g,), generator=gen, dtype=torch.int64).to(device)
    out = _Output(n, g, budgets)
    stats = {"forward_rows": 0, "candidate_rows": 0, "levels": 0}
    bar = PB.bar(total=-(-n // batch_size) * (budgets[-1] + 1), desc="count attack",
                 unit="level", progress=progress)
    try:
        allowed = None if limits.genes is None else torch.as_tensor(
            np.asarray(limits.genes, dtype=bool), device=device)
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            dense = _dense(counts[lo:hi])
            batch = _Batch(
                model=model, transform=transform, search=search, limits=limits,
                targeted=targeted, weights=weights, allowed=allowed, out=out, stats=stats,
                bar=bar, first=lo,
                c0=torch.as_tensor(np.asarray(dense, dtype=np.float32), device=device),
                rest=torch.as_tensor(np.asarray(rest[lo:hi], dtype=np.float64), device=device),
                y=torch.as_tensor(np.asarray(y[lo:hi], dtype=np.int64), device=device))
            batch.search()
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return out.result(stats)


class _Output:
    """Per-cell results, filled level by level (budget ``b`` gets the state of level
    ``min(b, level at which the cell stopped)``)."""

    def __init__(self, n: int, g: int, budgets: tuple[int, ...]) -> None:
        self.n, self.g, self.budgets = n, g, budgets
        self.min_umis = np.full(n, -1, dtype=np.int64)
        self.pred = np.full((len(budgets), n), -1, dtype=np.int64)
        self.success = np.zeros((len(budgets), n), dtype=bool)
        self.logits: np.ndarray | None = None
        self.triplets: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [
            [] for _ in budgets]

    def record(self, cells: np.ndarray, delta: torch.Tensor, logits: torch.Tensor,
               success: torch.Tensor, *, from_level: int, to_level: int | None = None) -> None:
        """States of ``cells`` (global indices) are the answer for budgets in
        ``[from_level, to_level]`` (``None``: all larger budgets)."""
        if len(cells) == 0:
            return
        pred = logits.argmax(dim=1).cpu().numpy()
        ok = success.cpu().numpy()
        rows, genes = torch.nonzero(delta, as_tuple=True)
        values = delta[rows, genes].round().to(torch.int32).cpu().numpy()
        rows_np, genes_np = cells[rows.cpu().numpy()], genes.cpu().numpy()
        top = self.budgets[-1] if to_level is None else to_level
        for i, b in enumerate(self.budgets):
            if from_level <= b <= top:
                self.pred[i, cells] = pred
                self.success[i, cells] = ok
                self.triplets[i].append((rows_np, genes_np, values))
        if top >= self.budgets[-1]:
            if self.logits is None:
                self.logits = np.zeros((self.n, logits.shape[1]), dtype=np.float32)
            self.logits[cells] = logits.cpu().numpy()

    def result(self, stats: dict[str, int]) -> CountResult:
        deltas = []
        for parts in self.triplets:
            if parts:
                r, c, v = (np.concatenate(p) for p in zip(*parts, strict=True))
            else:
                r = c = v = np.empty(0, dtype=np.int64)
            deltas.append(sparse.csr_matrix((v.astype(np.int32), (r, c)), shape=(self.n, self.g),
                                            dtype=np.int32))
        logits = self.logits if self.logits is not None else np.zeros((self.n, 0), np.float32)
        return CountResult(self.budgets, self.min_umis, deltas, self.pred, self.success, logits,
                           stats)


#: Sentinel base for the hashes of invalid children (never equal to a real state's hash,
#: whose magnitude is below 2⁴³).
_INVALID_HASH = -(2**62)


class _Batch:
    """One batch of cells, searched level by level; ``a`` cells still standing × ``beam``
    states each (``valid`` marks the slots holding a state)."""

    def __init__(self, *, model: nn.Module, transform: CountTransform, search: Search,
                 limits: Limits, targeted: bool, weights: torch.Tensor,
                 allowed: torch.Tensor | None, out: _Output, stats: dict[str, int],
                 bar: Any, first: int, c0: torch.Tensor, rest: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.model, self.t, self.search_, self.limits = model, transform, search, limits
        self.targeted, self.weights, self.out, self.stats, self.bar = (
            targeted, weights, out, stats, bar)
        self.mlp = model if isinstance(model, M.MLP) else None
        b, g = c0.shape
        self.g, self.w = g, int(search.beam)
        self.cells = np.arange(first, first + b)
        self.c0, self.rest, self.y = c0, rest, y
        lib0 = transform.library(c0, rest)
        if limits.library is None:
            self.lib_lo = torch.full_like(lib0, -np.inf)
            self.lib_hi = torch.full_like(lib0, np.inf)
        else:
            self.lib_lo = torch.clamp(lib0, max=float(limits.library[0]))
            self.lib_hi = torch.clamp(lib0, min=float(limits.library[1]))
        gene_ok = torch.ones((b, g), dtype=torch.bool, device=c0.device)
        if allowed is not None:
            gene_ok &= allowed
        if limits.detected_only:
            gene_ok &= c0 > 0
        self.gene_ok = gene_ok
        self.delta = torch.zeros((b, self.w, g), dtype=torch.float32, device=c0.device)
        self.valid = torch.zeros((b, self.w), dtype=torch.bool, device=c0.device)
        self.valid[:, 0] = True
        self.hash = torch.zeros((b, self.w), dtype=torch.int64, device=c0.device)

    # ---- scoring ---------------------------------------------------------------------------

    def _score_fn(self, y_rows: torch.Tensor) -> _ScoreFn:
        targeted = self.targeted
        return lambda logits: E.objective_and_grad(logits, y_rows, loss="margin",
                                                   targeted=targeted)

    def _evaluate(self, x: torch.Tensor, y_rows: torch.Tensor, need_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits, score, success and (optionally) d score / d x of model inputs ``x``."""
        self.stats["forward_rows"] += len(x)
        if self.mlp is not None:
            grad = torch.empty_like(x) if need_grad else None
            return E.mlp_backward(self.mlp, x, self._score_fn(y_rows), grad_out=grad)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(need_grad)
            logits = self.model(xg)
            score, success, _ = E.objective_and_grad(logits, y_rows, loss="margin",
                                                     targeted=self.targeted)
            grad = torch.autograd.grad(score.sum(), xg)[0] if need_grad else None
        return logits.detach(), score.detach(), success, grad

    # ---- the search ------------------------------------------------------------------------

    def search(self) -> None:
        top = self.search_.budgets[-1]
        budgets = set(self.search_.budgets)
        for level in range(top + 1):
            self.stats["levels"] = max(self.stats["levels"], level)
            a, w, g = self.delta.shape
            counts = (self.c0.unsqueeze(1) + self.delta).view(a * w, g)
            lib = self.t.library(counts, self.rest.repeat_interleave(w))
            x = self.t.at(counts, lib)
            y_rows = self.y.repeat_interleave(w)
            logits, score, success, grad = self._evaluate(x, y_rows, need_grad=level < top)
            valid = self.valid.view(-1)
            score = torch.where(valid, score, torch.full_like(score, -np.inf)).view(a, w)
            success = (success & valid).view(a, w)
            done = success.any(dim=1)
            # the succeeding state with the highest score, else the best state of the cell
            pick = torch.where(success, score, score - 1e30).argmax(dim=1)
            rows = torch.arange(a, device=pick.device) * w + pick
            best_delta = self.delta.view(a * w, g)[rows]
            best_logits, best_success = logits[rows], success.view(-1)[rows]
            done_np = done.cpu().numpy()
            if done_np.any():
                self.out.min_umis[self.cells[done_np]] = level
                self.out.record(self.cells[done_np], best_delta[done], best_logits[done],
                                best_success[done], from_level=level)
            stay = ~done
            if level in budgets:
                self.out.record(self.cells[~done_np], best_delta[stay], best_logits[stay],
                                best_success[stay], from_level=level, to_level=level)
            if self.bar is not None:
                self.bar.update(1)
            if level == top or not bool(stay.any()):
                if self.bar is not None:
                    self.bar.update(top - level)
                return
            keep = torch.nonzero(stay).squeeze(1)
            self._compact(keep)
            rows_kept = (keep.unsqueeze(1) * w + torch.arange(w, device=keep.device)).view(-1)
            if grad is None:
                raise RuntimeError("internal: no gradient below the top level")
            stalled = self._expand(counts[rows_kept], lib[rows_kept], x[rows_kept],
                                   grad[rows_kept], y_rows[rows_kept])
            if stalled is not None:  # cells without any valid edit: their answer is final
                idx = torch.nonzero(stalled).squeeze(1)
                sel = keep[idx]
                self.out.record(self.cells[idx.cpu().numpy()], best_delta[sel],
                                best_logits[sel], best_success[sel], from_level=level + 1)
                self._compact(torch.nonzero(~stalled).squeeze(1))
                if len(self.cells) == 0:
                    if self.bar is not None:
                        self.bar.update(top - level)
                    return

    def _compact(self, keep: torch.Tensor) -> None:
        self.cells = self.cells[keep.cpu().numpy()]
        for name in ("c0", "rest", "y", "lib_lo", "lib_hi", "gene_ok", "delta", "valid", "hash"):
            setattr(self, name, getattr(self, name)[keep])

    def _expand(self, counts: torch.Tensor, lib: torch.Tensor, x: torch.Tensor,
                grad: torch.Tensor, y_rows: torch.Tensor) -> torch.Tensor | None:
        """Move every cell to its next level's states; returns the cells with no valid edit
        (``None`` if there are none; their answer is the state before this call)."""
        a, w, g = self.delta.shape
        t = self.t
        scale_p, scale_m = t.scale(lib + 1).unsqueeze(1), t.scale(lib - 1).unsqueeze(1)
        base_p, base_m = t.values(counts, scale_p), t.values(counts, scale_m)
        jump_p = t.values(counts + 1, scale_p) - base_p
        jump_m = t.values((counts - 1).clamp_(min=0), scale_m) - base_m
        shift_p = (grad * (base_p - x)).sum(dim=1, keepdim=True)
        shift_m = (grad * (base_m - x)).sum(dim=1, keepdim=True)
        est = torch.cat([shift_p + grad * jump_p, shift_m + grad * jump_m], dim=1)
        est.masked_fill_(~self._valid_edits(counts, lib), -np.inf)
        k = min(int(self.search_.top_k), 2 * g)
        cand_est, cand = est.topk(k, dim=1)  # (a·w, k)
        ok = torch.isfinite(cand_est)
        if k == 1 and w == 1:
            child_score = cand_est
        else:
            child_score = self._rescore(cand, base_p, base_m, jump_p, jump_m, x, y_rows)
            child_score = torch.where(ok, child_score, torch.full_like(child_score, -np.inf))
        # children of each cell: w parents × k candidates
        child_score = child_score.view(a, w * k)
        cand = cand.view(a, w * k)
        parent = torch.arange(w, device=cand.device).repeat_interleave(k).expand(a, -1)
        gene, minus = cand % g, cand >= g
        sign = 1 - 2 * minus.to(torch.int64)
        child_hash = self.hash.gather(1, parent) + sign * self.weights[gene]
        ok = torch.isfinite(child_score)
        child_hash = torch.where(
            ok, child_hash,
            _INVALID_HASH + torch.arange(w * k, device=cand.device).expand(a, -1))
        child_score = _drop_repeats(child_score, child_hash)
        new_score, choice = child_score.topk(w, dim=1)
        new_valid = torch.isfinite(new_score)
        stalled = ~new_valid.any(dim=1)
        par = parent.gather(1, choice)
        delta = self.delta.gather(1, par.unsqueeze(2).expand(a, w, g)).clone()
        gsel, ssel = gene.gather(1, choice), sign.gather(1, choice)
        delta.scatter_add_(2, gsel.unsqueeze(2),
                           torch.where(new_valid, ssel, 0).to(delta.dtype).unsqueeze(2))
        self.delta, self.valid, self.hash = delta, new_valid, child_hash.gather(1, choice)
        return stalled if bool(stalled.any()) else None

    def _valid_edits(self, counts: torch.Tensor, lib: torch.Tensor) -> torch.Tensor:
        """``(a·w, 2G)`` mask of the allowed single-UMI edits: ``+1`` on each gene, then ``−1``."""
        a, w, g = self.delta.shape
        lim = self.limits
        delta = self.delta.view(a * w, g)
        gene_ok = self.gene_ok.repeat_interleave(w, dim=0)
        slot = self.valid.view(-1, 1)
        plus = (gene_ok & slot & (delta >= 0) & (delta < lim.cap_add)
                & (lib + 1 <= self.lib_hi.repeat_interleave(w)).unsqueeze(1))
        lib_lo = self.lib_lo.repeat_interleave(w).clamp(min=1.0)  # never an empty cell
        minus = (gene_ok & slot & (delta <= 0) & (delta > -lim.cap_remove) & (counts >= 1)
                 & (lib - 1 >= lib_lo).unsqueeze(1))
        return torch.cat([plus, minus], dim=1)

    def _rescore(self, cand: torch.Tensor, base_p: torch.Tensor, base_m: torch.Tensor,
                 jump_p: torch.Tensor, jump_m: torch.Tensor, x: torch.Tensor,
                 y_rows: torch.Tensor) -> torch.Tensor:
        """Exact attack score of each candidate edit (rows × k)."""
        r, k = cand.shape
        g = self.g
        gene, minus = cand % g, cand >= g
        jump = torch.where(minus, jump_m.gather(1, gene), jump_p.gather(1, gene))  # (r, k)
        y_c = y_rows.repeat_interleave(k)
        self.stats["candidate_rows"] += r * k
        first = _first_linear(self.mlp) if self.mlp is not None else None
        with torch.no_grad():
            if self.mlp is not None and first is not None:
                lin, tail = first
                h_p = torch.addmm(lin.bias, base_p, lin.weight.t())
                h_m = torch.addmm(lin.bias, base_m, lin.weight.t())
                h = torch.where(minus.unsqueeze(2), h_m.unsqueeze(1), h_p.unsqueeze(1))
                cols = lin.weight.t()[gene]  # (r, k, width)
                h = (h + cols * jump.unsqueeze(2)).view(r * k, -1)
                logits = tail(h)
            else:
                rows = torch.arange(r, device=cand.device).repeat_interleave(k)
                xs = torch.where(minus.view(-1, 1), base_m[rows], base_p[rows])
                flat = gene.view(-1)
                xs[torch.arange(r * k, device=cand.device), flat] += jump.view(-1)
                logits = self.model(xs)
            score, _, _ = E.objective_and_grad(logits, y_c, loss="margin",
                                               targeted=self.targeted)
        return score.view(r, k)


def _dense(block: np.ndarray | sparse.spmatrix) -> np.ndarray:
    if isinstance(block, np.ndarray):
        return block
    return np.asarray(block.toarray())


def _first_linear(model: M.MLP) -> tuple[nn.Linear, Callable[[torch.Tensor], torch.Tensor]] | None:
    """The MLP's first linear layer and the function of the rest (eval mode)."""
    if isinstance(model.input, nn.Linear):
        return model.input, lambda h: model.head(model.body(h))
    first = model.body[0]
    if isinstance(first, nn.Linear):
        return first, lambda h: model.head(model.body[1:](h))
    return None


def _drop_repeats(score: torch.Tensor, hashes: torch.Tensor) -> torch.Tensor:
    """``score`` with all but one child of each repeated state (same hash, per row) at −inf."""
    sorted_h, order = torch.sort(hashes, dim=1, stable=True)
    repeat = torch.zeros_like(sorted_h, dtype=torch.bool)
    repeat[:, 1:] = sorted_h[:, 1:] == sorted_h[:, :-1]
    if not bool(repeat.any()):
        return score
    mask = torch.zeros_like(repeat).scatter_(1, order, repeat)
    return score.masked_fill(mask, -np.inf)
