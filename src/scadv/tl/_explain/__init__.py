"""Gene attributions and their checks: attribute, rankings, stability, agreement, marker
overlap, enrichment, ground truth."""
