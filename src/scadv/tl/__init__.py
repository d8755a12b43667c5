"""Tools: train, apply and attack classifiers (``scadv.tl``)."""

from ._fgsm import fgsm
from ._pgd import pgd
from ._predict import predict
from ._train import train_classifier

__all__ = ["fgsm", "pgd", "predict", "train_classifier"]
