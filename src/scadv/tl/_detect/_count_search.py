"""A greedy count-space search with any objective: the count attacker of the detector's
evaluation (stopped at the first flip, pushed to a margin, or against a detector).

The attacker edits the raw counts of the model genes one UMI at a time (+1 or −1 on one gene);
every state goes through the classifier's recipe (:class:`CountTransform`: normalise by the
library size, which the edit changes too, ``log1p``, z-score, clip), exactly as
:func:`scadv._recipe.lognormalize` and :func:`scadv._recipe.lognorm_to_model` do. The threat
model is the count attack's (issue 9): counts stay whole and ≥ 0, at most ``cap_add`` UMIs added
to and ``cap_remove`` removed from any one gene, an edit never undoes an earlier one (so the
cost of a state is its number of steps), and the library size stays in a range.

Each step, for every cell still searching, batched over cells:

1. the gradient of the objective (autograd, through whatever the objective contains: a
   classifier, a detector) ranks all ``2·G`` single-UMI edits by their first-order gain, with
   the exact change of the model input of each edit (the library-size shift shared by all
   ``+1`` or all ``−1`` edits, plus the one gene's jump);
2. the ``top_k`` best are evaluated exactly (a *query* of the objective each) and the best is
   kept — a succeeding one first.

A cell stops at its first success; its number of steps is the UMIs it needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse

from ... import _progress as PB
from ..._errors import ScadvInputError

#: ``objective(x, rows) -> (score, success)``: the attacker's score to maximise (differentiable
#: in ``x``) and whether each row already reaches the attacker's goal; ``rows`` holds, per row
#: of ``x``, the position of its cell among the attacked cells.
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class CountTransform:
    """Counts of the model genes (+ the rest of the library) → model input, in torch."""

    mean: torch.Tensor
    std: torch.Tensor
    target_sum: float
    max_value: float

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], device: torch.device) -> CountTransform:
        if str(recipe.get("input_kind", "")) != "counts" or not bool(
                np.asarray(recipe.get("has_stats", False))):
            raise ScadvInputError(
                "a count-space search needs a classifier prepared from raw counts: prepare the "
                "training data from raw UMI counts with scadv.pp.prepare(adata).")
        return cls(torch.as_tensor(np.asarray(recipe["mean"], dtype=np.float32), device=device),
                   torch.as_tensor(np.asarray(recipe["std"], dtype=np.float32), device=device),
                   float(recipe["target_sum"]), float(recipe["max_value"]))

    def scale(self, library: torch.Tensor) -> torch.Tensor:
        """``target_sum / L`` formed in float64 and rounded to float32 once (as the recipe)."""
        return (self.target_sum / library.to(torch.float64)).to(torch.float32)

    def values(self, counts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        z = torch.log1p(counts.to(torch.float32) * scale)
        z = (z - self.mean) / self.std
        if self.max_value > 0:
            z = z.clamp(-self.max_value, self.max_value)
        return z

    def __call__(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        return self.values(counts, self.scale(library).unsqueeze(-1))


@dataclass
class SearchResult:
    """Per attacked cell: UMIs used (−1: no success within the budget), success, the count
    change (CSR, whole numbers) and the model input of the final state."""

    umis: np.ndarray
    success: np.ndarray
    delta: sparse.csr_matrix
    x: np.ndarray
    queries: int


def search(objective: Objective, counts: sparse.spmatrix | np.ndarray, library: np.ndarray,
           recipe: Mapping[str, Any], *, budget: int, cap_add: int = 3, cap_remove: int = 3,
           library_range: tuple[float, float] | None = None, top_k: int = 16,
           batch_size: int = 128, device: torch.device, progress: bool = False
           ) -> SearchResult:
    """Greedy search for each cell's cheapest count change reaching the objective's goal.

    Parameters
    ----------
    objective
        See :data:`Objective`.
    counts, library
        Whole-number counts of the model genes (cells × G) and each cell's library size over
        all its genes.
    recipe
        The classifier's recipe (from raw counts).
    budget
        Most UMIs changed per cell.
    cap_add, cap_remove
        Most UMIs added to / removed from one gene.
    library_range
        Library sizes allowed (widened per cell to include its own); ``None``: any.
    top_k
        Edits evaluated exactly per cell and step.
    """
    t = CountTransform.from_recipe(recipe, device)
    n, g = counts.shape
    lib_all = np.asarray(library, dtype=np.float64)
    umis = np.full(n, -1, dtype=np.int64)
    success = np.zeros(n, dtype=bool)
    x_out = np.empty((n, g), dtype=np.float32)
    deltas: list[sparse.csr_matrix] = []
    queries = 0
    for lo in PB.bar(range(0, n, batch_size), desc="count search", unit="batch",
                     progress=progress and n > batch_size):
        hi = min(lo + batch_size, n)
        block = counts[lo:hi]
        dense = sparse.csr_matrix(block).toarray() if sparse.issparse(block) else np.asarray(block)
        c0 = torch.as_tensor(np.asarray(dense, dtype=np.float32), device=device)
        lib0 = torch.as_tensor(lib_all[lo:hi], device=device)
        rest = lib0 - c0.sum(dim=1, dtype=torch.float64)
        if library_range is None:
            lib_lo = torch.full_like(lib0, 1.0)
            lib_hi = torch.full_like(lib0, np.inf)
        else:
            lib_lo = torch.clamp(lib0, max=float(library_range[0])).clamp(min=1.0)
            lib_hi = torch.clamp(lib0, min=float(library_range[1]))
        b = hi - lo
        delta = torch.zeros_like(c0)
        active = torch.arange(b, device=device)
        rows_global = torch.arange(lo, hi, device=device)
        for level in range(budget + 1):
            c = c0[active] + delta[active]
            lib = c.sum(dim=1, dtype=torch.float64) + rest[active]
            x = t(c, lib).detach().requires_grad_(level < budget)
            with torch.enable_grad():
                score, ok = objective(x, rows_global[active])
                grad = (torch.autograd.grad(score.sum(), x)[0] if level < budget else None)
            queries += len(active)
            x = x.detach()
            ok_np = ok.detach().cpu().numpy()
            idx = active.cpu().numpy()
            x_out[lo + idx[ok_np]] = x[ok_np].cpu().numpy()
            umis[lo + idx[ok_np]] = level
            success[lo + idx[ok_np]] = True
            stay = ~ok
            if level == budget or not bool(stay.any()):
                x_out[lo + idx[~ok_np]] = x[~ok_np].cpu().numpy()
                break
            active, c, lib, x = active[stay], c[stay], lib[stay], x[stay]
            grad = grad[stay] if grad is not None else None
            if grad is None:  # pragma: no cover - the gradient exists below the top level
                raise RuntimeError("internal: no gradient")
            d = delta[active]
            s_p, s_m = t.scale(lib + 1).unsqueeze(1), t.scale(lib - 1).unsqueeze(1)
            base_p, base_m = t.values(c, s_p), t.values(c, s_m)
            jump_p = t.values(c + 1, s_p) - base_p
            jump_m = t.values((c - 1).clamp(min=0), s_m) - base_m
            est = torch.cat([(grad * (base_p - x)).sum(1, keepdim=True) + grad * jump_p,
                             (grad * (base_m - x)).sum(1, keepdim=True) + grad * jump_m], dim=1)
            plus = (d >= 0) & (d < cap_add) & (lib + 1 <= lib_hi[active]).unsqueeze(1)
            minus = ((d <= 0) & (d > -cap_remove) & (c >= 1)
                     & (lib - 1 >= lib_lo[active]).unsqueeze(1))
            est.masked_fill_(~torch.cat([plus, minus], dim=1), -np.inf)
            k = min(int(top_k), 2 * g)
            cand_est, cand = est.topk(k, dim=1)
            a = len(active)
            gene, is_minus = cand % g, cand >= g
            jump = torch.where(is_minus, jump_m.gather(1, gene), jump_p.gather(1, gene))
            xs = torch.where(is_minus.unsqueeze(2), base_m.unsqueeze(1), base_p.unsqueeze(1))
            xs = xs.clone()
            xs.scatter_add_(2, gene.unsqueeze(2), jump.unsqueeze(2))
            rows = active.repeat_interleave(k)
            with torch.no_grad():
                cs, cok = objective(xs.view(a * k, g), rows_global[rows])
            queries += a * k
            cs = cs.view(a, k).masked_fill(~torch.isfinite(cand_est), -np.inf)
            cok = cok.view(a, k) & torch.isfinite(cand_est)
            pick = torch.where(cok, cs + 1e9, cs).argmax(dim=1)
            stalled = ~torch.isfinite(cand_est.gather(1, pick.unsqueeze(1)).squeeze(1))
            sel_gene = gene.gather(1, pick.unsqueeze(1)).squeeze(1)
            sign = 1.0 - 2.0 * is_minus.gather(1, pick.unsqueeze(1)).squeeze(1).float()
            sign = torch.where(stalled, torch.zeros_like(sign), sign)
            delta[active, sel_gene] += sign
            if bool(stalled.any()):  # no valid edit left: the cell's search ends here
                gone = active[stalled].cpu().numpy()
                c_end = c0[active[stalled]] + delta[active[stalled]]
                lib_end = c_end.sum(dim=1, dtype=torch.float64) + rest[active[stalled]]
                x_out[lo + gone] = t(c_end, lib_end).cpu().numpy()
                active = active[~stalled]
                if len(active) == 0:
                    break
        deltas.append(sparse.csr_matrix(delta.cpu().numpy()))
    return SearchResult(umis=umis, success=success,
                        delta=sparse.vstack(deltas).tocsr() if deltas
                        else sparse.csr_matrix((0, g), dtype=np.float32),
                        x=x_out, queries=queries)


def margin_objective(model: torch.nn.Module, y: np.ndarray, *, kappa: float = 0.0,
                     device: torch.device) -> Objective:
    """Push each cell away from class ``y`` (its clean prediction): score = the best other
    logit minus ``y``'s, success once it exceeds ``kappa`` (0: the first flip)."""
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=device)

    def objective(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        yr = yt[rows]
        z_y = logits.gather(1, yr.unsqueeze(1)).squeeze(1)
        other = logits.scatter(1, yr.unsqueeze(1), float("-inf")).max(dim=1).values
        score = other - z_y
        return score, (score > kappa) if kappa > 0 else (logits.argmax(1) != yr)
    return objective


def evading_objective(model: torch.nn.Module, detector_logit: Callable[[torch.Tensor],
                                                                        torch.Tensor],
                      threshold_logit: float, y: np.ndarray, *, lam: float, kappa: float = 0.0,
                      device: torch.device) -> Objective:
    """Flip each cell away from ``y`` (by more than ``kappa``) *and* keep the detector's logit
    under ``threshold_logit``: score ``min(margin, κ + 1) − λ · max(logit − threshold, −1)``."""
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=device)

    def objective(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        yr = yt[rows]
        z_y = logits.gather(1, yr.unsqueeze(1)).squeeze(1)
        margin = logits.scatter(1, yr.unsqueeze(1), float("-inf")).max(dim=1).values - z_y
        over = detector_logit(x) - threshold_logit
        score = margin.clamp(max=kappa + 1.0) - lam * over.clamp(min=-1.0)
        flipped = (margin > kappa) if kappa > 0 else (logits.argmax(1) != yr)
        return score, flipped & (over < 0)
    return objective
