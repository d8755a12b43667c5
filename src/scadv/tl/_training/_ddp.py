"""Data-parallel training with :mod:`torch.distributed` (``train_classifier(distributed=True)``).

Every process (*rank*) of a process group runs the same script on the same AnnData (e.g. each
opens the same ``.h5ad`` backed): ``torchrun --nproc-per-node=2 script.py``, or ``torchrun``
on several machines (``--nnodes``, ``--rdzv-endpoint``). The backend is gloo on the CPU and
NCCL on CUDA. What is shared out, and how the result stays that of one process:

* **Every global minibatch is split between the ranks**: rank ``r`` of ``W`` takes the
  ``r``-th of ``W`` near-equal slices of each minibatch of the single-process run (same
  shuffling: every rank draws the same seeded permutation). Each rank's loss is its slice's
  share of the minibatch's loss; :class:`torch.nn.parallel.DistributedDataParallel`
  all-reduces (averages) the gradients, so every rank takes the same optimizer step and the
  models stay identical on every rank.
* **Dropout masks are those of the single-process run**: each rank draws the whole
  minibatch's mask from the same seeded generator and keeps its slice's rows.
* **One-off passes over the cells** (the covariance of the PCA input layer, the frozen
  projection of the training and validation cells, the final predictions of every cell) are
  split into the same batches as in one process, batch ``i`` computed by rank ``i mod W``, and
  gathered in batch order by every rank, so their sums are added in the same order.

What differs from one process is only the order of floating-point additions inside each
minibatch's gradient (two half-batch products summed by the all-reduce instead of one
full-batch product): about 1e-7 relative per step, which training can amplify to small
differences in the final weights (see ``tests/tl/training/test_distributed.py`` for the
measured tolerance).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..._errors import ScadvInputError

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place in the process group."""

    rank: int
    world: int

    def slice(self, n: int) -> slice:
        """This rank's rows of a minibatch of ``n`` rows (``np.array_split``'s slices)."""
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return slice(lo, lo + base + (1 if self.rank < extra else 0))


def join(distributed: bool, device: torch.device) -> Group | None:
    """The process group to train in (initialised from ``torchrun``'s environment if needed),
    or None for single-process training."""
    if not distributed:
        return None
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise ScadvInputError("distributed=True needs a torch build with torch.distributed.")
    if not dist.is_initialized():
        if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR",
                                               "MASTER_PORT")):
            raise ScadvInputError(
                "distributed=True trains in a torch.distributed process group, but none is "
                "initialised and this process was not started by torchrun. Launch the script "
                "with `torchrun --nproc-per-node=2 script.py` (one process per CPU socket or "
                "GPU), or call torch.distributed.init_process_group(...) before training.")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size())


def check_same(group: Group | None, what: str, value: Any) -> None:
    """Refuse to train when the ranks disagree on ``value`` (their data or options)."""
    if group is None:
        return
    import torch.distributed as dist

    got: list[Any] = [None] * group.world
    dist.all_gather_object(got, value)
    if any(v != got[0] for v in got):
        raise ScadvInputError(
            f"the ranks of the process group differ in {what} ({got}); every rank must call "
            "train_classifier on the same AnnData with the same options.")


def ordered(group: Group | None, n: int, fn: Callable[[int], T]) -> Iterator[T]:
    """``fn(i) for i in range(n)``, in order: with a process group, item ``i`` is computed by
    rank ``i mod W`` and every rank receives every item (gathered a round of ``W`` at a time,
    so memory holds one round)."""
    if group is None:
        for i in range(n):
            yield fn(i)
        return
    import torch.distributed as dist

    for lo in range(0, n, group.world):
        i = lo + group.rank
        mine = fn(i) if i < n else None
        got: list[Any] = [None] * group.world
        dist.all_gather_object(got, mine)
        yield from got[:min(group.world, n - lo)]


def all_sum(group: Group | None, value: float) -> float:
    """The sum of ``value`` over the ranks."""
    if group is None:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # pragma: no cover - needs GPUs
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


class SlicedDropout(nn.Module):
    """Dropout whose mask is drawn for the whole global minibatch (as one process would draw
    it) and sliced to this rank's rows."""

    def __init__(self, p: float, state: dict[str, Any]) -> None:
        super().__init__()
        self.p = float(p)
        self.state = state  # 'rows': this rank's slice, 'n': the global minibatch size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        # what torch's CPU dropout does: noise = bernoulli(1 - p) / (1 - p); x * noise
        noise = torch.empty((int(self.state["n"]), *x.shape[1:]), dtype=x.dtype,
                            device=x.device).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        return x * noise[self.state["rows"]]


def slice_dropout(model: nn.Module, state: dict[str, Any]) -> list[tuple[nn.Module, str,
                                                                          nn.Module]]:
    """Swap every :class:`torch.nn.Dropout` of ``model`` for a :class:`SlicedDropout`; returns
    what to put back (:func:`restore`)."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, SlicedDropout(child.p, state))
                swapped.append((parent, name, child))
    return swapped


def restore(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, child in swapped:
        setattr(parent, name, child)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged
    over the ranks after every backward pass)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def rows_of(n: int, batch_size: int, group: Group) -> np.ndarray:
    """Positions (among ``n`` shuffled rows) this rank reads: its slice of every minibatch."""
    parts = [np.arange(lo, min(lo + batch_size, n))[group.slice(min(batch_size, n - lo))]
             for lo in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)
