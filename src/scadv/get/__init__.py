"""Getters: what scadv computes and stores, as arrays (``scadv.get``, like :mod:`scanpy.get`)."""

from ._model_input import model_input
from ._perturbed import perturbations, perturbed

__all__ = ["model_input", "perturbations", "perturbed"]
