"""Tools: train, apply, attack and explain classifiers (``scadv.tl``)."""

from ._adversarial_train import adversarial_train
from ._attribute import attribute
from ._attribution_checks import attribution_agreement, attribution_stability, marker_overlap
from ._enrichment import gene_set_enrichment
from ._fgsm import fgsm
from ._ground_truth import score_attributions
from ._pgd import pgd
from ._predict import predict
from ._robustness import robust_accuracy
from ._train import train_classifier

__all__ = ["adversarial_train", "attribute", "attribution_agreement", "attribution_stability",
           "fgsm", "gene_set_enrichment", "marker_overlap", "pgd", "predict", "robust_accuracy",
           "score_attributions", "train_classifier"]
