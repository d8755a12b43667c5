"""Validation of stored records: everything scadv reads back from ``adata.uns['scadv']``.

A record may come from a stranger's ``.h5ad``, or may have been changed or damaged after scadv
wrote it. Before any record is used, its entries are checked here for presence, type, shape,
dtype and finite values, and declared sizes are checked against hard limits and against the
arrays actually stored *before* anything is allocated. Every problem is a
:class:`~scadv.ScadvInputError` that names the record, the entry and the fix; nothing is ever
unpickled, evaluated or imported from a record.

The checks are written as small schemas (:class:`Field`) so that each reader states what it
needs; :func:`fields` checks a record against one and binds symbolic dimensions (e.g. every
per-class array must have ``n_classes`` entries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._errors import ScadvInputError

#: Hard limits on declared sizes (far above any real use; a tampered record declaring more
#: is refused before anything is allocated).
MAX_GENES = 1_000_000
MAX_CLASSES = 100_000
MAX_WIDTH = 65_536
MAX_LAYERS = 64
MAX_PARAMETERS = 2**31

RECIPE_KINDS = ("counts", "lognorm", "scaled")


@dataclass(frozen=True)
class Field:
    """What one entry of a record must hold.

    ``kind``: ``'str'``, ``'int'``, ``'float'``, ``'bool'`` (scalars), ``'map'`` (a
    dictionary), ``'table'`` (a DataFrame), or an array of ``'floats'``, ``'ints'``,
    ``'strs'`` or ``'bools'`` whose ``dims`` are given (an int: that size; a string: a
    symbolic size every entry naming it must share; ``None``: any size).
    """

    kind: str
    dims: tuple[int | str | None, ...] = ()
    #: floats: refuse NaN and infinities (``'nan'``: allow NaN but not infinities; ``'inf'``:
    #: allow infinities but not NaN; ``False``: allow both).
    finite: bool | str = True
    optional: bool = False
    low: float | None = None
    high: float | None = None
    #: strs: every value distinct.
    unique: bool = False
    #: str: one of these values.
    choices: tuple[str, ...] | None = None
    #: table: columns it must have, and its fewest rows; arrays: their fewest values.
    columns: tuple[str, ...] = ()
    min_rows: int = 0


def malformed(what: str, entry: str, problem: str, fix: str) -> ScadvInputError:
    """The error for a malformed entry: names the record, the entry, the problem and the fix
    (also kept as the error's ``problem`` attribute, e.g. ``"'genes' lists 0 genes"``)."""
    err = ScadvInputError(
        f"the stored {what} is malformed: {entry} {problem}. It was changed or damaged after "
        f"scadv wrote it; {fix}"
    )
    err.problem = f"{entry} {problem}"  # type: ignore[attr-defined]
    return err


def _scalar(value: Any) -> Any:
    """A Python or numpy scalar, or the item of a 0-d array (else the value unchanged)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_str_array(arr: np.ndarray) -> bool:
    if arr.dtype.kind == "U":
        return True
    return arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.ravel().tolist())


def check_value(value: Any, field: Field, *, what: str, entry: str, fix: str,
                dims: dict[str, int]) -> Any:
    """Check one value against ``field`` (binding symbolic dims); returns it in plain form
    (Python scalars; numpy arrays)."""
    def bad(problem: str) -> ScadvInputError:
        return malformed(what, entry, problem, fix)

    kind = field.kind
    if kind == "map":
        if not isinstance(value, Mapping):
            raise bad(f"must be a dictionary, not {type(value).__name__}")
        return value
    if kind == "table":
        if not isinstance(value, pd.DataFrame):
            raise bad(f"must be a table (DataFrame), not {type(value).__name__}")
        missing = [c for c in field.columns if c not in value.columns]
        if missing:
            raise bad(f"lacks the columns {missing}")
        if len(value) < field.min_rows:
            raise bad(f"has {len(value)} rows; at least {field.min_rows} expected")
        return value
    if kind in ("str", "int", "float", "bool"):
        v = _scalar(value)
        if kind == "str":
            if not isinstance(v, str):
                raise bad(f"must be a string, not {type(value).__name__}")
            if field.choices is not None and v not in field.choices:
                raise bad(f"must be one of {list(field.choices)}, not {v[:40]!r}")
            return v
        if kind == "bool":
            if not isinstance(v, bool):
                raise bad(f"must be True or False, not {type(value).__name__}")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(f"must be a number, not {type(value).__name__}")
        if kind == "int" and not isinstance(v, int):
            if not (np.isfinite(v) and float(v).is_integer()):
                raise bad(f"must be a whole number, not {v!r}")
            v = int(v)
        _check_range(np.asarray([v], dtype=np.float64), field, bad)
        return int(v) if kind == "int" else float(v)
    # arrays
    if isinstance(value, (Mapping, str, bytes, pd.DataFrame)) or value is None:
        raise bad(f"must be an array, not {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise bad(f"is not an array ({err})") from None
    if arr.ndim != len(field.dims):
        raise bad(f"must be {len(field.dims)}-dimensional, not of shape {arr.shape}")
    if arr.size < field.min_rows:
        raise bad(f"holds {arr.size} values; at least {field.min_rows} expected")
    for axis, (size, dim) in enumerate(zip(arr.shape, field.dims, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise bad(f"has {size} entries along axis {axis}; expected {dim}")
        if isinstance(dim, str):
            if dim in dims and dims[dim] != size:
                raise bad(f"has {size} entries along axis {axis}; expected {dims[dim]} "
                          f"({dim})")
            dims[dim] = size
    if kind == "strs":
        if arr.size and not _is_str_array(arr):
            raise bad(f"must hold strings, not values of dtype {arr.dtype}")
        arr = arr.astype(str)
        if field.unique and len(np.unique(arr)) != arr.size:
            raise bad("repeats names")
        return arr
    if kind == "bools":
        if arr.size and arr.dtype.kind != "b":
            raise bad(f"must hold True / False values, not dtype {arr.dtype}")
        return arr.astype(bool)
    if kind == "ints":
        if arr.size and arr.dtype.kind not in "iu":
            if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or \
                    not np.all(arr == np.round(arr)):
                raise bad(f"must hold integers, not values of dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        _check_range(arr, field, bad)
        return arr
    if kind == "floats":
        if arr.size and arr.dtype.kind not in "iuf":
            raise bad(f"must hold numbers, not values of dtype {arr.dtype}")
        arr = arr.astype(np.float64) if arr.dtype.kind in "iu" else arr
        _check_range(arr, field, bad)
        return arr
    raise ValueError(f"internal: unknown field kind {kind!r}")


def _check_range(arr: np.ndarray, field: Field, bad: Any) -> None:
    vals = np.asarray(arr, dtype=np.float64)
    if field.finite is True and not np.all(np.isfinite(vals)):
        raise bad("holds NaN or infinite values")
    if field.finite == "nan" and np.any(np.isinf(vals)):
        raise bad("holds infinite values")
    if field.finite == "inf" and np.any(np.isnan(vals)):
        raise bad("holds NaN values")
    with np.errstate(invalid="ignore"):
        if field.low is not None and np.any(vals < field.low):
            raise bad(f"holds values below {field.low:g}")
        if field.high is not None and np.any(vals > field.high):
            raise bad(f"holds values above {field.high:g}")


def fields(record: Any, schema: Mapping[str, Field], *, what: str, fix: str,
           dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Check ``record`` against ``schema``; returns the checked entries (plain form) and binds
    symbolic dimensions into ``dims`` (a fresh dictionary by default)."""
    if not isinstance(record, Mapping):
        raise ScadvInputError(f"the stored {what} is not a dictionary but a "
                              f"{type(record).__name__}; {fix}")
    dims = {} if dims is None else dims
    out: dict[str, Any] = {}
    for key, field in schema.items():
        if key not in record:
            if field.optional:
                continue
            raise malformed(what, repr(key), "is missing", fix)
        out[key] = check_value(record[key], field, what=what, entry=repr(key), fix=fix,
                               dims=dims)
    return out


# ---- the preprocessing recipe ------------------------------------------------------------------

RECIPE_FIX = ("delete it (del adata.uns['scadv']['prepare']) and prepare the original data "
              "again with scadv.pp.prepare (and retrain the models that carry this recipe).")
RECIPE = {
    "genes": Field("strs", ("n_genes",), unique=True),
    "mean": Field("floats", ("n_genes",)),
    "std": Field("floats", ("n_genes",)),
    "max_value": Field("float", low=0.0),
    "input_kind": Field("str", choices=RECIPE_KINDS),
    "has_stats": Field("bool"),
    "target_sum": Field("float"),
    "zero_level": Field("floats", ("n_genes",)),
    "x_min": Field("floats", ("n_genes",)),
    "x_max": Field("floats", ("n_genes",)),
    "layer": Field("str", optional=True),
    "x_is_model_input": Field("bool", optional=True),
}


def recipe(rec: Any, *, what: str = "preprocessing recipe") -> Mapping[str, Any]:
    """Check a recipe (``uns['scadv']['prepare']`` or a classifier's copy); returns it."""
    got = fields(rec, RECIPE, what=what, fix=RECIPE_FIX)
    n = len(got["genes"])
    if not 1 <= n <= MAX_GENES:
        raise malformed(what, "'genes'", f"lists {n} genes (1 to {MAX_GENES} allowed)",
                        RECIPE_FIX)
    if not np.all(got["std"] > 0):
        raise malformed(what, "'std'", "holds zero or negative standard deviations",
                        RECIPE_FIX)
    if not got["target_sum"] > 0:
        raise malformed(what, "'target_sum'", "must be positive", RECIPE_FIX)
    if np.any(got["x_min"] > got["x_max"]):
        raise malformed(what, "'x_min' / 'x_max'", "has a minimum above its maximum",
                        RECIPE_FIX)
    return rec


# ---- stored perturbations ---------------------------------------------------------------------

PERTURBATION_SPACES = ("model", "counts", "var")
PERTURBATION = {
    "space": Field("str", choices=PERTURBATION_SPACES),
    "model": Field("str"),
    "run": Field("str"),
    "format": Field("str", choices=("obsm", "rows"), optional=True),
    "matrix": Field("str", optional=True),
}


def perturbation(name: str, ent: Any, *, n_obs: int, stored: Any = None) -> Mapping[str, Any]:
    """Check a registry entry ``uns['scadv']['perturbations'][name]`` and the change it points
    to (``stored``: ``adata.obsm[name]`` for the ``'obsm'`` format) for everything that can be
    checked without reading the change itself: keys, types, shapes, dtypes, cell names (the
    values are checked for finiteness as they are read, batch by batch). Returns ``ent``."""
    what = f"perturbation {name!r} (adata.uns['scadv']['perturbations'][{name!r}])"
    fix = (f"delete it (del adata.uns['scadv']['perturbations'][{name!r}]; "
           f"adata.obsm.pop({name!r}, None)) and run the step that made it again.")
    got = fields(ent, PERTURBATION, what=what, fix=fix)
    if str(got.get("format", "obsm")) == "rows":
        for key in ("cells", "delta"):
            if key not in ent:
                raise malformed(what, repr(key), "is missing", fix)
        cells, delta = ent["cells"], ent["delta"]
        if not isinstance(cells, np.ndarray) or cells.ndim != 1 or (
                cells.size and not _is_str_array(cells)):
            raise malformed(what, "'cells'", "must be a one-dimensional array of cell names",
                            fix)
        if not isinstance(delta, np.ndarray) or delta.ndim != 2 or \
                delta.dtype.kind not in "iuf":
            raise malformed(what, "'delta'", "must be a two-dimensional array of numbers, not "
                            f"{type(delta).__name__} of shape {getattr(delta, 'shape', None)}",
                            fix)
        if delta.shape[0] != cells.size:
            raise malformed(what, "'delta'", f"has {delta.shape[0]} rows but 'cells' names "
                            f"{cells.size} cells", fix)
        if not 1 <= delta.shape[1] <= MAX_GENES:
            raise malformed(what, "'delta'", f"has {delta.shape[1]} genes", fix)
        return ent
    if stored is None:
        return ent
    shape = getattr(stored, "shape", None)
    dtype = getattr(stored, "dtype", None)
    if shape is None or len(shape) != 2 or shape[0] != n_obs or dtype is None \
            or np.dtype(dtype).kind not in "iuf":
        raise malformed(what.replace("(adata.uns['scadv']['perturbations']", "(adata.obsm"),
                        f"adata.obsm[{name!r}]",
                        f"must be a numeric matrix with one row per cell ({n_obs}), not "
                        f"{type(stored).__name__} of shape {shape} and dtype {dtype}", fix)
    return ent


def finite_change(name: str, values: np.ndarray, *, counts: bool = False) -> np.ndarray:
    """Refuse a stored change holding NaN / infinite values (or, for count-space changes, values
    that are not whole numbers), as it is read."""
    if values.size and not np.all(np.isfinite(values)):
        raise malformed(f"perturbation {name!r}", "its change", "holds NaN or infinite values",
                        f"delete it (del adata.uns['scadv']['perturbations'][{name!r}]; "
                        f"adata.obsm.pop({name!r}, None)) and run the step that made it again.")
    if counts and values.size and not np.all(values == np.round(values)):
        raise malformed(f"perturbation {name!r}", "its change of counts",
                        "holds values that are not whole numbers",
                        f"delete it (del adata.uns['scadv']['perturbations'][{name!r}]; "
                        f"adata.obsm.pop({name!r}, None)) and run the step that made it again.")
    return values


# ---- network weights ---------------------------------------------------------------------------


def weights(stored: Any, shapes: Mapping[str, tuple[int, ...]], *, what: str, fix: str
            ) -> dict[str, np.ndarray]:
    """Check stored weights against the expected ``{name: shape}`` of a network, before the
    network is built: same names, floating point, those shapes, finite values. Returns them
    as float32 arrays."""
    if not isinstance(stored, Mapping):
        raise malformed(what, "weights", f"must be a dictionary of arrays, not "
                        f"{type(stored).__name__}", fix)
    got, want = set(map(str, stored)), set(shapes)
    if got != want:
        raise malformed(what, "weights", f"do not match the architecture: missing "
                        f"{sorted(want - got)[:6]}, unexpected {sorted(got - want)[:6]}", fix)
    out = {}
    for name, shape in shapes.items():
        value = stored[name]
        if isinstance(value, (Mapping, str, bytes)) or value is None:
            raise malformed(what, f"weight {name!r}", f"must be an array, not "
                            f"{type(value).__name__}", fix)
        arr = np.asarray(value)
        if arr.dtype.kind != "f" or arr.shape != tuple(shape):
            raise malformed(what, f"weight {name!r}", f"has shape {arr.shape} and dtype "
                            f"{arr.dtype}; expected {tuple(shape)} floats", fix)
        arr32 = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr32)):
            raise malformed(what, f"weight {name!r}", "holds NaN or infinite values (a model "
                            "with such weights predicts NaN)", fix)
        out[name] = arr32
    return out


def weights_sha256(stored: Mapping[str, Any]) -> str:
    """SHA-256 over a network's weights: for each array in sorted name order, its name, shape
    and float32 little-endian bytes (each part length-prefixed, so no two different sets of
    weights share a byte stream)."""
    h = hashlib.sha256()
    for name in sorted(map(str, stored)):
        arr = np.ascontiguousarray(np.asarray(stored[name]), dtype="<f4")
        for part in (name.encode(), repr(tuple(arr.shape)).encode(), arr.tobytes()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def n_parameters(shapes: Mapping[str, Sequence[int]]) -> int:
    """Number of values a set of weight shapes declares (Python ints: no overflow)."""
    total = 0
    for shape in shapes.values():
        size = 1
        for s in shape:
            size *= int(s)
        total += size
    return total
