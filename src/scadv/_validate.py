"""Input checks shared by every public function. Each error names the problem and the fix."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeGuard

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._errors import ScadvInputError

DataKind = Literal["counts", "lognorm", "scaled"]

#: Largest value a log1p-normalised matrix plausibly holds (log1p(1e6) ≈ 13.8).
_MAX_LOGNORM = 30.0
#: A z-scored matrix has many negative values; fewer than this fraction means corruption.
_MIN_NEGATIVE_FRACTION = 0.01


def start(adata: AnnData, *, copy: bool, modifies: bool = True) -> AnnData:
    """Validate the AnnData a public function received and return the object to work on.

    With ``copy=True`` the work happens on a copy (a view is fine then); otherwise a view is
    refused when the function modifies ``adata``, because writing into a view silently copies
    it and the caller's object would not see the results.
    """
    if not isinstance(adata, AnnData):
        raise ScadvInputError(
            f"expected an AnnData as first argument, got {type(adata).__name__}. "
            "Read your data with anndata.read_h5ad / scanpy.read_10x_mtx first."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ScadvInputError(
            f"the AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes). "
            "Check the filtering that produced it."
        )
    unique_names(adata)
    if copy:
        return adata.copy()
    if modifies and adata.is_view:
        raise ScadvInputError(
            "adata is a view (a subset such as adata[mask]); results written into a view would "
            "not reach your object. Make it real first: adata = adata[mask].copy(), "
            "or pass copy=True."
        )
    return adata


def unique_names(adata: AnnData) -> None:
    """Raise if gene names repeat: scadv matches genes by name (model genes, recipes, masks),
    so a repeated name would silently pick one of the columns."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ScadvInputError(
            f"adata.var_names has repeated gene names (e.g. {dup}); scadv matches genes by "
            "name. Make them unique first: adata.var_names_make_unique()."
        )


def unique_cells(adata: AnnData, *, why: str) -> None:
    """Raise if cell names repeat where cells are addressed by name (``why`` says where)."""
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        raise ScadvInputError(
            f"adata.obs_names has repeated cell names (e.g. {dup}), so {why} is ambiguous. "
            "Make them unique first (adata.obs_names_make_unique()), or select cells with a "
            "boolean mask."
        )


def matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """``adata.X`` or ``adata.layers[layer]``, with a clear error for an unknown layer."""
    if layer is None:
        if adata.X is None:
            raise ScadvInputError("adata.X is empty (None). Put the expression matrix in X.")
        return adata.X
    if layer not in adata.layers:
        raise ScadvInputError(
            f"layer {layer!r} not found; adata.layers has {sorted(adata.layers)}. "
            "Pass one of those, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def is_sparse(x: object) -> TypeGuard[sparse.spmatrix]:
    """:func:`scipy.sparse.issparse` as a type guard: scipy ships no type information, so its
    own ``issparse`` does not tell the type checker which branch holds the sparse matrix."""
    return bool(sparse.issparse(x))


def dense(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """A dense float32 copy-free view where possible: ``toarray()`` of a sparse matrix, the
    array itself otherwise."""
    if is_sparse(x):
        return np.asarray(x.toarray(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def _values(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """The stored values of a matrix (the non-zeros of a sparse one)."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def check_dtype(x: object, *, what: str) -> None:
    """Raise unless ``x`` is a 2-d numeric matrix (numpy or scipy sparse, integer or float).

    Object (e.g. strings), boolean and complex matrices are refused: none of them is
    expression, and guessing how to read them would silently give wrong numbers.
    """
    dtype = getattr(x, "dtype", None)
    shape = getattr(x, "shape", None)
    if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple):
        raise ScadvInputError(
            f"{what} is a {type(x).__name__}, not a matrix (numpy array or scipy sparse "
            "matrix). Store the expression of the cells × genes as one of those."
        )
    if len(shape) != 2:
        raise ScadvInputError(f"{what} must be a 2-d matrix (cells × genes), got shape "
                              f"{shape}.")
    if dtype.kind not in "iuf":
        kind = {"b": "booleans", "c": "complex numbers", "O": "Python objects (e.g. strings)",
                "U": "strings", "S": "bytes"}.get(dtype.kind, f"values of dtype {dtype}")
        raise ScadvInputError(
            f"{what} holds {kind}, not expression values. Convert it to numbers first, e.g. "
            "adata.X = adata.X.astype(np.float32) (for booleans: 0 / 1 counts), or store the "
            "real expression matrix."
        )


def check_finite(
    x: np.ndarray | sparse.spmatrix, *, what: str, adata: AnnData | None = None
) -> None:
    """Raise if ``x`` holds NaN or infinite values, naming the first offending cell and gene."""
    check_dtype(x, what=what)
    vals = _values(x)
    if vals.dtype.kind != "f":
        return
    bad = ~np.isfinite(vals)
    if not bad.any():
        return
    n_nan = int(np.isnan(vals).sum())
    n_inf = int(bad.sum()) - n_nan
    where = ""
    if adata is not None:
        if sparse.issparse(x):
            coo = sparse.coo_matrix(x)
            first = int(np.flatnonzero(~np.isfinite(coo.data))[0])
            i, j = int(coo.row[first]), int(coo.col[first])
        else:
            i, j = (int(v) for v in np.argwhere(~np.isfinite(np.asarray(x)))[0])
        where = f" (first at cell {adata.obs_names[i]!r}, gene {adata.var_names[j]!r})"
    raise ScadvInputError(
        f"{what} contains {n_nan} NaN and {n_inf} infinite values{where}. "
        "scadv needs finite expression values: remove those cells/genes or fix the upstream step "
        "that produced them (e.g. a division by a zero library size)."
    )


def is_integer_valued(x: np.ndarray | sparse.spmatrix) -> bool:
    """True when every stored value is a whole number."""
    vals = _values(x)
    if vals.dtype.kind in "iu":
        return True
    return bool(np.all(vals == np.round(vals)))


def check_counts(x: np.ndarray | sparse.spmatrix, *, what: str) -> None:
    """Raise unless ``x`` holds non-negative whole numbers (raw UMI / read counts)."""
    check_dtype(x, what=what)
    vals = _values(x)
    if vals.size and vals.min() < 0:
        raise ScadvInputError(
            f"{what} has negative values (min {vals.min():.3g}), but raw counts are needed here. "
            "Pass the count matrix (e.g. layer='counts') or the raw AnnData."
        )
    if not is_integer_valued(x):
        frac = vals[vals != np.round(vals)]
        raise ScadvInputError(
            f"{what} has non-integer values (e.g. {frac[0]:.4g}), but raw counts are needed here. "
            "Pass the count matrix (e.g. layer='counts'), not normalised or log-transformed data."
        )


def detect_kind(x: np.ndarray | sparse.spmatrix, *, what: str) -> DataKind:
    """Classify a matrix as raw ``'counts'``, ``'lognorm'`` (log1p-normalised) or ``'scaled'``.

    Rules: non-negative whole numbers → counts; non-negative fractional values up to 30 →
    log-normalised; negative values (at least 1% of the stored values) among fractional ones →
    scaled (z-scored). Refused, since guessing would silently mis-transform the data: a few
    stray negatives among non-negative values, whole numbers with negatives (corrupted counts:
    z-scores are never all whole numbers), and non-negative fractional values above 30
    (normalised but not log-transformed).
    """
    check_dtype(x, what=what)
    vals = _values(x)
    if vals.size == 0:
        return "counts"
    n_neg = int((vals < 0).sum())
    if n_neg:
        if n_neg < _MIN_NEGATIVE_FRACTION * vals.size:
            raise ScadvInputError(
                f"{what} has {n_neg} negative values among {vals.size} otherwise non-negative "
                "ones: it is neither counts (never negative) nor z-scored data (about half "
                "negative). Check how it was made; pass raw counts if you have them."
            )
        if is_integer_valued(x):
            raise ScadvInputError(
                f"{what} holds whole numbers, {n_neg} of them negative: it is neither raw "
                "counts (never negative) nor z-scored data (fractional values). Check how it "
                "was made (e.g. counts minus a background estimate); pass the raw counts, or "
                "z-score the data with sc.pp.scale first if it really is scaled."
            )
        return "scaled"
    if is_integer_valued(x):
        return "counts"
    if vals.max() <= _MAX_LOGNORM:
        return "lognorm"
    raise ScadvInputError(
        f"{what} holds non-negative, non-integer values up to {vals.max():.4g}: it looks "
        "normalised but not log-transformed. Pass raw counts, or run sc.pp.log1p first."
    )


def labels(adata: AnnData, label_key: str) -> pd.Series:
    """``adata.obs[label_key]`` as strings with missing labels as NaN, with clear errors."""
    if not isinstance(label_key, str):
        raise ScadvInputError(f"label_key must be the name of an obs column, got {label_key!r}.")
    if label_key not in adata.obs:
        raise ScadvInputError(
            f"label key {label_key!r} not found in adata.obs (columns: {list(adata.obs.columns)}). "
            "Pass the column holding cell types or clusters, e.g. label_key='leiden' after "
            "sc.tl.leiden(adata)."
        )
    col = adata.obs[label_key]
    out = col.astype(object).where(col.notna(), other=np.nan)
    return out.map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v))


# ---- options of the public functions ---------------------------------------------------------
#
# Every public function checks its options at its top, before it reads or writes anything, with
# the validators below. Each returns the value in its canonical type (``int``, ``float``,
# ``bool``, ``tuple``) and raises :class:`ScadvInputError` naming the option, what it got and
# what is allowed. Python's ``bool`` is refused where a number is expected (``steps=True`` is a
# mistake, not ``steps=1``), and so are strings, ``None`` (unless allowed), NaN and infinities.

#: Largest integer option accepted (sizes, counts, epochs): larger values overflow int64
#: arithmetic downstream long before they make sense.
MAX_INT = 2**62
#: Largest seed accepted (numpy and torch both take it).
MAX_SEED = 2**63 - 1
#: Names scadv keeps its own records under in ``adata.uns['scadv']``: a ``key_added`` may not
#: take them.
RESERVED_KEYS = frozenset({"prepare", "provenance", "perturbations", "simulation", "settings",
                           "store", "version"})


def _got(value: object) -> str:
    text = repr(value)
    return f"{text[:60]}…" if len(text) > 60 else text


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def integer(name: str, value: object, *, minimum: int | None = None,
            maximum: int | None = MAX_INT) -> int:
    """A whole number (``int`` or a numpy integer, not a bool) in ``[minimum, maximum]``."""
    if _is_bool(value) or not isinstance(value, (int, np.integer)):
        raise ScadvInputError(f"{name} must be an integer, got {_got(value)} "
                              f"({type(value).__name__}).")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ScadvInputError(f"{name} must be ≥ {minimum}, got {out}.")
    if maximum is not None and out > maximum:
        raise ScadvInputError(f"{name} must be ≤ {maximum}, got {out}.")
    return out


def positive_int(name: str, value: object, *, maximum: int | None = MAX_INT) -> int:
    """An integer ≥ 1 (sizes, steps, epochs)."""
    return integer(name, value, minimum=1, maximum=maximum)


def nonneg_int(name: str, value: object, *, maximum: int | None = MAX_INT) -> int:
    """An integer ≥ 0."""
    return integer(name, value, minimum=0, maximum=maximum)


def optional_int(name: str, value: object, *, minimum: int = 1,
                 maximum: int | None = MAX_INT) -> int | None:
    """``None`` or an integer ≥ ``minimum``."""
    return None if value is None else integer(name, value, minimum=minimum, maximum=maximum)


def seed(value: object, name: str = "seed") -> int:
    """A random seed: an integer in ``[0, 2**63 - 1]``."""
    return integer(name, value, minimum=0, maximum=MAX_SEED)


def real(name: str, value: object, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (int or float, not a bool, string or complex) in the given range."""
    if _is_bool(value) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ScadvInputError(f"{name} must be a number, got {_got(value)} "
                              f"({type(value).__name__}).")
    out = float(value)
    if not np.isfinite(out):
        raise ScadvInputError(f"{name} must be a finite number, got {out}.")
    if low is not None and (out <= low if low_open else out < low):
        bound = ("positive" if low_open else "non-negative (≥ 0)") if low == 0 else \
            f"{'>' if low_open else '≥'} {low:g}"
        raise ScadvInputError(f"{name} must be {bound}, got {out:g}.")
    if high is not None and (out >= high if high_open else out > high):
        raise ScadvInputError(f"{name} must be {'<' if high_open else '≤'} {high:g}, "
                              f"got {out:g}.")
    return out


def positive(name: str, value: object) -> float:
    """A finite number > 0."""
    return real(name, value, low=0.0, low_open=True)


def nonneg(name: str, value: object) -> float:
    """A finite number ≥ 0."""
    return real(name, value, low=0.0)


def optional_positive(name: str, value: object) -> float | None:
    """``None`` or a finite number > 0."""
    return None if value is None else positive(name, value)


def fraction(name: str, value: object, *, closed_low: bool = False,
             closed_high: bool = False) -> float:
    """A number in ``(0, 1)``; ``closed_low`` / ``closed_high`` include 0 / 1."""
    return real(name, value, low=0.0, high=1.0, low_open=not closed_low,
                high_open=not closed_high)


def reals(name: str, value: object, *, low: float | None = None, low_open: bool = False,
          maximum_len: int = 10_000) -> tuple[float, ...]:
    """One number or a non-empty sequence of numbers (each finite, ≥ / > ``low``)."""
    items = _sequence(name, value, scalar_ok=True)
    if not items:
        raise ScadvInputError(f"{name} must hold at least one number, got {_got(value)}.")
    if len(items) > maximum_len:
        raise ScadvInputError(f"{name} holds {len(items)} values; at most {maximum_len}.")
    return tuple(real(f"{name}[{i}]" if len(items) > 1 else name, v, low=low, low_open=low_open)
                 for i, v in enumerate(items))


def ints(name: str, value: object, *, minimum: int = 1, maximum: int | None = MAX_INT,
         maximum_len: int = 1_000) -> tuple[int, ...]:
    """A non-empty sequence of integers in ``[minimum, maximum]``."""
    items = _sequence(name, value, scalar_ok=False)
    if not items:
        raise ScadvInputError(f"{name} must list at least one integer, got {_got(value)}.")
    if len(items) > maximum_len:
        raise ScadvInputError(f"{name} holds {len(items)} values; at most {maximum_len}.")
    return tuple(integer(f"{name}[{i}]", v, minimum=minimum, maximum=maximum)
                 for i, v in enumerate(items))


def _sequence(name: str, value: object, *, scalar_ok: bool) -> list[Any]:
    """The items of a list / tuple / 1-d array (or ``[value]`` for a scalar when allowed)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0 and scalar_ok:
            return [value.item()]
        if value.ndim != 1:
            raise ScadvInputError(f"{name} must be one-dimensional, got an array of shape "
                                  f"{value.shape}.")
        return [v.item() if isinstance(v, np.generic) else v for v in value]
    if isinstance(value, (list, tuple)):
        return list(value)
    if scalar_ok and not isinstance(value, (str, bytes, Mapping)):
        return [value]
    what = "a number or a list / tuple of numbers" if scalar_ok else "a list or tuple"
    raise ScadvInputError(f"{name} must be {what}, got {_got(value)} "
                          f"({type(value).__name__}).")


def flag(name: str, value: object) -> bool:
    """``True`` or ``False`` (a numpy bool too; not 0 / 1 or a string)."""
    if not _is_bool(value):
        raise ScadvInputError(f"{name} must be True or False, got {_got(value)} "
                              f"({type(value).__name__}).")
    return bool(value)


def optional_flag(name: str, value: object) -> bool | None:
    """``None``, ``True`` or ``False``."""
    return None if value is None else flag(name, value)


def choice(name: str, value: object, options: Sequence[Any]) -> Any:
    """One of ``options`` (compared by equality; lists, arrays and other unhashable values are
    refused cleanly, and so are bools unless an option is one)."""
    plain = value is None or isinstance(value, (str, int, float, np.integer, np.floating))
    if _is_bool(value) and not any(_is_bool(o) for o in options):
        plain = False
    if not plain or value not in options:
        raise ScadvInputError(f"{name} must be one of {list(options)}, got {_got(value)}"
                              + ("" if plain else f" ({type(value).__name__})") + ".")
    return value


def name(what: str, value: object, *, allow_none: bool = False) -> str | None:
    """The name of something that exists (an ``obs`` column, a layer, a stored record): a
    non-empty string."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise ScadvInputError(f"{what} must be a name (a string), got {_got(value)} "
                              f"({type(value).__name__}).")
    if not value:
        raise ScadvInputError(f"{what} must be a non-empty name, got ''.")
    return value


def model_spec(what: str, value: object) -> object:
    """A classifier given to a tool: the key of a stored classifier (a non-empty string) or a
    model object (:class:`scadv.models.Model`, a CellTypist model, a torch module), which the
    tool resolves and checks itself."""
    if isinstance(value, str):
        return name(what, value)
    if value is None or isinstance(value, (bool, int, float, complex, bytes, Mapping, list,
                                           tuple, np.ndarray)):
        raise ScadvInputError(
            f"{what} must be the key of a stored classifier (a string) or a model object "
            f"(scadv.models.Model, a CellTypist model), got {_got(value)} "
            f"({type(value).__name__}).")
    return value


def names(what: str, value: object, *, allow_none: bool = False, allow_empty: bool = False,
          single: bool = True) -> tuple[str, ...] | None:
    """One name (unless ``single=False``) or a sequence of names (strings), e.g. layers, keys
    or feature groups."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) and not single:
        raise ScadvInputError(f"{what} must be a list of names, got the string {_got(value)}; "
                              f"write {what}=[{value!r}] for one.")
    items = [value] if isinstance(value, str) else _sequence(what, value, scalar_ok=False)
    out = tuple(name(f"{what}[{i}]" if len(items) > 1 else what, v) or "" for i, v in
                enumerate(items))
    if not out and not allow_empty:
        raise ScadvInputError(f"{what} must be a non-empty list of names, got {_got(value)}.")
    return out


def key_name(what: str, value: object, *, allow_none: bool = False) -> str | None:
    """A key scadv WRITES under (``key_added``): a non-empty string without ``'/'`` (HDF5's
    path separator: such a key makes an ``.h5ad`` that cannot be read back), without
    surrounding spaces or control characters, and not one of the names scadv keeps its own
    records under (``'prepare'``, ``'provenance'``, …)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise ScadvInputError(f"{what} must be a string, got {_got(value)} "
                              f"({type(value).__name__}).")
    problem = ""
    if not value:
        problem = "is empty"
    elif "/" in value:
        problem = "contains '/' (the .h5ad path separator: the file could not be read back)"
    elif value != value.strip() or not value.isprintable():
        problem = "has surrounding spaces or control characters"
    elif value in RESERVED_KEYS:
        problem = (f"is reserved: scadv keeps its own record under uns['scadv'][{value!r}], "
                   "which this result would replace")
    elif len(value) > 200:
        problem = "is longer than 200 characters"
    if problem:
        raise ScadvInputError(f"{what}={_got(value)} {problem}. Pass another name, e.g. "
                              f"{what}='run2'.")
    return value


def clip(what: str, value: object) -> None:
    """An attack's box: ``None``, ``'observed'`` or ``(low, high)`` with finite low < high."""
    if value is None or (isinstance(value, str) and value == "observed"):
        return
    if isinstance(value, str):
        raise ScadvInputError(f"{what} must be None, 'observed' or (low, high), got {value!r}.")
    bounds = reals(what, value)
    if len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise ScadvInputError(f"{what}=(low, high) needs two finite numbers with low < high, "
                              f"got {_got(value)}.")


def device(value: object) -> None:
    """``'auto'``, a torch device string (``'cpu'``, ``'cuda'``, ``'cuda:1'``) or a
    :class:`torch.device` (resolved later by :func:`scadv._device.resolve`)."""
    import torch

    if isinstance(value, torch.device):
        return
    if not isinstance(value, str) or not value:
        raise ScadvInputError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got "
                              f"{_got(value)} ({type(value).__name__}).")


def path_or_none(what: str, value: object) -> None:
    """``None``, ``True`` / ``False``, a string or a path (``save=``, with scanpy's meaning)."""
    import os

    if value is not None and not isinstance(value, (str, os.PathLike, bool)):
        raise ScadvInputError(f"{what} must be a file name, True / False or None, got "
                              f"{_got(value)} "
                              f"({type(value).__name__}).")


#: Option names with the same meaning in every public function, and their check.
_STANDARD: dict[str, Callable[[str, Any], Any]] = {
    "copy": flag,
    "progress": flag,
    "seed": lambda n, v: seed(v, n),
    "device": lambda n, v: device(v),
    "batch_size": positive_int,
    "batch_rows": positive_int,
    "key_added": lambda n, v: key_name(n, v, allow_none=True),
    "layer": lambda n, v: name(n, v, allow_none=True),
    "show": optional_flag,
    "save": path_or_none,
}


def options(params: Mapping[str, Any]) -> None:
    """Check the standard options of a public function (``copy``, ``progress``, ``seed``,
    ``device``, ``batch_size``, ``batch_rows``, ``key_added``, ``layer``, ``show``, ``save``,
    ``ax``) present in ``params`` (its ``locals()`` at the top); the others are checked by
    the function itself."""
    if "adata" in params and not isinstance(params["adata"], AnnData):
        raise ScadvInputError(
            f"expected an AnnData as first argument, got {type(params['adata']).__name__}. "
            "Read your data with anndata.read_h5ad / scanpy.read_10x_mtx first."
        )
    for key, check in _STANDARD.items():
        if key in params:
            check(key, params[key])
    if params.get("ax") is not None:
        from matplotlib.axes import Axes

        ax = params["ax"]
        several = isinstance(ax, (list, tuple, np.ndarray)) and all(
            isinstance(a, Axes) for a in np.asarray(ax, dtype=object).ravel())
        if not (isinstance(ax, Axes) or several):
            raise ScadvInputError(f"ax must be matplotlib Axes (or several, for plots that "
                                  f"draw several panels) or None, got {type(ax).__name__}.")
