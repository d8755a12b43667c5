"""Checks that a figure shows its data: artists and limits, not pixels."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure


def inside_figure(fig: Figure, tol: float = 1.0) -> None:
    """Every axes' tick labels, labels, title and legend lie inside the figure as drawn by a
    plain ``fig.savefig`` (no ``bbox_inches='tight'``)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    box = fig.bbox
    for ax in fig.axes:
        tight = ax.get_tightbbox(renderer)
        assert tight.x0 >= box.x0 - tol and tight.y0 >= box.y0 - tol, (ax.get_title(), tight)
        assert tight.x1 <= box.x1 + tol and tight.y1 <= box.y1 + tol, (ax.get_title(), tight)


def visible_alpha(artist) -> bool:
    alpha = artist.get_alpha()
    return alpha is None or alpha > 0.05


def lines_within_limits(ax: Axes, lines) -> None:
    """Each line's points lie inside the axes limits (not on or beyond the frame)."""
    x0, x1 = sorted(ax.get_xlim())
    y0, y1 = sorted(ax.get_ylim())
    for line in lines:
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert (x > x0).all() and (x < x1).all(), (line.get_label(), x.min(), x.max(), x0, x1)
        assert (y > y0).all() and (y < y1).all(), (line.get_label(), y.min(), y.max(), y0, y1)


def distinct_styles(lines) -> None:
    """No two lines share colour, width and dash pattern (coinciding curves stay apart)."""
    keys = [(to_rgba(line.get_color()), round(line.get_linewidth(), 2),
             str(line.get_linestyle())) for line in lines]
    assert len(set(keys)) == len(keys), keys


def readable_on(rgba) -> str:
    """The text colour with the higher WCAG contrast on a cell of colour ``rgba``."""
    r, g, b, _ = to_rgba(rgba)
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "black" if (lum + 0.05) / 0.05 > 1.05 / (lum + 0.05) else "white"
