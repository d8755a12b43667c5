"""Plots (``scadv.pl``)."""

from ._attributions import (
    attribution_agreement,
    attribution_stability,
    attribution_truth,
    enrichment,
    marker_overlap,
    top_genes,
)
from ._cgd import cgd
from ._compare_models import compare_models
from ._count_attack import count_attack, count_genes, fragility
from ._flip_rate import flip_rate
from ._meta_cell import meta_cell
from ._meta_confusion import meta_confusion
from ._meta_embedding import meta_embedding
from ._meta_scores import meta_scores
from ._overview import overview
from ._report import report
from ._robustness_curve import robustness_curve
from ._roc import roc
from ._single_gene import single_gene

__all__ = [
    "attribution_agreement",
    "attribution_stability",
    "attribution_truth",
    "cgd",
    "compare_models",
    "count_attack",
    "count_genes",
    "enrichment",
    "flip_rate",
    "fragility",
    "marker_overlap",
    "meta_cell",
    "meta_confusion",
    "meta_embedding",
    "meta_scores",
    "overview",
    "report",
    "robustness_curve",
    "roc",
    "single_gene",
    "top_genes",
]
