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

from . import _records as REC
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

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every weight of :meth:`build`'s network (its ``state_dict``),
        computed without building it."""
        shapes: dict[str, tuple[int, ...]] = {}
        width = self.n_input
        if self.input_rank:
            shapes.update({"input.weight": (self.input_rank, width),
                           "input.bias": (self.input_rank,)})
            width = self.input_rank
        for i, h in enumerate(self.hidden):
            shapes.update({f"body.{3 * i}.weight": (h, width), f"body.{3 * i}.bias": (h,)})
            width = h
        shapes.update({"head.weight": (self.n_classes, width), "head.bias": (self.n_classes,)})
        return shapes

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
    """Everything needed to rebuild and apply ``model``, as plain arrays and scalars.

    ``weights_sha256`` is a content hash of the weights (:func:`scadv._records.weights_sha256`):
    loading checks it, so weights changed after saving are refused.
    """
    weights = weights_to_arrays(model)
    return {
        "kind": MODEL_KIND,
        "format_version": FORMAT_VERSION,
        "arch": arch.as_dict(),
        "weights": weights,
        "weights_sha256": REC.weights_sha256(weights),
        "classes": np.asarray(classes, dtype=str),
        "genes": np.asarray(genes, dtype=str),
        "prepare": dict(prepare),
        **extra,
    }


CLASSIFIER_FIX = ("retrain the classifier with scadv.tl.train_classifier, or load the file it "
                  "came from again.")
ARCH = {
    "n_input": REC.Field("int", low=1, high=REC.MAX_GENES),
    "n_classes": REC.Field("int", low=1, high=REC.MAX_CLASSES),
    "hidden": REC.Field("ints", (None,), low=1, high=REC.MAX_WIDTH),
    "dropout": REC.Field("floats", (None,), low=0.0, high=1.0),
    "input_rank": REC.Field("int", low=0, high=REC.MAX_WIDTH),
}


def architecture(record: Mapping[str, Any]) -> Architecture:
    """Validate a stored classifier and read its architecture.

    Everything is checked before anything is allocated: the kind and format version, the
    architecture's sizes (against hard limits), the classes and genes, the preprocessing
    recipe, every weight's name, shape, dtype and finiteness against the declared
    architecture, and the weights' content hash (``weights_sha256``, when the record has one:
    records written by scadv 0.1 do not). Any problem is a :class:`ScadvInputError`.
    """
    if not isinstance(record, Mapping) or str(record.get("kind", "")) != MODEL_KIND:
        raise ScadvInputError(
            "this is not a scadv classifier record (expected kind "
            f"{MODEL_KIND!r}); train one with scadv.tl.train_classifier."
        )
    what, fix = "classifier", CLASSIFIER_FIX
    top = REC.fields(record, {"format_version": REC.Field("int", optional=True),
                              "arch": REC.Field("map"), "prepare": REC.Field("map"),
                              "weights": REC.Field("map"),
                              "weights_sha256": REC.Field("str", optional=True),
                              "label_key": REC.Field("str", optional=True),
                              "split_key": REC.Field("str", optional=True)},
                     what=what, fix=fix)
    version = top.get("format_version", -1)
    if version > FORMAT_VERSION:
        raise ScadvInputError(
            f"the stored model has format version {version}, newer than this scadv understands "
            f"({FORMAT_VERSION}). Upgrade scadv."
        )
    a = REC.fields(top["arch"], ARCH, what="classifier architecture", fix=fix)
    hidden = tuple(int(h) for h in a["hidden"])
    dropout = tuple(float(p) for p in a["dropout"])
    if not 1 <= len(hidden) <= REC.MAX_LAYERS or len(dropout) != len(hidden):
        raise REC.malformed(what, "arch['hidden'] / arch['dropout']",
                            f"declare {len(hidden)} layers and {len(dropout)} dropout rates "
                            f"(1 to {REC.MAX_LAYERS} layers, one rate each)", fix)
    if a["input_rank"] > a["n_input"]:
        raise REC.malformed(what, "arch['input_rank']", f"({a['input_rank']}) exceeds the "
                            f"number of inputs ({a['n_input']})", fix)
    arch = Architecture(a["n_input"], a["n_classes"], hidden, dropout, a["input_rank"])
    shapes = arch.weight_shapes()
    if REC.n_parameters(shapes) > REC.MAX_PARAMETERS:
        raise REC.malformed(what, "arch", f"declares {REC.n_parameters(shapes)} weights (more "
                            f"than {REC.MAX_PARAMETERS})", fix)
    dims = {"n_input": arch.n_input, "n_classes": arch.n_classes}
    names = REC.fields(record, {"classes": REC.Field("strs", ("n_classes",), unique=True),
                                "genes": REC.Field("strs", ("n_input",), unique=True)},
                       what=what, fix=fix, dims=dims)
    recipe = REC.recipe(top["prepare"], what="classifier's preprocessing recipe")
    if not np.array_equal(np.asarray(recipe["genes"]).astype(str), names["genes"]):
        raise REC.malformed(what, "'genes'", "differ from the genes of its recipe "
                            "('prepare')", fix)
    stored = REC.weights(top["weights"], shapes, what=what, fix=fix)
    if "weights_sha256" in top and top["weights_sha256"] != REC.weights_sha256(stored):
        raise ScadvInputError(
            "the stored classifier's weights do not match their content hash "
            "(weights_sha256): they were changed or damaged after scadv saved them. Retrain "
            "the classifier with scadv.tl.train_classifier, or load the original file again."
        )
    return arch


def from_record(record: Mapping[str, Any], device: torch.device | str = "cpu") -> MLP:
    """Rebuild the network from a stored record (eval mode, on ``device``).

    Only numeric arrays are read; every weight's name, shape and dtype is checked against the
    architecture before loading.
    """
    arch = architecture(record)  # validates everything before the network is allocated
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
    """Load plain arrays into ``module`` after checking every name, shape, dtype and value
    against its architecture (nothing is unpickled; a malformed record raises a clear error)."""
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    arrays = REC.weights(stored, shapes, what=what,
                         fix=f"retrain the {what} (or load the file it came from again).")
    module.load_state_dict({name: torch.from_numpy(arr) for name, arr in arrays.items()})
