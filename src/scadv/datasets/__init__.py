"""Datasets (``scadv.datasets``): the embedded default and local PBMC3k."""

from ._pbmc import pbmc3k, pbmc68k_reduced

__all__ = ["pbmc3k", "pbmc68k_reduced"]
