"""Preprocessing: bring expression into a classifier's input space (``scadv.pp``)."""

from ._prepare import prepare
from ._transform import transform

__all__ = ["prepare", "transform"]
