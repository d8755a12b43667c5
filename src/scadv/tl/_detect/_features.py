"""Per-cell meta-features of a stored classifier: what the meta-detector looks at.

Every feature is computed from the classifier's *own* output. The input gradient is the
gradient of the cross-entropy of the class the model **predicts** for the cell: true labels
are never used at inference.

Groups (in this order in the feature vector):

``embedding``
    The 64-d last hidden layer.
``logits``, ``softmax``
    One column per class, in the model's class order.
``margin``
    Top-1 minus top-2 logit.
``entropy``
    Entropy of the softmax (natural log).
``grad``
    Mean, variance and L2 norm over genes of :math:`|\\nabla_x \\mathrm{CE}(f(x), \\hat y)|`,
    with :math:`\\hat y` the predicted class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ... import _model as M
from ... import _progress as PB
from ..._errors import ScadvInputError
from .._attacks import _engine as E

GROUPS = ("embedding", "logits", "softmax", "margin", "entropy", "grad")
GRAD_STATS = ("grad_mean", "grad_var", "grad_l2")


def check_groups(features: Sequence[str]) -> tuple[str, ...]:
    """Validate a selection of feature groups; returns them in canonical order."""
    if isinstance(features, str):
        features = (features,)
    chosen = tuple(str(f) for f in features)
    unknown = sorted(set(chosen) - set(GROUPS))
    if unknown or not chosen:
        raise ScadvInputError(
            f"features must be a non-empty selection of {list(GROUPS)}, got {list(chosen)}"
            + (f" (unknown: {unknown})" if unknown else "") + "."
        )
    if len(set(chosen)) != len(chosen):
        raise ScadvInputError(f"features lists a group twice: {list(chosen)}.")
    return tuple(g for g in GROUPS if g in chosen)


def names(groups: Sequence[str], classes: Sequence[str], embed_dim: int) -> list[str]:
    """Column names of the feature vector of ``groups``."""
    out: list[str] = []
    for g in groups:
        if g == "embedding":
            out += [f"emb{i}" for i in range(embed_dim)]
        elif g in ("logits", "softmax"):
            out += [f"{g[:-1] if g == 'logits' else 'p'}_{c}" for c in classes]
        elif g == "grad":
            out += list(GRAD_STATS)
        else:
            out.append(g)
    return out


def _assemble(groups: Sequence[str], emb: torch.Tensor, logits: torch.Tensor,
              grad: torch.Tensor | None) -> torch.Tensor:
    parts = []
    proba = torch.softmax(logits, dim=1)
    for g in groups:
        if g == "embedding":
            parts.append(emb)
        elif g == "logits":
            parts.append(logits)
        elif g == "softmax":
            parts.append(proba)
        elif g == "margin":
            top = torch.topk(logits, 2, dim=1).values
            parts.append((top[:, 0] - top[:, 1]).unsqueeze(1))
        elif g == "entropy":
            logp = torch.log_softmax(logits, dim=1)
            parts.append(-(proba * logp).sum(dim=1, keepdim=True))
        elif g == "grad":
            if grad is None:
                raise ValueError("the 'grad' meta-features need the input gradient.")
            a = grad.abs()
            mean = a.mean(dim=1, keepdim=True)
            var = ((a - mean) ** 2).mean(dim=1, keepdim=True)
            parts.append(torch.cat([mean, var, a.norm(dim=1, keepdim=True)], dim=1))
    return torch.cat(parts, dim=1)


def input_grad(net: nn.Module, x: torch.Tensor, pred: torch.Tensor, *,
               grad_out: torch.Tensor) -> torch.Tensor:
    """d CE(f(x), pred) / d x: exact without autograd for scadv's MLP and linear classifiers,
    autograd for any other differentiable module."""
    backward = E.exact_backward(net)
    if backward is not None:
        backward(x, lambda logits: E.objective_and_grad(logits, pred, loss="ce",
                                                        targeted=False), grad_out=grad_out)
    else:
        E.autograd_input_grad(net, x, pred, loss="ce", targeted=False, grad_out=grad_out)
    return grad_out


@torch.no_grad()
def compute(net: nn.Module, x: np.ndarray, groups: Sequence[str], *, device: torch.device,
            batch_size: int = 2048, progress: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Meta-features of the rows of ``x`` (model space); returns ``(features, logits, embedding)``.

    ``net`` is any classifier module: the embedding is its last hidden layer where it has one
    (scadv's MLP, a rebuilt ``MLPClassifier``), else its logits (linear models, other modules).
    Batched, with the input gradient of :func:`input_grad` for the predicted class.
    """
    net = net.to(device).eval()
    n, d = x.shape
    need_grad = "grad" in groups
    feats, all_logits, embs = [], [], []
    buf = torch.empty((min(batch_size, max(n, 1)), d), device=device) if need_grad else None
    for lo in PB.bar(range(0, n, batch_size), desc="meta-features", unit="batch",
                     progress=progress and n > batch_size):
        xb = torch.as_tensor(np.asarray(x[lo:lo + batch_size], dtype=np.float32), device=device)
        emb, logits = M.embedding_and_logits(net, xb)
        grad = None
        if buf is not None:  # need_grad
            pred = logits.argmax(dim=1)
            grad = input_grad(net, xb, pred, grad_out=buf[:len(xb)])
        feats.append(_assemble(groups, emb, logits, grad).cpu().numpy())
        all_logits.append(logits.cpu().numpy())
        embs.append(emb.cpu().numpy())
    if not feats:
        raise ScadvInputError("no cells to compute meta-features for.")
    return (np.concatenate(feats).astype(np.float32), np.concatenate(all_logits),
            np.concatenate(embs))


def differentiable(net: torch.nn.Module, x: torch.Tensor, groups: Sequence[str]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same features as :func:`compute`, differentiable in ``x`` (for an adaptive attacker).

    Returns ``(features, logits)``. The gradient feature is built with ``create_graph=True``, so
    an attacker can follow the detector through it.
    """
    if not isinstance(net, M.MLP):
        raise ScadvInputError("an attacker that follows the detector's meta-features needs "
                              "scadv's own MLP as the classifier; use method='consistency' "
                              "for other classifiers.")
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        emb = net.embed(x)
        logits = net.head(net.body[-1](emb))
        grad = None
        if "grad" in groups:
            pred = logits.detach().argmax(dim=1)
            ce = torch.nn.functional.cross_entropy(logits, pred, reduction="sum")
            (grad,) = torch.autograd.grad(ce, x, create_graph=True)
        return _assemble(groups, emb, logits, grad), logits
