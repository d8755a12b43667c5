"""The stored recipe as a differentiable torch function of counts.

For a cell with counts ``c`` of the model genes and ``rest`` counts on all other genes, the
library size is ``L = Σ c + rest`` and the model input is

    ``z = clip((log1p(c · target_sum / L) − mean) / std, ±max_value)``,

exactly :func:`scadv._recipe.lognormalize` followed by :func:`scadv._recipe.lognorm_to_model`
(the same float32 operations in the same order; the scale ``target_sum / L`` is formed in
float64 and rounded once, as there). Editing one model gene's counts therefore also changes
``L`` and, through it, every detected gene's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse

from ... import _recipe as R
from ..._errors import ScadvInputError


def check_recipe(recipe: Mapping[str, Any]) -> None:
    """Refuse a recipe that does not start from raw counts (nothing to attack in UMIs)."""
    kind = str(recipe.get("input_kind", ""))
    if kind != "counts" or not bool(recipe.get("has_stats", False)):
        raise ScadvInputError(
            f"a count-space attack needs a model prepared from raw counts, but its recipe was "
            f"built from {kind or 'unknown'} input, so scadv does not know how counts become the "
            "model's input. Prepare the training data from raw UMI counts "
            "(scadv.pp.prepare(adata) on the counts) and train the classifier on it."
        )
    if not bool(recipe.get("log1p", True)):
        raise ScadvInputError(
            "the model's recipe has no log1p step; the count-space transform supports the "
            "standard recipe (normalise, log1p, z-score, clip) only. Prepare with "
            "scadv.pp.prepare(adata).")


def rest_of_library(counts: np.ndarray | sparse.spmatrix, library_size: np.ndarray
                    ) -> np.ndarray:
    """Counts on genes outside the model: ``library_size − Σ model-gene counts`` (float64).

    Raises when a library size is smaller than the cell's model-gene counts (the library sizes
    then belong to other cells or to fewer genes).
    """
    total = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    lib = np.asarray(library_size, dtype=np.float64).ravel()
    if lib.shape != total.shape:
        raise ScadvInputError(
            f"got {lib.size} library sizes for {total.size} cells; pass one library size (total "
            "counts over all genes) per cell, e.g. obs['scadv_library_size'].")
    rest = lib - total
    bad = rest < -1e-6 * np.maximum(lib, 1.0)
    if bad.any():
        raise ScadvInputError(
            f"{int(bad.sum())} cells have a library size below the sum of their model-gene "
            "counts, so the library sizes do not belong to these counts. Pass each cell's total "
            "counts over ALL genes (obs['scadv_library_size'] written by scadv.pp.prepare).")
    return np.maximum(rest, 0.0)


def reference_model_input(counts: np.ndarray | sparse.spmatrix, library_size: np.ndarray,
                          recipe: Mapping[str, Any]) -> np.ndarray:
    """The model input of model-gene counts by the recipe itself (numpy; the reference)."""
    lognorm = R.lognormalize(counts, target_sum=float(recipe["target_sum"]),
                             library_size=np.asarray(library_size, dtype=np.float64))
    return R.lognorm_to_model(lognorm, recipe)


@dataclass(frozen=True)
class CountTransform:
    """Counts of the model genes (+ the rest of the library) → model input, in torch.

    Build it with :meth:`from_recipe`. Every method works on a batch of cells (rows) and is
    differentiable in the counts (``torch.autograd``), library size included.
    """

    mean: torch.Tensor  # (G,) float32
    std: torch.Tensor  # (G,) float32
    target_sum: float
    max_value: float
    upper_only: bool = False  # the recipe's clip='upper' (CellTypist): cap, no floor

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], device: torch.device | str = "cpu"
                    ) -> CountTransform:
        check_recipe(recipe)
        mean = np.asarray(recipe["mean"], dtype=np.float32)
        std = np.asarray(recipe["std"], dtype=np.float32)
        return cls(torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device),
                   float(recipe["target_sum"]), float(recipe["max_value"]),
                   R.clip_mode(recipe) == "upper")

    @property
    def n_genes(self) -> int:
        return int(self.mean.shape[0])

    def library(self, counts: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """Library sizes (float64): the model genes' counts plus ``rest``."""
        return counts.sum(dim=1, dtype=torch.float64) + rest.to(torch.float64)

    def scale(self, library: torch.Tensor) -> torch.Tensor:
        """``target_sum / L`` per cell, formed in float64 and rounded to float32 once."""
        return (self.target_sum / library.to(torch.float64)).to(torch.float32)

    def at(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Model input of ``counts`` (rows × G, or any shape broadcasting against the genes)
        normalised by the given library sizes (one per row)."""
        return self.values(counts, self.scale(library).unsqueeze(-1))

    def values(self, counts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``clip((log1p(counts · scale) − mean) / std)`` with ``scale`` broadcast against
        ``counts`` (elementwise; used for single-gene candidate values)."""
        z = torch.log1p(counts.to(torch.float32) * scale)
        z = (z - self.mean) / self.std
        if self.max_value > 0:
            z = (z.clamp(max=self.max_value) if self.upper_only
                 else z.clamp(-self.max_value, self.max_value))
        return z

    def __call__(self, counts: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """Model input of ``counts`` (rows × G) with ``rest`` counts outside the model genes."""
        return self.at(counts, self.library(counts, rest))
