"""One model argument for every gradient tool: a stored classifier's key or a model object.

``model=`` of :func:`scadv.tl.pgd`, :func:`scadv.tl.fgsm`, :func:`scadv.tl.meta_detect` and
:func:`scadv.tl.attribute` is either the key of a stored classifier of any kind, or a
:class:`scadv.models.Model` (CellTypist-adapted, scikit-learn-translated or a user's torch
module) or a CellTypist ``Model`` object. An object is attacked through its OWN preprocessing:
its record is written to ``adata.uns['scadv'][model.default_key]`` first (as
:func:`scadv.tl.add_model` does, without measuring the observed range), so that the results
name a stored classifier and :func:`scadv.get.perturbed` can rebuild its model input later.
A torch module that cannot be stored as plain arrays gets a ``'scadv.torch'`` record: its
genes, classes, preprocessing, output rule and a digest of its weights, no network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
from anndata import AnnData
from torch import nn

from ... import _keys as K
from ... import _model as M
from ... import models as MD
from ..._errors import ScadvInputError
from .. import _common as C

#: What ``model=`` of a gradient tool may be.
ModelSpec: TypeAlias = str | MD.Model | Any


@dataclass
class Resolved:
    """A classifier ready for a gradient tool."""

    key: str  #: where its record lives in ``adata.uns['scadv']``
    record: Mapping[str, Any]
    net: nn.Module  #: maps the model input of ``record['prepare']`` to logits (eval mode)

    @property
    def module(self) -> nn.Module | None:
        """What parallel tasks get besides the record: ``None`` when the record rebuilds the
        network (:func:`scadv._model.network`), the module itself for a ``'scadv.torch'``
        record."""
        return None if str(self.record["kind"]) in M.NETWORK_KINDS else self.net


def _fingerprint(record: Mapping[str, Any]) -> tuple[bytes, ...]:
    weights = record.get("weights", {})
    parts = [str(record.get("kind", "")).encode()]
    if isinstance(weights, Mapping):
        for name in sorted(weights):
            parts.append(name.encode())
            parts.append(np.ascontiguousarray(weights[name], dtype=np.float32).tobytes())
    for key in ("classes", "genes"):
        parts.append("\x00".join(np.asarray(record[key]).astype(str)).encode())
    prep = record["prepare"]
    for key in ("mean", "std"):
        if key in prep:
            parts.append(np.ascontiguousarray(prep[key], dtype=np.float32).tobytes())
    parts.append(repr((float(prep.get("target_sum", 0)), float(prep.get("max_value", 0)),
                       str(prep.get("clip", "both")), str(record.get("output", "softmax"))))
                 .encode())
    return tuple(parts)


def memory_record(model: MD.Model) -> dict[str, Any]:
    """The ``'scadv.torch'`` record of a model held only in memory (no network)."""
    return {
        "kind": M.MEMORY_KIND,
        "format_version": M.FORMAT_VERSION,
        "weights": {"sha256": M.state_digest(model.module)},
        "classes": np.asarray(model.classes, dtype=str),
        "genes": np.asarray(model.genes, dtype=str),
        "prepare": dict(model.preprocessing),
        "output": model.output,
        "name": model.name,
        "source": {"library": "torch", "module": type(model.module).__name__},
        "decision_rule": "best match",
    }


def as_model_object(model: Any) -> MD.Model | None:
    """``model`` as a :class:`scadv.models.Model` if it is one (or a CellTypist model), else
    ``None`` for a key; anything else is refused with the accepted forms."""
    if isinstance(model, str):
        return None
    converted = MD.as_model(model)
    if converted is not None:
        return converted
    if isinstance(model, nn.Module):
        raise ScadvInputError(
            f"a bare {type(model).__name__} does not say which genes it reads or how its input "
            "is preprocessed: wrap it with scadv.models.from_torch(module, genes=..., "
            "classes=..., preprocessing=...) and pass that as model=.")
    if hasattr(model, "predict") and hasattr(model, "classes_"):
        _, final = MD._steps(model)
        MD._layers(final, model)  # a black box (forest, kNN, kernel SVC): says what it gets
        raise ScadvInputError(
            f"a scikit-learn {type(model).__name__} needs its genes and preprocessing: pass "
            "scadv.models.from_sklearn(estimator, genes=..., preprocessing=...) as model= "
            "(forests, k-nearest neighbours and kernel SVMs are black boxes: see "
            "scadv.tl.compare_models and the gene-level attacks).")
    raise ScadvInputError(
        f"model must be the key of a stored classifier or a scadv.models.Model, got "
        f"{type(model).__name__}.")


def register(adata: AnnData, model: MD.Model) -> str:
    """Write ``model``'s record to ``adata.uns['scadv'][model.default_key]`` (unless the same
    model is stored there already); returns the key."""
    from ..._results import write_results

    key = model.default_key
    record = (model.to_record() if model.storable else memory_record(model))
    record["key"] = key
    ns = adata.uns.get(K.UNS)
    old = ns.get(key) if isinstance(ns, Mapping) else None
    if old is not None:
        same = (isinstance(old, Mapping) and str(old.get("kind", "")) in M.MODEL_KINDS
                and _fingerprint(old) == _fingerprint(record))
        if same:
            return key
        raise ScadvInputError(
            f"adata.uns['scadv'][{key!r}] already holds another classifier (or result). Store "
            f"this one under a key of its own with scadv.tl.add_model(adata, model, "
            f"key_added='...'), then pass that key as model=.")
    M.check_record(record)
    write_results(adata, step=f"registered {model.name} as {key!r}", start=None,
                  uns={key: record})
    return key


def resolve(adata: AnnData, model: Any, device: torch.device) -> Resolved:
    """The classifier ``model`` names (a key) or is (an object), with its network on
    ``device``; an object's record is registered in ``adata`` first (see module docs)."""
    obj = as_model_object(model)
    if obj is None:
        record = C.model_record(adata, str(model))
        return Resolved(key=str(model), record=record, net=M.from_record(record, device))
    key = register(adata, obj)
    record = C.model_record(adata, key)
    return Resolved(key=key, record=record, net=obj.module.to(device).eval())
