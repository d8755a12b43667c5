"""The one place that writes scadv results into an AnnData and logs what it wrote."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
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
    update: Collection[str] = (),
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
    update
        ``uns`` keys this step rewrites on purpose (e.g. a detector's own record, updated by
        :func:`scadv.tl.meta_evaluate`): no warning that an earlier record is replaced.

    Everything is checked before anything is written, so a refused result leaves ``adata`` as
    it was:

    * every key must survive ``write_h5ad`` → ``read_h5ad``: a non-empty string without
      ``'/'`` (HDF5's path separator: ``key_added='my/model'`` would make a file that cannot
      be read back);
    * the names scadv keeps its own records under (``'prepare'``, ``'provenance'``, …) only
      take a record of their kind;
    * a stored classifier is never replaced by a record of another kind (e.g.
      ``scadv.tl.attribute(..., key_added='classifier')`` would silently lose the model).

    Replacing an earlier record under the same key (a second run with the same
    ``key_added``) logs a warning that names the earlier record and how to keep both.
    """
    new_uns = {}
    for key, value in (uns or {}).items():
        _check_key(key, where=f"adata.uns[{K.UNS!r}]")
        new_uns[key] = _safe(value, where=f"uns/{K.UNS}/{key}")
    for where, keys in (("adata.obs", obs), ("adata.obsm", obsm), ("adata.layers", layers),
                        ("adata.uns", {f"{k}_colors": 0 for k in (colors or {})}),
                        ("adata.obsm", {p.name: 0 for p in perturbations})):
        for key in keys or {}:
            _check_key(key, where=where)
    _check_reserved(new_uns)
    _keep_classifiers(adata, new_uns)
    ns = scadv_uns(adata) if new_uns else None
    _warn_replaced(ns, new_uns, step=step, update=update)
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
    if ns is not None:
        ns.update(new_uns)
        _update_provenance(ns, step=step, keys=list(new_uns))
    lines = (
        _describe("obs", obs)
        + _describe("obsm", obsm)
        + _describe("layers", layers)
        + [f"    perturbation {p.name!r} ({len(p.cells)} cells)" for p in perturbations]
        + [f"    uns[{K.UNS!r}][{key!r}]" for key in new_uns]
    )
    logg.info(f"    finished {step}", time=start, deep="added\n" + "\n".join(lines))


def _check_key(key: Any, *, where: str) -> None:
    """Refuse a key that cannot be written to ``.h5ad`` and read back."""
    if not isinstance(key, str) or not key or "/" in key:
        raise ScadvInputError(
            f"cannot store a result under {where}[{key!r}]: keys must be non-empty strings "
            "without '/' (the .h5ad path separator; such a file cannot be read back). Pass "
            "another key_added (or rename the layer / key it is derived from)."
        )


def _safe(value: Any, *, where: str) -> Any:
    """:func:`h5ad_safe`, with a clear error for a nested key that cannot be written (e.g. a
    layer name with '/' used as a key of an evaluation)."""
    try:
        return h5ad_safe(value, where=where)
    except ValueError as err:
        raise ScadvInputError(
            f"{err}: keys must be strings without '/'. Rename the layer or key it comes from."
            .replace("internal: ", "")
        ) from None


def _is_recipe(value: Any) -> bool:
    """Whether ``value`` is a valid recipe; a mapping that is not is an error naming what is
    wrong (only :func:`scadv.pp.prepare` / ``transform`` write recipes: another result under
    ``'prepare'`` is refused as reserved before it gets here, by ``key_added``'s check)."""
    from . import _records as REC

    if not isinstance(value, Mapping) or "genes" not in value:
        return False
    try:
        REC.recipe(value)
    except ScadvInputError as err:
        problem = getattr(err, "problem", str(err))
        raise ScadvInputError(
            f"the preprocessing recipe made from this data is not valid ({problem}), so "
            "nothing was written. This happens with degenerate data, e.g. when no gene is "
            "detected in at least 3 cells or every gene is constant: check the cells and "
            "genes (sc.pp.filter_cells / sc.pp.filter_genes) and the matrix passed."
        ) from None
    return True


#: What the reserved names of ``uns['scadv']`` hold, and how to tell such a record.
_RESERVED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    K.PREPARE: ("the preprocessing recipe", _is_recipe),
    K.PROVENANCE: ("the provenance of every step", lambda v: False),
    "perturbations": ("the registry of stored perturbations", lambda v: isinstance(v, Mapping)
                      and all(isinstance(e, Mapping) for e in v.values())),
    K.SIMULATION: ("the ground truth of simulated data", lambda v: isinstance(v, Mapping)),
}


def _check_reserved(uns: Mapping[str, Any]) -> None:
    for key, value in uns.items():
        if key in _RESERVED and not _RESERVED[key][1](value):
            raise ScadvInputError(
                f"adata.uns[{K.UNS!r}][{key!r}] is reserved for {_RESERVED[key][0]}; this "
                f"result would replace it. Pass another key_added."
            )


def _warn_replaced(ns: Mapping[str, Any] | None, uns: Mapping[str, Any], *, step: str,
                   update: Collection[str]) -> None:
    """Warn when a result replaces an earlier scadv record under the same key."""
    if ns is None:
        return
    for key in uns:
        old = ns.get(key)
        if key in update or key in _RESERVED or not isinstance(old, Mapping):
            continue
        what = _describe_record(old)
        logg.warning(
            f"{step}: replacing the earlier {what} stored under adata.uns[{K.UNS!r}][{key!r}] "
            "(and its per-cell results of the same names). To keep both, run again with "
            f"another key_added (e.g. key_added={key + '_2'!r})."
        )


def _describe_record(rec: Mapping[str, Any]) -> str:
    """A few words on what a stored record is (kind or method, and when it was made)."""
    kind = str(rec.get("kind", rec.get("method", "scadv record")))
    prov = rec.get("provenance")
    when = str(prov.get("time", "")) if isinstance(prov, Mapping) else ""
    return f"{kind} record" + (f" (made {when})" if when else "")
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
