"""Plots (``scadv.pl``)."""

from ._attributions import (
    attribution_agreement,
    attribution_stability,
    attribution_truth,
    enrichment,
    marker_overlap,
    top_genes,
)
from ._flip_rate import flip_rate
from ._robustness_curve import robustness_curve

__all__ = ["attribution_agreement", "attribution_stability", "attribution_truth", "enrichment",
           "flip_rate", "marker_overlap", "robustness_curve", "top_genes"]
