"""Datasets (``scadv.datasets``): the embedded default, local PBMC3k, and a simulator with
known marker genes."""

from ._pbmc import pbmc3k, pbmc68k_reduced
from ._simulate import simulate

__all__ = ["pbmc3k", "pbmc68k_reduced", "simulate"]
