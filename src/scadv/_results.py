"""The one place that writes scadv results into an AnnData and logs what it wrote."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData

from . import _keys as K
from . import _provenance as P
from ._errors import ScadvInputError
from ._store import Perturbation


def scadv_uns(adata: AnnData) -> MutableMapping[str, Any]:
    """Return ``adata.uns['scadv']``, creating it if absent; refuse a foreign object there."""
    ns = adata.uns.setdefault(K.UNS, {})
    if not isinstance(ns, MutableMapping):
        raise ScadvInputError(
            f"adata.uns[{K.UNS!r}] holds a {type(ns).__name__}, not the dictionary scadv keeps its "
            f"records in. Rename or delete that entry (del adata.uns[{K.UNS!r}])."
        )
    return ns


def h5ad_safe(obj: Any, *, where: str = "uns") -> Any:
    """Convert a result to types that survive ``write_h5ad`` → ``read_h5ad`` unchanged.

    Tuples and lists become arrays, ``None`` becomes the string ``'None'`` (HDF5 has no null),
    and nested mappings are converted recursively. Keys may not contain ``'/'`` (an HDF5 path
    separator): per-class values are therefore stored as arrays aligned to ``classes``.
    """
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str) or "/" in key:
                raise ValueError(f"internal: key {key!r} at {where} cannot be written to .h5ad")
            out[key] = h5ad_safe(value, where=f"{where}/{key}")
        return out
    if obj is None:
        return "None"
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, (list, tuple)):
        arr = np.asarray(obj)
        if arr.dtype == object:
            arr = arr.astype(str)
        return arr
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return obj.astype(str)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _update_provenance(ns: MutableMapping[str, Any], *, step: str, keys: list[str]) -> None:
    """Keep ``uns['scadv']['provenance']`` current: the session (package versions, as
    :mod:`session_info` reports them) and the ordered list of steps that wrote records."""
    old = ns.get(K.PROVENANCE)
    steps = list(np.asarray(old["steps"]).astype(str)) if isinstance(old, Mapping) and \
        "steps" in old else []
    steps += [f"{key}: {step}" for key in keys]
    ns[K.PROVENANCE] = h5ad_safe({
        "session_info": P.session_text(),
        "versions": P.versions(),
        "steps": np.asarray(steps, dtype=str),
    })


def _describe(where: str, keys: Mapping[str, Any] | None) -> list[str]:
    return [f"    {where}[{key!r}]" for key in (keys or {})]


def write_results(
    adata: AnnData,
    *,
    step: str,
    start: datetime | None = None,
    uns: Mapping[str, Any] | None = None,
    obs: Mapping[str, Any] | None = None,
    obsm: Mapping[str, np.ndarray] | None = None,
    layers: Mapping[str, np.ndarray] | None = None,
    perturbations: Sequence[Perturbation] = (),
    colors: Mapping[str, list[str]] | None = None,
) -> None:
    """Write one step's results and log every key, as scanpy does.

    Parameters
    ----------
    adata
        Target AnnData.
    step
        Human-readable name of the step for the log line.
    start
        Time the step started (for the elapsed time in the log).
    uns
        Entries stored under ``adata.uns['scadv'][key]`` (made :func:`h5ad_safe`).
    obs, obsm, layers
        Per-cell results stored under the given keys.
    perturbations
        Compact perturbations (:class:`scadv._store.Perturbation`), registered in
        ``uns['scadv']['perturbations'][name]`` with their change in ``obsm[name]`` (sparse)
        or in the registry entry itself (rows of the changed cells); a dense
        ``layers[name]`` of the same name (scadv 0.1) is removed.
    colors
        Palettes for categorical ``obs`` columns, stored as ``adata.uns['<column>_colors']``
        where scanpy's plots look for them.

    Refuses (before writing anything) to replace a stored classifier with a record of another
    kind, e.g. ``scadv.tl.attribute(..., key_added='classifier')``: that would silently lose
    the model.
    """
    _keep_classifiers(adata, uns)
    for key, value in (obs or {}).items():
        adata.obs[key] = value
    for key, value in (obsm or {}).items():
        adata.obsm[key] = value
    for key, value in (layers or {}).items():
        adata.layers[key] = value
    if perturbations:
        ns = scadv_uns(adata)
        reg = dict(ns.get(K.PERTURBATIONS) or {})
        for pert in perturbations:
            ent, matrix = pert.storage(adata)
            if matrix is not None:
                adata.obsm[pert.name] = matrix
            elif pert.name in adata.obsm:
                del adata.obsm[pert.name]
            if pert.name in adata.layers:
                del adata.layers[pert.name]
            reg[pert.name] = ent
        ns[K.PERTURBATIONS] = h5ad_safe(reg, where=f"uns/{K.UNS}/{K.PERTURBATIONS}")
    for key, palette in (colors or {}).items():
        adata.uns[f"{key}_colors"] = np.asarray(palette, dtype=str)
    if uns:
        ns = scadv_uns(adata)
        for key, value in uns.items():
            ns[key] = h5ad_safe(value, where=f"uns/{K.UNS}/{key}")
        _update_provenance(ns, step=step, keys=list(uns))
    lines = (
        _describe("obs", obs)
        + _describe("obsm", obsm)
        + _describe("layers", layers)
        + [f"    perturbation {p.name!r} ({len(p.cells)} cells)" for p in perturbations]
        + [f"    uns[{K.UNS!r}][{key!r}]" for key in (uns or {})]
    )
    logg.info(f"    finished {step}", time=start, deep="added\n" + "\n".join(lines))


def _keep_classifiers(adata: AnnData, uns: Mapping[str, Any] | None) -> None:
    """Raise if a result would overwrite a stored classifier with something else."""
    from ._model import MODEL_KINDS

    ns = adata.uns.get(K.UNS)
    if not uns or not isinstance(ns, Mapping):
        return
    for key, value in uns.items():
        old, new = ns.get(key), value
        is_model = [isinstance(r, Mapping) and str(r.get("kind", "")) in MODEL_KINDS
                    for r in (old, new)]
        if is_model[0] and not is_model[1]:
            raise ScadvInputError(
                f"adata.uns[{K.UNS!r}][{key!r}] holds a trained classifier, and this result "
                f"would replace it; pass another key_added= (or delete the classifier first: "
                f"del adata.uns[{K.UNS!r}][{key!r}])."
            )
