"""Plots (``scadv.pl``)."""

from ._flip_rate import flip_rate

__all__ = ["flip_rate"]
