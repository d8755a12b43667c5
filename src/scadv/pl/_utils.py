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
    File to save the figure to.

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
    """The axes to draw into: the user's, or a new figure's."""
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def root_figure(ax: Axes) -> Figure:
    """The figure ``ax`` is drawn in (the top-level one when ``ax`` sits in a subfigure)."""
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.get_figure(root=True)


def finish(ax: Axes, *, show: bool | None, save: str | Path | None) -> Axes:
    """Save and/or show as asked (``show=None`` follows ``scanpy.settings.autoshow``)."""
    if save is not None:
        root_figure(ax).savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = bool(sc.settings.autoshow) and plt.get_backend().lower() != "agg"
    if show:
        plt.show()
    return ax


def palette(adata: AnnData, classes: list[str], label_key: str = "") -> list[str]:
    """One colour per class: the user's ``uns['<label_key>_colors']`` where it covers the
    classes, else scanpy's default palette (as the attack plots)."""
    from ..tl._attacks._attack import class_colors

    return class_colors(adata, label_key, classes)
