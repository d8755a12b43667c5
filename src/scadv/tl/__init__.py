"""Tools: train, apply, attack and explain classifiers, detect manipulated cells (``scadv.tl``)."""

from ._adaptive import adaptive_pgd
from ._adversarial_train import adversarial_train
from ._attribute import attribute
from ._attribution_checks import attribution_agreement, attribution_stability, marker_overlap
from ._benign import benign_perturb
from ._cgd import cgd
from ._enrichment import gene_set_enrichment
from ._fgsm import fgsm
from ._grid import grid
from ._ground_truth import score_attributions
from ._max_change import max_change
from ._meta_detect import meta_detect
from ._meta_evaluate import meta_evaluate
from ._meta_score import meta_score
from ._overview import overview
from ._pgd import pgd
from ._predict import predict
from ._random_walk import random_walk
from ._robustness import robust_accuracy
from ._single_gene import single_gene
from ._train import train_classifier

__all__ = [
    "adaptive_pgd",
    "adversarial_train",
    "attribute",
    "attribution_agreement",
    "attribution_stability",
    "benign_perturb",
    "cgd",
    "fgsm",
    "gene_set_enrichment",
    "grid",
    "marker_overlap",
    "max_change",
    "meta_detect",
    "meta_evaluate",
    "meta_score",
    "overview",
    "pgd",
    "predict",
    "random_walk",
    "robust_accuracy",
    "score_attributions",
    "single_gene",
    "train_classifier",
]
