"""The cell-type MLP, its storage as plain arrays, and batched inference.

A stored model is a plain dictionary (see :func:`to_record`) of numpy arrays, numbers and
strings; :func:`from_record` validates every entry before building the network, so an ``.h5ad``
from a stranger can never execute code (nothing is unpickled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import ScadvInputError

MODEL_KIND = "scadv.mlp"
FORMAT_VERSION = 1


class MLP(nn.Module):
    """D → [low-rank input] → 256 → 128 → 64 → C with ReLU and dropout.

    Parameters
    ----------
    n_input
        Number of genes (input features).
    n_classes
        Number of classes.
    hidden
        Widths of the hidden layers; the last one is the cell embedding.
    dropout
        Dropout after each hidden layer (one value per hidden layer).
    input_rank
        If set, a linear map D → ``input_rank`` precedes the hidden layers (initialised by
        :func:`scadv.tl.train_classifier` from the training cells' principal components).
    """

    def __init__(self, n_input: int, n_classes: int, hidden: Sequence[int] = (256, 128, 64),
                 dropout: Sequence[float] = (0.4, 0.4, 0.3), input_rank: int | None = None) -> None:
        super().__init__()
        if len(hidden) != len(dropout):
            raise ScadvInputError(
                f"hidden has {len(hidden)} layers but dropout has {len(dropout)} values; "
                "give one dropout rate per hidden layer."
            )
        if not hidden:
            raise ScadvInputError("hidden must list at least one layer width (the embedding).")
        self.input = nn.Linear(n_input, input_rank) if input_rank else nn.Identity()
        layers: list[nn.Module] = []
        width = input_rank or n_input
        for h, p in zip(hidden, dropout, strict=True):
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(float(p))]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (after its ReLU, before its dropout): the cell embedding."""
        return self.body[:-1](self.input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.body(self.input(x)))

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, logits)`` in one pass."""
        emb = self.embed(x)
        return emb, self.head(self.body[-1](emb))


@dataclass(frozen=True)
class Architecture:
    """Shape of an :class:`MLP`, as stored under ``record['arch']``."""

    n_input: int
    n_classes: int
    hidden: tuple[int, ...]
    dropout: tuple[float, ...]
    input_rank: int  # 0: no low-rank input layer

    def build(self) -> MLP:
        return MLP(self.n_input, self.n_classes, self.hidden, self.dropout, self.input_rank or None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_input": self.n_input,
            "n_classes": self.n_classes,
            "hidden": np.asarray(self.hidden, dtype=np.int64),
            "dropout": np.asarray(self.dropout, dtype=np.float64),
            "input_rank": self.input_rank,
        }


def weights_to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """A state dict as float32 numpy arrays (copies, detached, on the CPU)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True)
            for k, v in model.state_dict().items()}


def to_record(model: MLP, arch: Architecture, *, classes: Sequence[str], genes: Sequence[str],
              prepare: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Everything needed to rebuild and apply ``model``, as plain arrays and scalars."""
    return {
        "kind": MODEL_KIND,
        "format_version": FORMAT_VERSION,
        "arch": arch.as_dict(),
        "weights": weights_to_arrays(model),
        "classes": np.asarray(classes, dtype=str),
        "genes": np.asarray(genes, dtype=str),
        "prepare": dict(prepare),
        **extra,
    }


def _int(record: Mapping[str, Any], key: str) -> int:
    value = np.asarray(record[key])
    if value.shape != () or value.dtype.kind not in "iu":
        raise ScadvInputError(f"stored model is malformed: arch[{key!r}] must be an integer.")
    return int(value)


def architecture(record: Mapping[str, Any]) -> Architecture:
    """Validate ``record`` and read its architecture."""
    if not isinstance(record, Mapping) or str(record.get("kind", "")) != MODEL_KIND:
        raise ScadvInputError(
            "this is not a scadv classifier record (expected kind "
            f"{MODEL_KIND!r}); train one with scadv.tl.train_classifier."
        )
    version = int(np.asarray(record.get("format_version", -1)))
    if version > FORMAT_VERSION:
        raise ScadvInputError(
            f"the stored model has format version {version}, newer than this scadv understands "
            f"({FORMAT_VERSION}). Upgrade scadv."
        )
    a = record["arch"]
    hidden = tuple(int(h) for h in np.asarray(a["hidden"]).ravel())
    dropout = tuple(float(p) for p in np.asarray(a["dropout"]).ravel())
    return Architecture(_int(a, "n_input"), _int(a, "n_classes"), hidden, dropout,
                        _int(a, "input_rank"))


def from_record(record: Mapping[str, Any], device: torch.device | str = "cpu") -> MLP:
    """Rebuild the network from a stored record (eval mode, on ``device``).

    Only numeric arrays are read; every weight's name, shape and dtype is checked against the
    architecture before loading.
    """
    arch = architecture(record)
    model = arch.build()
    load_weights(model, record["weights"], what="model")
    return model.to(device).eval()


@torch.no_grad()
def infer(model: MLP, x: np.ndarray, *, device: torch.device, batch_size: int = 4096
          ) -> tuple[np.ndarray, np.ndarray]:
    """Batched ``(embedding, logits)`` for a dense matrix, in eval mode."""
    model.eval()
    embs, logits = [], []
    for lo in range(0, x.shape[0], batch_size):
        xb = torch.as_tensor(np.asarray(x[lo:lo + batch_size], dtype=np.float32), device=device)
        emb, logit = model.forward_with_embedding(xb)
        embs.append(emb.cpu().numpy())
        logits.append(logit.cpu().numpy())
    n_emb = model.head.in_features
    n_cls = model.head.out_features
    return (np.concatenate(embs) if embs else np.empty((0, n_emb), np.float32),
            np.concatenate(logits) if logits else np.empty((0, n_cls), np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a logits array."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def load_weights(module: nn.Module, stored: Any, *, what: str) -> None:
    """Load plain arrays into ``module`` after checking every name, shape and dtype against
    its architecture (nothing is unpickled; a malformed record raises a clear error)."""
    expected = module.state_dict()
    got = set(stored) if isinstance(stored, Mapping) else set()
    if not isinstance(stored, Mapping) or got != set(expected):
        raise ScadvInputError(
            f"stored {what} weights do not match its architecture: missing "
            f"{sorted(set(expected) - got)}, unexpected {sorted(got - set(expected))}."
        )
    tensors = {}
    for name, ref in expected.items():
        arr = np.asarray(stored[name])
        if arr.dtype.kind != "f" or arr.shape != tuple(ref.shape):
            raise ScadvInputError(
                f"stored {what} weight {name!r} has shape {arr.shape} / dtype {arr.dtype}; "
                f"expected {tuple(ref.shape)} floats."
            )
        tensors[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    module.load_state_dict(tensors)
