"""Cell selections given as names, masks or positions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from .._errors import ScadvInputError


def positions(adata: AnnData, cells: Sequence[str] | np.ndarray | None) -> np.ndarray:
    """Row positions of ``cells`` (names, a boolean mask or positions; None: all)."""
    if cells is None:
        return np.arange(adata.n_obs)
    if isinstance(cells, (str, bytes)):
        cells = [cells]
    try:
        arr = np.asarray(cells)
    except ValueError as err:
        raise ScadvInputError(f"cells must be cell names, a boolean mask or positions "
                              f"({err}).") from None
    if arr.ndim != 1 or arr.dtype.kind not in "biuUSO":
        raise ScadvInputError(
            "cells must be a one-dimensional list of cell names, a boolean mask or integer "
            f"positions, got an array of shape {arr.shape} and dtype {arr.dtype}.")
    if arr.dtype == bool:
        if arr.shape != (adata.n_obs,):
            raise ScadvInputError(
                f"a boolean cells mask needs {adata.n_obs} entries, got {arr.shape}.")
        return np.flatnonzero(arr)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= adata.n_obs):
            raise ScadvInputError(f"cell positions must be in [0, {adata.n_obs}).")
        return arr.astype(np.int64)
    pos = adata.obs_names.get_indexer(arr.astype(str))
    if (pos < 0).any():
        raise ScadvInputError(
            f"{int((pos < 0).sum())} cells are not in adata.obs_names "
            f"(e.g. {arr[pos < 0][:5].tolist()}).")
    return pos.astype(np.int64)
