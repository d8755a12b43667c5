"""Count-space adversarial training: the hooks :func:`scadv.tl.adversarial_train` uses with
``space='counts'``.

Each training batch is attacked in count space by the engine of :func:`scadv.tl.count_attack`
(plain gradient-guided greedy search, one UMI per step, away from the TRUE label, at most
``umis`` UMIs, the same caps and library-size range), and the model is trained on
``(1 − r)·CE(clean) + r·CE(attacked)``. The attacked counts go through the recipe as a torch
function (:class:`~._transform.CountTransform`), so the model sees exactly the input a
count-space attacker produces. Early stopping watches the same objective on the validation
cells, attacked the same way every epoch (the search is deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn

from ... import _keys as K
from ... import _recipe as R
from .._training import _train as TR
from . import _engine as CE
from . import _transform as T

#: Cells read per chunk when the counts of the training / validation cells are cached.
_READ = 8192


class Cells:
    """Model-gene counts and the rest of the library of a fixed set of cells (positions in
    the source, ascending), kept in memory."""

    def __init__(self, src: R.Source, cells: np.ndarray) -> None:
        self.cells = np.asarray(cells, dtype=np.int64)
        parts, rests = [], []
        for lo in range(0, len(self.cells), _READ):
            counts, lib = src.counts(self.cells[lo:lo + _READ])
            parts.append(counts)
            rests.append(T.rest_of_library(counts, lib))
        self.counts = (sparse.csr_matrix(sparse.vstack(parts, format="csr"))
                       if parts else sparse.csr_matrix((0, src.n_genes), dtype=np.float32))
        self.rest = np.concatenate(rests) if rests else np.empty(0)

    def take(self, positions: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
        """Counts and rest of the cells at source positions ``positions``."""
        i = np.searchsorted(self.cells, positions)
        return self.counts[i], self.rest[i]


def config(*, umis: int, adv_ratio: float, cap_add: int, cap_remove: int,
           library: tuple[float, float] | None, library_from: str) -> dict[str, Any]:
    """The record of a count-space training scheme."""
    return {"space": "counts", "method": "greedy count attack", "umis": int(umis),
            "adv_ratio": float(adv_ratio), "cap_add": int(cap_add),
            "cap_remove": int(cap_remove),
            "library": "None" if library is None else np.asarray(library, dtype=np.float64),
            "library_from": library_from}


def _limits(cfg: Mapping[str, Any]) -> CE.Limits:
    lib = cfg["library"]
    rng = None if isinstance(lib, str) else (float(lib[0]), float(lib[1]))
    return CE.Limits(cap_add=int(cfg["cap_add"]), cap_remove=int(cfg["cap_remove"]), library=rng)


def attack(model: nn.Module, counts: sparse.csr_matrix, rest: np.ndarray, y: np.ndarray,
           transform: T.CountTransform, cfg: Mapping[str, Any], *, device: torch.device,
           seed: int) -> tuple[torch.Tensor, CE.CountResult]:
    """Attacked model input of the cells (greedy count attack away from ``y``) and the
    engine's result; the model's train/eval mode is restored."""
    was_training = model.training
    res = CE.run(model, counts, rest, y, transform,
                 search=CE.Search(budgets=(int(cfg["umis"]),), beam=1, top_k=1),
                 limits=_limits(cfg), targeted=False, device=device, seed=seed,
                 batch_size=max(len(y), 1))
    model.train(was_training)
    adv = torch.as_tensor(counts.toarray() + res.deltas[0].toarray(), dtype=torch.float32,
                          device=device)
    rest_t = torch.as_tensor(rest, dtype=torch.float64, device=device)
    with torch.no_grad():
        x = transform(adv, rest_t)
    return x, res


def hooks(cfg: Mapping[str, Any], *, src: R.Source, split: np.ndarray,
          recipe: Mapping[str, Any], device: torch.device, seed: int
          ) -> tuple[TR.CellBatchLoss, TR.Validate]:
    """The batch loss and validation criterion of count-space adversarial training."""
    transform = T.CountTransform.from_recipe(recipe, device)
    train = Cells(src, np.flatnonzero(split == K.SPLIT_TRAIN))
    val = Cells(src, np.flatnonzero(split == K.SPLIT_VAL))
    r = float(cfg["adv_ratio"])

    def objective(model: nn.Module, xb: torch.Tensor, adv: torch.Tensor, yb: torch.Tensor,
                  loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(torch.cat([xb, adv]))
        clean, robust = logits[:len(xb)], logits[len(xb):]
        return (1 - r) * loss_fn(clean, yb) + r * loss_fn(robust, yb), robust

    def batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, loss_fn: nn.Module,
                   cells: np.ndarray) -> torch.Tensor:
        counts, rest = train.take(cells)
        adv, _ = attack(model, counts, rest, yb.cpu().numpy(), transform, cfg, device=device,
                        seed=seed)
        loss, _ = objective(model, xb, adv, yb, loss_fn)
        return loss

    plain_ce = nn.CrossEntropyLoss()

    def validate(model: nn.Module, xv: torch.Tensor, yv: torch.Tensor) -> dict[str, float]:
        adv, _ = attack(model, val.counts, val.rest, yv.cpu().numpy(), transform, cfg,
                        device=device, seed=seed)
        model.eval()
        with torch.no_grad():
            loss, robust = objective(model, xv, adv, yv, plain_ce)
            clean = model(xv)
        return {"val_loss": float(loss),
                "val_accuracy": float((clean.argmax(1) == yv).float().mean()),
                "val_robust_accuracy": float((robust.argmax(1) == yv).float().mean())}

    return batch_loss, validate


def robust_accuracy(model: nn.Module, src: R.Source, cells: np.ndarray, y: np.ndarray,
                    n_classes: int, cfg: Mapping[str, Any], recipe: Mapping[str, Any], *,
                    device: torch.device, seed: int) -> dict[str, Any]:
    """Accuracy under the training's count attack (away from the true label, ``umis`` UMIs,
    greedy), overall and per class, of the cells at ``cells`` with labels ``y``."""
    data = Cells(src, cells)
    transform = T.CountTransform.from_recipe(recipe, device)
    res = CE.run(model, data.counts, data.rest, y, transform,
                 search=CE.Search(budgets=(int(cfg["umis"]),), beam=1, top_k=1),
                 limits=_limits(cfg), targeted=False, device=device, seed=seed)
    model.eval()
    ok = ~res.success[0]
    per_class = np.full(n_classes, np.nan)
    for c in np.unique(y):
        per_class[c] = float(ok[y == c].mean())
    return {"count_umis": int(cfg["umis"]), "count_robust_accuracy": float(ok.mean()),
            "count_robust_accuracy_per_class": per_class}
