"""Bringing other classifiers into scadv (CellTypist, scikit-learn, PyTorch)."""
