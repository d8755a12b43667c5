"""Tools: train, apply and attack classifiers, detect manipulated cells (``scadv.tl``)."""

from ._adaptive import adaptive_pgd
from ._benign import benign_perturb
from ._fgsm import fgsm
from ._meta_detect import meta_detect
from ._meta_evaluate import meta_evaluate
from ._meta_score import meta_score
from ._pgd import pgd
from ._predict import predict
from ._train import train_classifier

__all__ = ["adaptive_pgd", "benign_perturb", "fgsm", "meta_detect", "meta_evaluate",
           "meta_score", "pgd", "predict", "train_classifier"]
