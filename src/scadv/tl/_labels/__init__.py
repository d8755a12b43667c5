"""Labels for data sets that have none: explicit pseudo-labels."""
