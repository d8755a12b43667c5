"""Pieces shared by the ``scadv.tl`` functions: stored models, splits, metrics, cell choice."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import confusion_matrix

from .. import _keys as K
from .. import _model as M
from .. import _validate as V
from .._errors import ScadvInputError

Cells = Literal["test", "all"] | Sequence[str] | np.ndarray


def model_record(adata: AnnData, model: str = K.DEFAULT_MODEL,
                 source: AnnData | Mapping[str, Any] | str | os.PathLike | None = None
                 ) -> Mapping[str, Any]:
    """The stored classifier ``model`` of ``source`` (default: ``adata``; a path: the
    ``.h5ad`` file's record alone, see :func:`file_records`), validated."""
    if isinstance(source, Mapping):
        M.check_record(source)
        return source
    record = stored_record(
        adata, model, source, kind=M.MODEL_KINDS, noun="classifier", plural="classifiers",
        hint="Train one with scadv.tl.train_classifier(adata, label_key), store one with "
             "scadv.tl.add_model, or pass model=<key of a stored classifier>.")
    M.check_record(record)
    return record


def stored_record(adata: AnnData, key: str, source: AnnData | str | os.PathLike | None, *,
                  kind: str | tuple[str, ...], noun: str, plural: str, hint: str
                  ) -> Mapping[str, Any]:
    """``uns['scadv'][key]`` of ``source`` (default ``adata``; a path: that ``.h5ad`` file's
    records, read alone); if absent, an error that lists the stored records of that ``kind``
    and says how to make one (``hint``)."""
    ns: Any
    if isinstance(source, (str, os.PathLike)):
        ns = file_records(source)
    else:
        ns = (adata if source is None else source).uns.get(K.UNS)
    ns = ns if isinstance(ns, Mapping) else {}
    record = ns.get(key)
    if record is None:
        kinds = (kind,) if isinstance(kind, str) else kind
        known = sorted(k for k, v in ns.items()
                       if isinstance(v, Mapping) and str(v.get("kind", "")) in kinds)
        where = ("adata" if source is None else "the source AnnData"
                 if isinstance(source, AnnData) else f"the file {os.fspath(source)!r}")
        raise ScadvInputError(f"no scadv {noun} {key!r} in {where}.uns['scadv'] (stored "
                              f"{plural}: {known or 'none'}). {hint}")
    return record


class _FileRecords(Mapping[str, Any]):
    """``uns['scadv']`` of an ``.h5ad`` file, each record read from the file when asked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cache: dict[str, Any] = {}
        with _open(path) as f:
            group = f.get(f"uns/{K.UNS}")
            self._names = list(group.keys()) if isinstance(group, h5py.Group) else []

    def __getitem__(self, key: str) -> Any:
        if key not in self._names:
            raise KeyError(key)
        if key not in self._cache:
            with _open(self.path) as f:
                self._cache[key] = _read_elem(f[f"uns/{K.UNS}/{key}"])
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as err:
        raise ScadvInputError(f"source file {path!r} does not exist.") from err
    except OSError as err:
        raise ScadvInputError(
            f"cannot read {path!r} as an .h5ad (HDF5) file ({err}). Pass the path of an .h5ad "
            "written by anndata (adata.write_h5ad), or the AnnData itself.") from err


def _read_elem(elem: Any) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # pragma: no cover - anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(elem)


def file_records(path: str | os.PathLike) -> Mapping[str, Any]:
    """The scadv records of an ``.h5ad`` file (``uns['scadv']``), read from the file one
    record at a time when asked: a model is reached without loading the file's matrix, however
    large the atlas it was trained on."""
    return _FileRecords(os.fspath(path))


def target_index(classes: Sequence[str], target: str | None) -> int | None:
    """Position of ``target`` among the model's ``classes`` (``None`` for an untargeted
    attack), or a clear error naming the classes."""
    if target is None:
        return None
    if str(target) not in classes:
        raise ScadvInputError(f"target {target!r} is not a class of the model ({list(classes)}).")
    return list(classes).index(str(target))


def class_index(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Integer class per cell (-1 for missing labels or labels the model does not know)."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup.get(v, -1) if isinstance(v, str) else -1 for v in labels],
                      dtype=np.int64)


def stratified_split(y: np.ndarray, *, test_size: float, val_size: float, seed: int) -> np.ndarray:
    """Per class, shuffle and assign ``test`` / ``val`` / ``train``; unlabelled cells (-1) stay out.

    Every class gets at least one test and one validation cell and keeps at least one training
    cell, so each class needs three labelled cells.
    """
    rng = np.random.default_rng(seed)
    out = np.full(len(y), K.SPLIT_UNLABELLED, dtype=object)
    for c in np.unique(y[y >= 0]):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, round(test_size * len(idx)))
        n_val = max(1, round(val_size * len(idx)))
        if n_test + n_val >= len(idx):
            n_test, n_val = 1, 1
        out[idx[:n_test]] = K.SPLIT_TEST
        out[idx[n_test:n_test + n_val]] = K.SPLIT_VAL
        out[idx[n_test + n_val:]] = K.SPLIT_TRAIN
    return out


def metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class accuracy (recall) and the confusion matrix.

    Cells with ``y_true < 0`` (no label) are ignored. Per-class values are arrays in class
    order (NaN for a class with no cells).
    """
    keep = y_true >= 0
    yt, yp = y_true[keep], y_pred[keep]
    cm = confusion_matrix(yt, yp, labels=np.arange(n_classes)) if len(yt) else np.zeros(
        (n_classes, n_classes), dtype=np.int64)
    n_per = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(n_per > 0, np.diag(cm) / np.maximum(n_per, 1), np.nan)
    present = n_per > 0
    return {
        "n_cells": len(yt),
        "accuracy": float((yt == yp).mean()) if len(yt) else float("nan"),
        "balanced_accuracy": (float(np.nanmean(per_class[present])) if present.any()
                              else float("nan")),
        "per_class_accuracy": per_class.astype(np.float64),
        "n_cells_per_class": n_per.astype(np.int64),
        "confusion_matrix": cm.astype(np.int64),
    }


