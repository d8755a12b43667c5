"""Plots (``scadv.pl``)."""

from ._cgd import cgd
from ._flip_rate import flip_rate
from ._overview import overview
from ._single_gene import single_gene

__all__ = ["cgd", "flip_rate", "overview", "single_gene"]
