"""Shared plumbing of the plotting functions."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import matplotlib.pyplot as plt
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys as K
from .. import _records as REC
from .._colors import class_colors
from .._errors import ScadvInputError

_F = TypeVar("_F", bound=Callable[..., Any])

#: The end of every plot's docstring: the ``ax``, ``show`` and ``save`` parameters and what
#: is returned. A docstring says ``{ax_show_save}`` where it goes.
DOC_AX_SHOW_SAVE = """\
ax
    Axes to draw into; a new figure by default.
show
    Show the figure; ``None`` follows :attr:`scanpy.settings.autoshow`.
save
    Save the figure, as scanpy does: ``True`` writes
    ``{sc.settings.figdir}/<plot>{sc.settings.plot_suffix}.{sc.settings.file_format_figs}``;
    a string is appended to the plot's name in ``sc.settings.figdir`` (``'_pbmc.pdf'`` →
    ``figures/<plot>_pbmc.pdf``); a :class:`~pathlib.Path` is written exactly there.

Returns
-------
The axes drawn into.
"""


def doc_ax_show_save(func: _F) -> _F:
    """Put :data:`DOC_AX_SHOW_SAVE` where ``func``'s docstring says ``{ax_show_save}``, at
    that line's indentation (docstrings are dedented from Python 3.13 on)."""
    if func.__doc__:
        func.__doc__ = re.sub(r"^([ \t]*)\{ax_show_save\}\n",
                              lambda m: textwrap.indent(DOC_AX_SHOW_SAVE, m.group(1)),
                              func.__doc__, flags=re.M)
    return func


def record(adata: AnnData, key: str, *, needs: tuple[str, ...], made_by: str,
           schema: Mapping[str, REC.Field] | None = None) -> Mapping[str, Any]:
    """``adata.uns['scadv'][key]`` with the entries a plot needs, or a clear error.

    ``schema`` states the type, shape and values of every entry the plot reads; a record that
    does not hold them (changed or damaged after scadv wrote it) is a clear error too.
    """
    ns = adata.uns.get(K.UNS)
    rec = ns.get(key) if isinstance(ns, Mapping) else None
    if not isinstance(rec, Mapping) or any(n not in rec for n in needs):
        raise ScadvInputError(
            f"no {made_by} results under adata.uns['scadv'][{key!r}]; run {made_by} first "
            "(or pass key=... naming the run to plot)."
        )
    if schema is not None:
        check(rec, schema, key=key, made_by=made_by)
    return rec


def check(rec: Any, schema: Mapping[str, REC.Field], *, key: str, made_by: str,
          dims: dict[str, int] | None = None) -> dict[str, Any]:
    """:func:`scadv._records.fields` with this plot's wording."""
    return REC.fields(rec, schema, what=f"{made_by} record {key!r}", fix=f"run {made_by} again "
                      "(or pass key=... naming another run).", dims=dims)


def axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """The axes to draw into: the user's, or a new figure's (constrained layout, so tick
    labels, colour bars and legends outside the axes survive a plain ``fig.savefig``)."""
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def root_figure(ax: Axes) -> Figure:
    """The figure ``ax`` is drawn in (the top-level one when ``ax`` sits in a subfigure)."""
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.get_figure(root=True)


def save_path(save: str | Path | bool | None, name: str) -> Path | None:
    """Where ``save=`` writes a plot called ``name``, with scanpy's semantics (see
    :data:`DOC_AX_SHOW_SAVE`); ``None`` for no file."""
    if save is None or save is False:
        return None
    if isinstance(save, Path):
        return save
    figdir = Path(sc.settings.figdir)
    ext = str(sc.settings.file_format_figs).lstrip(".")
    stem = name
    if isinstance(save, str):
        for candidate in ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff",
                          "html"):
            if save.endswith(f".{candidate}"):
                ext, save = candidate, save[:-len(candidate) - 1]
                break
        stem = f"{name}{save}"
    return figdir / f"{stem}{sc.settings.plot_suffix}.{ext}"


def finish(ax: Axes, *, show: bool | None, save: str | Path | bool | None,
           name: str = "scadv") -> Axes:
    """Save and/or show as asked (``show=None`` follows ``scanpy.settings.autoshow``);
    ``name`` is the plot's name in files made by ``save=True`` or ``save='_suffix'``."""
    path = save_path(save, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        root_figure(ax).savefig(path, dpi=150, bbox_inches="tight")
        if int(sc.settings.verbosity) >= 2:
            print(f"saving figure to file {path}")
    if show is None:
        show = bool(sc.settings.autoshow) and plt.get_backend().lower() != "agg"
    if show:
        plt.show()
    return ax


def palette(adata: AnnData, classes: list[str], label_key: str = "") -> list[str]:
    """One colour per class, as ``sc.pl.umap(adata, color=label_key)`` draws it
    (:func:`scadv._colors.class_colors`)."""
    return class_colors(adata, label_key, classes)


def label_key_of(adata: AnnData, model: str = K.DEFAULT_MODEL) -> str:
    """The label column the stored classifier ``model`` was trained on ('' if unknown)."""
    rec = adata.uns.get(K.UNS, {}).get(model)
    return str(rec.get("label_key", "")) if isinstance(rec, Mapping) else ""



def text_color(rgba: Any) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (by its relative
    luminance, WCAG), so annotations stay legible on every colour map."""
    from matplotlib.colors import to_rgba

    r, g, b, _ = to_rgba(rgba)

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    # contrast against black (lum + 0.05) / 0.05 vs white 1.05 / (lum + 0.05)
    return "black" if (lum + 0.05) ** 2 > 0.05 * 1.05 else "white"


def annotate_cells(ax: Axes, image: Any, values: Any, fmt: Callable[[float], str], *,
                   fontsize: str = "small", skip_zero: bool = False) -> None:
    """Write each finite value of ``values`` into its cell of the heatmap ``image`` in the
    colour that reads on that cell's own colour."""
    import numpy as np

    vals = np.asarray(values, dtype=float)
    for (i, j), v in np.ndenumerate(vals):
        if not np.isfinite(v) or (skip_zero and v == 0):
            continue
        face = image.cmap(image.norm(image.get_array()[i, j]))
        ax.text(j, i, fmt(v), ha="center", va="center", fontsize=fontsize,
                color=text_color(face))


def set_title(ax: Axes, text: str, *, fontsize: str = "medium") -> None:
    """``ax.set_title`` wrapped to the figure's width, so a long title is never cut off by
    ``savefig`` (constrained layout can shrink axes, not titles)."""
    from matplotlib.font_manager import FontProperties

    points = FontProperties(size=fontsize).get_size_in_points()
    width_in = root_figure(ax).get_figwidth()
    chars = max(20, int(0.65 * width_in * 72 / (0.55 * points)))
    lines = [textwrap.fill(line, chars) for line in text.split("\n")]
    ax.set_title("\n".join(lines), fontsize=fontsize)
