"""Stored classifiers: their networks, their storage as plain arrays, and batched inference.

A stored model is a plain dictionary of numpy arrays, numbers and strings; :func:`from_record`
validates every entry before building the network, so an ``.h5ad`` from a stranger can never
execute code (nothing is unpickled). Every kind maps the model input (the output of the
record's ``prepare`` recipe) to class logits; they differ in the network and in how logits
become probabilities (``record['output']``, see :func:`probabilities`):

``'scadv.mlp'``
    scadv's own :class:`MLP` (:func:`to_record`), written by :func:`scadv.tl.train_classifier`.
``'scadv.linear'``
    A linear classifier, logits ``x W^T + b`` (optionally after a per-gene standardisation
    ``(x − shift) / scale``): CellTypist models, scikit-learn logistic regression, linear SVMs,
    SGD classifiers (:mod:`scadv.models`).
``'scadv.sklearn_mlp'``
    A scikit-learn ``MLPClassifier``: hidden layers with its activation, then the output layer.
``'scadv.torch'``
    A user's PyTorch module (:func:`scadv.models.from_torch`), written when such a model is
    passed as ``model=`` to a tool: its genes, classes, preprocessing and output rule, and a
    SHA-256 of its weights, but no network (scadv cannot store an arbitrary module as plain
    arrays); :func:`from_record` refuses it with the fix (pass the model object again).

The last two are rebuilt as a :class:`Feedforward` network, except that a ReLU
``MLPClassifier`` without a standardisation step is rebuilt as an :class:`MLP` (dropout 0),
so it gets every fast path of scadv's own network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from . import _records as REC
from ._errors import ScadvInputError

MODEL_KIND = "scadv.mlp"
LINEAR_KIND = "scadv.linear"
SKLEARN_MLP_KIND = "scadv.sklearn_mlp"
#: A user's PyTorch module held in memory: its genes, classes, preprocessing and output rule
#: are stored (so results made with it can be read back), its network is not.
MEMORY_KIND = "scadv.torch"
#: Every stored classifier kind.
MODEL_KINDS = (MODEL_KIND, LINEAR_KIND, SKLEARN_MLP_KIND, MEMORY_KIND)
#: The kinds :func:`from_record` can rebuild a network for.
NETWORK_KINDS = (MODEL_KIND, LINEAR_KIND, SKLEARN_MLP_KIND)
FORMAT_VERSION = 1
#: How a model's logits become probabilities (see :func:`probabilities`).
OUTPUTS = ("softmax", "ovr", "sigmoid", "decision")
#: Hidden-layer activations of :class:`Feedforward` (scikit-learn's names).
ACTIVATIONS = ("relu", "tanh", "logistic", "identity")


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


class Feedforward(nn.Module):
    """``(x − shift) / scale`` → [Linear → activation] × k → Linear: the logits.

    With no hidden layer (``k = 0``) it is a linear classifier. This is how scikit-learn's
    linear models, ``MLPClassifier`` and CellTypist's logistic regression are rebuilt.

    Parameters
    ----------
    sizes
        Input width, hidden widths, number of classes (at least two entries).
    activation
        Hidden-layer activation, scikit-learn's name: ``'relu'``, ``'tanh'``, ``'logistic'``
        or ``'identity'``.
    standardize
        Whether the input is first standardised per gene with the buffers ``shift`` and
        ``scale`` (a pipeline's ``StandardScaler`` that the preprocessing recipe cannot hold).
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, sizes: Sequence[int], *, activation: str = "relu",
                 standardize: bool = False) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ScadvInputError("a feed-forward network needs an input and an output width.")
        if activation not in ACTIVATIONS:
            raise ScadvInputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
        self.activation = activation
        self.standardize = bool(standardize)
        if self.standardize:
            self.register_buffer("shift", torch.zeros(int(sizes[0])))
            self.register_buffer("scale", torch.ones(int(sizes[0])))
        self.layers = nn.ModuleList(nn.Linear(int(a), int(b)) for a, b in pairwise(sizes))

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return cast(nn.Linear, self.layers[-1])

    @property
    def is_linear(self) -> bool:
        """No hidden layer: logits are an affine function of the (standardised) input."""
        return len(self.layers) == 1

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        """The input after the optional standardisation."""
        return (x - self.shift) / self.scale if self.standardize else x

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return torch.relu(h)
        if self.activation == "tanh":
            return torch.tanh(h)
        if self.activation == "logistic":
            return torch.sigmoid(h)
        return h

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, logits)``: the embedding is the last hidden layer (after its
        activation), or the logits themselves for a linear classifier."""
        h = self.standardized(x)
        for lin in self.layers[:-1]:
            h = self._act(lin(h))
        logits = self.head(h)
        return (logits if self.is_linear else h), logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The cell embedding (see :meth:`forward_with_embedding`)."""
        return self.forward_with_embedding(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.forward_with_embedding(x)[1]


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


def feedforward_record(layers: Sequence[tuple[np.ndarray, np.ndarray]], *, activation: str,
                       classes: Sequence[str], genes: Sequence[str] | np.ndarray,
                       prepare: Mapping[str, Any], output: str, shift: np.ndarray | None = None,
                       scale: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """The plain-array record of a :class:`Feedforward` classifier.

    ``layers`` are ``(weight (out × in), bias (out,))`` pairs from input to logits; one pair
    makes a ``'scadv.linear'`` record, more a ``'scadv.sklearn_mlp'`` record.
    """
    if output not in OUTPUTS:
        raise ScadvInputError(f"output must be one of {OUTPUTS}, got {output!r}.")
    standardize = shift is not None or scale is not None
    sizes = [int(np.shape(layers[0][0])[1])] + [int(np.shape(w)[0]) for w, _ in layers]
    weights: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        weights[f"layers.{i}.weight"] = np.asarray(w, dtype=np.float32).copy()
        weights[f"layers.{i}.bias"] = np.asarray(b, dtype=np.float32).reshape(-1).copy()
    if standardize:
        n_in = sizes[0]
        weights["shift"] = (np.zeros(n_in, np.float32) if shift is None
                            else np.asarray(shift, dtype=np.float32).copy())
        weights["scale"] = (np.ones(n_in, np.float32) if scale is None
                            else np.asarray(scale, dtype=np.float32).copy())
    arch: dict[str, Any] = {"n_input": sizes[0], "n_classes": sizes[-1],
                            "standardize": int(standardize)}
    if len(layers) > 1:
        arch["hidden"] = np.asarray(sizes[1:-1], dtype=np.int64)
        arch["activation"] = str(activation)
    return {
        "kind": LINEAR_KIND if len(layers) == 1 else SKLEARN_MLP_KIND,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "weights": weights,
        "classes": np.asarray(classes, dtype=str),
        "genes": np.asarray(genes, dtype=str),
        "prepare": dict(prepare),
        "output": output,
        **extra,
    }


def _int(record: Mapping[str, Any], key: str) -> int:
    value = np.asarray(record[key])
    if value.shape != () or value.dtype.kind not in "iu":
        raise ScadvInputError(f"stored model is malformed: arch[{key!r}] must be an integer.")
    return int(value)


def _kind(record: Mapping[str, Any]) -> str:
    """The record's kind, after checking it is a classifier this scadv can rebuild."""
    kind = str(record.get("kind", "")) if isinstance(record, Mapping) else ""
    if kind not in MODEL_KINDS:
        raise ScadvInputError(
            f"this is not a scadv classifier record (kind {kind!r}; expected one of "
            f"{list(MODEL_KINDS)}); train one with scadv.tl.train_classifier or store one with "
            "scadv.tl.add_model."
        )
    top = REC.fields(record, {"format_version": REC.Field("int", optional=True)},
                     what="classifier", fix=CLASSIFIER_FIX)
    version = top.get("format_version", -1)
    if version > FORMAT_VERSION:
        raise ScadvInputError(
            f"the stored model has format version {version}, newer than this scadv understands "
            f"({FORMAT_VERSION}). Upgrade scadv."
        )
    return kind


def architecture(record: Mapping[str, Any]) -> Architecture:
    """Validate a stored classifier and read its architecture.

    Everything is checked before anything is allocated: the kind and format version, the
    architecture's sizes (against hard limits), the classes and genes, the preprocessing
    recipe, every weight's name, shape, dtype and finiteness against the declared
    architecture, and the weights' content hash (``weights_sha256``, when the record has one:
    records written by scadv 0.1 do not). Any problem is a :class:`ScadvInputError`.
    """
    if _kind(record) != MODEL_KIND:
        raise ScadvInputError(
            f"this is a {record['kind']!r} classifier, not scadv's MLP (kind {MODEL_KIND!r})."
        )
    what, fix = "classifier", CLASSIFIER_FIX
    top = REC.fields(record, {"format_version": REC.Field("int", optional=True),
                              "arch": REC.Field("map"), "prepare": REC.Field("map"),
                              "weights": REC.Field("map"),
                              "weights_sha256": REC.Field("str", optional=True),
                              "label_key": REC.Field("str", optional=True),
                              "split_key": REC.Field("str", optional=True)},
                     what=what, fix=fix)
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


@dataclass(frozen=True)
class FeedforwardArchitecture:
    """Shape of a :class:`Feedforward`, as stored under ``record['arch']``."""

    sizes: tuple[int, ...]
    activation: str
    standardize: bool

    def build(self) -> Feedforward:
        return Feedforward(self.sizes, activation=self.activation, standardize=self.standardize)


def feedforward_architecture(record: Mapping[str, Any]) -> FeedforwardArchitecture:
    """Validate a ``'scadv.linear'`` / ``'scadv.sklearn_mlp'`` record and read its shape."""
    kind = _kind(record)
    if kind == MODEL_KIND:
        raise ScadvInputError("this is scadv's MLP, not a feed-forward record.")
    a = record["arch"]
    n_in, n_out = _int(a, "n_input"), _int(a, "n_classes")
    hidden: tuple[int, ...] = ()
    activation = "identity"
    if kind == SKLEARN_MLP_KIND:
        hidden = tuple(int(h) for h in np.asarray(a["hidden"]).ravel())
        activation = str(a["activation"])
        if not hidden:
            raise ScadvInputError("stored model is malformed: an MLP record without hidden "
                                  "layers (store a linear model as 'scadv.linear').")
        if activation not in ACTIVATIONS:
            raise ScadvInputError(f"stored model is malformed: activation {activation!r} is not "
                                  f"one of {ACTIVATIONS}.")
    if n_in < 1 or n_out < 2 or any(h < 1 for h in hidden):
        raise ScadvInputError("stored model is malformed: layer widths must be positive and "
                              "there must be at least two classes.")
    return FeedforwardArchitecture((n_in, *hidden, n_out), activation, bool(_int(a, "standardize")))


def check_record(record: Mapping[str, Any]) -> str:
    """Validate a stored classifier of any kind (without building it); returns its kind."""
    kind = _kind(record)
    if kind == MEMORY_KIND:
        n_in = len(np.asarray(record.get("genes", [])).ravel())
        n_out = len(np.asarray(record.get("classes", [])).ravel())
        if output_rule(record) not in OUTPUTS:
            raise ScadvInputError(f"stored model is malformed: output {record['output']!r} is "
                                  f"not one of {OUTPUTS}.")
        if n_in < 1 or n_out < 2:
            raise ScadvInputError("stored model is malformed: it needs genes and at least two "
                                  "classes.")
    elif kind == MODEL_KIND:
        arch = architecture(record)
        n_in, n_out = arch.n_input, arch.n_classes
    else:
        sizes = feedforward_architecture(record).sizes
        n_in, n_out = sizes[0], sizes[-1]
        if output_rule(record) not in OUTPUTS:
            raise ScadvInputError(f"stored model is malformed: output {record['output']!r} is "
                                  f"not one of {OUTPUTS}.")
    for key, n in (("genes", n_in), ("classes", n_out)):
        if key not in record or np.asarray(record[key]).shape != (n,):
            raise ScadvInputError(f"stored model is malformed: it needs {n} {key}.")
    if not isinstance(record.get("prepare"), Mapping):
        raise ScadvInputError("stored model is malformed: it has no 'prepare' recipe.")
    return kind


def output_rule(record: Mapping[str, Any]) -> str:
    """How the record's logits become probabilities (``'softmax'`` for scadv's MLP)."""
    return str(record.get("output", "softmax"))


def from_record(record: Mapping[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the network of any stored classifier kind (eval mode, on ``device``).

    Returns an :class:`MLP` for ``'scadv.mlp'`` records and for ReLU ``'scadv.sklearn_mlp'``
    records without a standardisation step, a :class:`Feedforward` otherwise; both map the
    model input to logits. Only numeric arrays are read; every weight's name, shape and dtype
    is checked against the architecture before loading. A ``'scadv.torch'`` record (a module
    held in memory) has no network to rebuild: a clear error says to pass the model object.
    """
    kind = check_record(record)
    if kind == MEMORY_KIND:
        name = str(record.get("key", record.get("name", "this classifier")))
        raise ScadvInputError(
            f"classifier {name!r} is a PyTorch module held in memory (scadv.models.from_torch): "
            "its network is not stored (scadv never pickles). Pass the scadv.models.Model "
            "object itself as model=..., not its key."
        )
    if kind == MODEL_KIND:
        mlp = architecture(record).build()
        load_weights(mlp, record["weights"], what="model")
        return mlp.to(device).eval()
    ff = feedforward_architecture(record)
    net = ff.build()
    load_weights(net, record["weights"], what="model")
    if ff.activation == "relu" and not ff.standardize and len(ff.sizes) > 2:
        return _as_mlp(net).to(device).eval()
    return net.to(device).eval()


def network(record: Mapping[str, Any], device: torch.device | str = "cpu",
            module: nn.Module | None = None) -> nn.Module:
    """The classifier's network on ``device``: ``module`` when given (a user's torch module
    held in memory, whose ``'scadv.torch'`` record has none), else rebuilt from ``record``
    (what parallel tasks do, so that only plain arrays travel to them)."""
    if module is not None:
        return module.to(device).eval()
    return from_record(record, device)


def _as_mlp(ff: Feedforward) -> MLP:
    """The same ReLU network as scadv's :class:`MLP` (dropout 0), for its fast paths."""
    linears = [cast(nn.Linear, lin) for lin in ff.layers]
    hidden = [lin.out_features for lin in linears[:-1]]
    mlp = MLP(linears[0].in_features, linears[-1].out_features, hidden, [0.0] * len(hidden))
    body = [m for m in mlp.body if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for dst, src in zip([*body, mlp.head], linears, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return mlp


def require_mlp(model: nn.Module, *, action: str) -> MLP:
    """``model`` itself if it is scadv's :class:`MLP`, else a clear error: ``action`` needs
    scadv's own network (its hidden layers are part of what it does)."""
    if isinstance(model, MLP):
        return model
    raise ScadvInputError(
        f"{action} needs scadv's own MLP, but the classifier is a {type(model).__name__} "
        "(e.g. a CellTypist, scikit-learn or PyTorch model). Train one with "
        "scadv.tl.train_classifier(adata, label_key) and pass its key as model=..., or audit "
        "this classifier with scadv.tl.pgd / fgsm / meta_detect / attribute / compare_models "
        "or the gene-level attacks, which take any model."
    )


def embedding_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embedding, logits)`` of any module: its ``forward_with_embedding`` where it has one
    (scadv's :class:`MLP` and :class:`Feedforward`), else the logits twice."""
    both = getattr(model, "forward_with_embedding", None)
    if callable(both):
        emb, logits = both(x)
        return emb, logits
    logits = model(x)
    return logits, logits


def state_digest(module: nn.Module) -> np.ndarray:
    """SHA-256 of a module's state dict (names, shapes, float32 values) as 32 float32 numbers
    (the ``weights`` of a ``'scadv.torch'`` record, so fingerprints tell modules apart)."""
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        arr = value.detach().cpu().numpy()
        h.update(f"{name}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).astype(np.float32)


def linear_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W, b)`` with logits ``x W^T + b`` when ``model`` is a linear :class:`Feedforward`
    without standardisation, else ``None``."""
    if isinstance(model, Feedforward) and model.is_linear and not model.standardize:
        return model.head.weight, model.head.bias
    return None


@torch.no_grad()
def infer(model: nn.Module, x: np.ndarray, *, device: torch.device, batch_size: int = 4096
          ) -> tuple[np.ndarray, np.ndarray]:
    """Batched ``(embedding, logits)`` for a dense matrix, in eval mode.

    The embedding is the model's ``forward_with_embedding`` one where it has it: the last
    hidden layer of :class:`MLP` and :class:`Feedforward` networks, the logits of a linear
    classifier. For any other module it is the logits.
    """
    model.eval()
    both = getattr(model, "forward_with_embedding", None)
    embs, logits = [], []
    for lo in range(0, x.shape[0], batch_size):
        xb = torch.as_tensor(np.asarray(x[lo:lo + batch_size], dtype=np.float32), device=device)
        if callable(both):
            emb, logit = both(xb)
        else:
            logit = model(xb)
            emb = logit
        embs.append(emb.cpu().numpy())
        logits.append(logit.cpu().numpy())
    if embs:
        return np.concatenate(embs), np.concatenate(logits)
    # no cells: empty arrays of the right widths, read from one zero row
    probe = torch.zeros((1, x.shape[1]), device=device)
    logit = model(probe)
    emb = both(probe)[0] if callable(both) else logit
    return np.empty((0, emb.shape[1]), np.float32), np.empty((0, logit.shape[1]), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a logits array."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def probabilities(logits: np.ndarray, output: str = "softmax") -> np.ndarray:
    """Class probabilities from logits, by the model's own rule.

    ``'softmax'``
        Multinomial models (scadv's MLP, logistic regression, ``MLPClassifier``).
    ``'ovr'``
        One-vs-rest: a sigmoid per class, normalised to sum 1 (scikit-learn's
        ``predict_proba`` of one-vs-rest linear models; uniform where every sigmoid is 0).
    ``'sigmoid'``
        A sigmoid per class, not normalised: CellTypist's probability matrix.
    ``'decision'``
        Models without probabilities (e.g. ``LinearSVC``): the softmax of the decision
        values, as a score in ``[0, 1]`` (not a calibrated probability).

    The predicted class is the arg-max of the logits under every rule.
    """
    if output in ("softmax", "decision"):
        return softmax(logits)
    p = expit(np.asarray(logits, dtype=np.float64))
    if output == "sigmoid":
        return p.astype(np.float32)
    if output == "ovr":
        total = p.sum(axis=1, keepdims=True)
        zero = total[:, 0] == 0
        p[zero] = 1.0
        total[zero] = p.shape[1]
        return (p / total).astype(np.float32)
    raise ScadvInputError(f"output must be one of {OUTPUTS}, got {output!r}.")


def probabilities_torch(logits: torch.Tensor, output: str = "softmax") -> torch.Tensor:
    """:func:`probabilities` for a tensor (same rules)."""
    if output in ("softmax", "decision"):
        return torch.softmax(logits, dim=1)
    p = torch.sigmoid(logits)
    if output == "sigmoid":
        return p
    if output == "ovr":
        total = p.sum(dim=1, keepdim=True)
        zero = total.squeeze(1) == 0
        if bool(zero.any()):
            p = torch.where(zero.unsqueeze(1), torch.ones_like(p), p)
            total = p.sum(dim=1, keepdim=True)
        return p / total
    raise ScadvInputError(f"output must be one of {OUTPUTS}, got {output!r}.")


def load_weights(module: nn.Module, stored: Any, *, what: str) -> None:
    """Load plain arrays into ``module`` after checking every name, shape, dtype and value
    against its architecture (nothing is unpickled; a malformed record raises a clear error)."""
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    arrays = REC.weights(stored, shapes, what=what,
                         fix=f"retrain the {what} (or load the file it came from again).")
    module.load_state_dict({name: torch.from_numpy(arr) for name, arr in arrays.items()})
