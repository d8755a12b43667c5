"""Tools: train, apply, attack and explain classifiers, detect manipulated cells (``scadv.tl``)."""

from ._attacks._fgsm import fgsm
from ._attacks._fragility import fragility
from ._attacks._pgd import pgd
from ._attacks._robustness import robust_accuracy
from ._counts._count_attack import count_attack
from ._detect._adaptive import adaptive_pgd
from ._detect._adaptive_counts import adaptive_count_attack
from ._detect._benign import benign_perturb
from ._detect._meta_detect import meta_detect
from ._detect._meta_evaluate import meta_evaluate
from ._detect._meta_score import meta_score
from ._explain._attribute import attribute
from ._explain._checks import attribution_agreement, attribution_stability, marker_overlap
from ._explain._enrichment import gene_set_enrichment
from ._explain._ground_truth import score_attributions
from ._genes._cgd import cgd
from ._genes._grid import grid
from ._genes._max_change import max_change
from ._genes._overview import overview
from ._genes._random_walk import random_walk
from ._genes._single_gene import single_gene
from ._labels._pseudo import pseudo_labels
from ._models._add_model import add_model
from ._models._compare import compare_models
from ._training._adversarial_train import adversarial_train
from ._training._predict import predict
from ._training._train import train_classifier

__all__ = [
    "adaptive_count_attack",
    "adaptive_pgd",
    "add_model",
    "adversarial_train",
    "attribute",
    "attribution_agreement",
    "attribution_stability",
    "benign_perturb",
    "cgd",
    "compare_models",
    "count_attack",
    "fgsm",
    "fragility",
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
    "pseudo_labels",
    "random_walk",
    "robust_accuracy",
    "score_attributions",
    "single_gene",
    "train_classifier",
]
