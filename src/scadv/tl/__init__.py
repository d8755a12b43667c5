"""Tools: train, apply and attack classifiers (``scadv.tl``)."""

from ._cgd import cgd
from ._fgsm import fgsm
from ._grid import grid
from ._max_change import max_change
from ._overview import overview
from ._pgd import pgd
from ._predict import predict
from ._random_walk import random_walk
from ._single_gene import single_gene
from ._train import train_classifier

__all__ = [
    "cgd",
    "fgsm",
    "grid",
    "max_change",
    "overview",
    "pgd",
    "predict",
    "random_walk",
    "single_gene",
    "train_classifier",
]
