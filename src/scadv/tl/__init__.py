"""Tools: train, apply and attack classifiers, detect manipulated cells (``scadv.tl``)."""

from ._adaptive import adaptive_pgd
from ._benign import benign_perturb
from ._cgd import cgd
from ._fgsm import fgsm
from ._grid import grid
from ._max_change import max_change
from ._meta_detect import meta_detect
from ._meta_evaluate import meta_evaluate
from ._meta_score import meta_score
from ._overview import overview
from ._pgd import pgd
from ._predict import predict
from ._random_walk import random_walk
from ._single_gene import single_gene
from ._train import train_classifier

__all__ = [
    "adaptive_pgd",
    "benign_perturb",
    "cgd",
    "fgsm",
    "grid",
    "max_change",
    "meta_detect",
    "meta_evaluate",
    "meta_score",
    "overview",
    "pgd",
    "predict",
    "random_walk",
    "single_gene",
    "train_classifier",
]
