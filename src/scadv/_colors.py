"""Colours shared by every scadv figure and by the obs columns scadv writes.

A class keeps one colour everywhere: in ``sc.pl.umap(adata, color=label_key)``, in the attack
columns (``scadv_pgd_eps0.1_pred`` / ``_flipped_to``) and in scadv's own plots. Where the user
(or an earlier scanpy plot) stored ``uns['<label_key>_colors']``, those colours are used;
otherwise the palette scanpy itself assigns when it first plots the column (the matplotlib
colour cycle for up to its length of categories, then scanpy's 20 / 28 / 102-colour
palettes), so scanpy and scadv agree whichever plots first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

#: ``_flipped_to`` / ``_flipped`` colour of attacked cells whose prediction did not change.
UNCHANGED_COLOR = "#555555"
#: Colour of cells an attack did not touch (scanpy's ``na_color``; NaN in the columns).
NOT_ATTACKED_COLOR = "lightgray"
#: ``_flipped`` colour of attacked cells whose prediction changed.
FLIPPED_COLOR = "#d62728"
#: Colour of the clean reference in before/after plots (a bar, a histogram).
CLEAN_COLOR = "0.55"


def scanpy_palette(n: int) -> list[str]:
    """The ``n`` colours scanpy gives a categorical column with ``n`` categories when it has
    no stored colours (``scanpy.plotting._utils._set_default_colors_for_categorical_obs``)."""
    from matplotlib import rcParams
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    cycle = [to_hex(c) for c in rcParams["axes.prop_cycle"].by_key().get("color", [])]
    if n <= len(cycle):
        return cycle[:n]
    if n <= 20:
        return list(palettes.default_20[:n])
    if n <= 28:
        return list(palettes.default_28[:n])
    if n <= len(palettes.default_102):
        return list(palettes.default_102[:n])
    return ["grey"] * n


def categories(adata: AnnData, key: str) -> list[str] | None:
    """The categories scanpy plots for ``obs[key]`` (a string column is made categorical with
    sorted categories, as scanpy does), or ``None`` when there is no such column."""
    col = adata.obs.get(key) if key else None
    if col is None:
        return None
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories]
    return [str(c) for c in pd.Categorical(col.dropna().astype(str)).categories]


def class_colors(adata: AnnData, label_key: str, classes: Sequence[str]) -> list[str]:
    """One colour per class, as ``sc.pl.umap(adata, color=label_key)`` draws it.

    The user's ``uns['<label_key>_colors']`` where it is valid for the column's categories,
    else scanpy's default palette for those categories; classes that are not categories of
    the column (e.g. a classifier trained on other labels) fall back to scanpy's palette over
    the classes themselves.
    """
    classes = [str(c) for c in classes]
    cats = categories(adata, label_key)
    if cats is not None and all(c in cats for c in classes):
        stored = adata.uns.get(f"{label_key}_colors")
        colors: list[str] | None = None
        if stored is not None:
            stored = [str(c) for c in np.asarray(stored).ravel()]
            if len(stored) >= len(cats) and _all_colors(stored[:len(cats)]):
                colors = stored[:len(cats)]
        if colors is None:
            colors = scanpy_palette(len(cats))
        lookup = dict(zip(cats, colors, strict=True))
        return [lookup[c] for c in classes]
    return scanpy_palette(len(classes))


def _all_colors(values: Sequence[str]) -> bool:
    from matplotlib.colors import is_color_like

    return all(is_color_like(v) for v in values)


def series_colors(n: int) -> list[str]:
    """``n`` distinguishable colours for series that are not classes (attacks, models)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10"] if n <= 10 else colormaps["tab20"]
    return [to_hex(cmap(i % cmap.N)) for i in range(n)]


def fragility_colors(n: int) -> list[str]:
    """``n`` colours for ordered fragility bins (fewest UMIs or smallest ε first): from red
    (fragile: flipped by little) through yellow to blue (robust; the last bin, "not
    flipped", is the darkest blue)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["RdYlBu"]
    return [to_hex(cmap(v)) for v in np.linspace(0.0, 1.0, max(n, 1))][:n]