def split_column(record: Mapping[str, Any], model: str) -> str:
    """The ``obs`` column holding the split a stored model was trained with."""
    return str(record.get("split_key", K.split(model)))


def select_cells(adata: AnnData, cells: Cells, *, split_key: str) -> np.ndarray:
    """Boolean mask of the cells an attack acts on (``'test'``: the model's test split)."""
    if isinstance(cells, str):
        if cells == "all":
            return np.ones(adata.n_obs, dtype=bool)
        if cells == "test":
            key = split_key
            if key not in adata.obs:
                raise ScadvInputError(
                    f"cells='test' needs the split column obs[{key!r}] written by "
                    "scadv.tl.train_classifier; these cells were not split (e.g. new data). "
                    "Pass cells='all' or a list of cell names."
                )
            mask = (adata.obs[key] == K.SPLIT_TEST).to_numpy()
            if not mask.any():
                raise ScadvInputError(f"no cell has obs[{key!r}] == 'test'; pass cells='all'.")
            return mask
        raise ScadvInputError(
            f"cells must be 'test', 'all', cell names or a boolean mask, got {cells!r}.")
    if not isinstance(cells, (list, tuple, np.ndarray, pd.Index, pd.Series)):
        raise ScadvInputError(
            f"cells must be 'test', 'all', a list of cell names or a boolean mask, got "
            f"{type(cells).__name__}.")
    arr = np.asarray(cells)
    if arr.ndim != 1:
        raise ScadvInputError(f"cells must be one-dimensional (names or a mask), got shape "
                              f"{arr.shape}.")
    if arr.dtype == bool:
        if arr.shape != (adata.n_obs,):
            raise ScadvInputError(
                f"a boolean cells mask needs {adata.n_obs} entries, got {arr.shape}.")
        mask = arr.copy()
    else:
        if arr.dtype.kind not in "USO" or not all(isinstance(c, str) for c in arr.tolist()):
            raise ScadvInputError(
                "cells must be cell names (strings from adata.obs_names) or a boolean mask, got "
                f"values of dtype {arr.dtype}.")
        V.unique_cells(adata, why="selecting cells by name")
        idx = adata.obs_names.get_indexer(arr.astype(str))
        if (idx < 0).any():
            raise ScadvInputError(
                f"{int((idx < 0).sum())} requested cells are not in adata.obs_names "
                f"(e.g. {arr[idx < 0][:5].tolist()})."
            )
        mask = np.zeros(adata.n_obs, dtype=bool)
        mask[idx] = True
    if not mask.any():
        raise ScadvInputError("the cell selection is empty; select at least one cell.")
    return mask
