"""Detecting manipulated cells: meta-features, the meta-detector, baselines, scoring,
evaluation, benign perturbations and the adaptive attacker."""
