"""The realism gate: values no measured cell can have.

A classifier prepared from counts sees, per model gene, ``z = (log1p(c · s) − mean) / std``
clipped at ``±max_value``, where ``c`` is the gene's whole UMI count and ``s = target_sum / L``
one number per cell (``L``: its library size). Going back, ``expm1(z · std + mean) / s`` must
be whole numbers. The gate counts, per cell, the model genes that break this:

``below zero``
    A value below the gene's zero level (fewer than zero counts).
``off the count lattice``
    A value whose implied count is not a whole number. The cell's ``s`` is not needed: it is
    found from the cell itself, as the smallest non-zero implied level divided by the smallest
    ``k`` (1, 2, …) that puts all but a few of its genes on whole numbers (``k = 1`` when the
    cell has a gene with one count, as nearly every measured cell has), or — for very deep
    cells whose counts are all large — as the smallest gap between two of its levels.

Depth does not matter (deeper or shallower libraries have other ``s``, the same lattice), nor
the observed range of the reference (the old gate's range check flagged deeper libraries).
Genes the data lacks (``missing_genes='mean'`` fills them with their training mean, z = 0
exactly) are not checked, nor is the lattice of values at the clip (``±max_value``, whose counts
are lost); a value beyond the clip, or below the lowest value the clip and the zero level allow,
counts as below zero whatever its size.

Every model-space edit of a measured cell — unconstrained or data-respecting PGD, FGSM, the
gene-level modifications (a percentile of other cells, a fixed value, a rank shift) — leaves
the lattice, unless it happens to move every changed gene by whole counts; an attacker who
wants to pass must edit counts (the count-space attack), which the statistical detector is
there for. Data whose values never were whole counts (ambient-corrected or imputed counts,
already-scaled input) cannot be checked this way: the gate is then switched off for them, and
the record says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..._errors import ScadvInputError

#: A gene is on the lattice when its implied count is within this of a whole number
#: (plus a relative part for float32 rounding of large counts).
COUNT_TOL = 0.05
COUNT_RTOL = 1e-5
#: Tolerance (model-space units) of "below the zero level" and "at the clip".
Z_TOL = 1e-3
#: Largest ``k`` tried for the cell's smallest count.
MAX_K = 8
#: Fraction of a cell's expressed genes (at least one gene) that may be off the lattice while
#: its scale is chosen; they are then counted as violations.
K_SLACK = 0.02
#: Clean reference cells that must pass for the lattice check to be used.
MIN_CLEAN_PASS = 0.99


def gate_arrays(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The gate's arrays for a classifier's recipe (plain arrays, stored with the detector)."""
    kind = str(recipe.get("input_kind", "counts"))
    has_stats = bool(np.asarray(recipe.get("has_stats", True)))
    return {
        "check_zero": kind in ("counts", "lognorm") and has_stats,
        "check_lattice": kind in ("counts", "lognorm") and has_stats,
        "zero_level": np.asarray(recipe["zero_level"], dtype=np.float32),
        "mean": np.asarray(recipe["mean"], dtype=np.float32),
        "std": np.asarray(recipe["std"], dtype=np.float32),
        "max_value": float(recipe["max_value"]),
        "max_violations": 0,
    }


def _check(gate: Mapping[str, Any], n_genes: int) -> None:
    for name in ("zero_level", "mean", "std"):
        if np.asarray(gate[name]).shape != (n_genes,):
            raise ScadvInputError("the stored realism gate does not match the model genes; "
                                  "retrain the detector with scadv.tl.meta_detect.")


def violations(gate: Mapping[str, Any], x: np.ndarray, *, missing: np.ndarray | None = None,
               lattice: bool | None = None, batch_size: int = 2048) -> np.ndarray:
    """Per cell (row of the model input ``x``), the number of model genes holding a value no
    measured cell can have. ``missing``: model genes the data lacks (not checked);
    ``lattice``: override the stored choice of checking whole counts."""
    x = np.asarray(x)
    n, g = x.shape
    _check(gate, g)
    check_zero = bool(np.asarray(gate["check_zero"]))
    check_lattice = bool(np.asarray(gate["check_lattice"])) if lattice is None else lattice
    out = np.zeros(n, dtype=np.int64)
    if not (check_zero or check_lattice):
        return out
    zero = np.asarray(gate["zero_level"], dtype=np.float64)
    mean = np.asarray(gate["mean"], dtype=np.float64)
    std = np.asarray(gate["std"], dtype=np.float64)
    max_value = float(gate["max_value"])
    skip = np.zeros(g, dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    lower = np.maximum(zero, -max_value) if max_value > 0 else zero
    for lo in range(0, n, batch_size):
        xb = np.asarray(x[lo:lo + batch_size], dtype=np.float64)
        checked = ~skip[None, :] & (xb != 0.0)  # z = 0 exactly: a gene filled with its mean
        if max_value > 0:
            checked &= np.abs(xb) < max_value - Z_TOL
        bad = np.zeros(xb.shape, dtype=bool)
        if check_zero:
            # below the lowest value a measured cell can hold (its zero level, or the lower
            # clip when the zero level lies below it) or beyond the upper clip: impossible,
            # however far out (an aberrant value far past the clip included)
            outside = xb < lower - Z_TOL
            if max_value > 0:
                outside |= xb > max_value + Z_TOL
            bad |= ~skip[None, :] & (xb != 0.0) & outside
        if check_lattice:
            bad |= _off_lattice(xb, checked & (xb > zero + Z_TOL), mean, std)
        out[lo:lo + batch_size] = bad.sum(axis=1)
    return out


def _off_lattice(x: np.ndarray, expressed: np.ndarray, mean: np.ndarray, std: np.ndarray
                 ) -> np.ndarray:
    """Expressed genes whose implied count is not whole, for the best per-cell scale.

    Candidate scales, largest first: the smallest implied level divided by 1 … ``MAX_K``, and
    the smallest gap between two distinct levels divided by 1 … 3 (deep cells whose counts are
    all large still have neighbouring counts one apart). The first that puts all but
    ``K_SLACK`` (at least one) of the cell's expressed genes on whole numbers (after refining
    it by least squares on the rounded counts) is the cell's scale."""
    # = count · s (values not checked are left out: one far past the clip would overflow)
    level = np.where(expressed, np.expm1(np.where(expressed, x, 0.0) * std + mean), np.nan)
    smallest = np.nanmin(np.where(expressed, level, np.inf), axis=1)
    ok_row = np.isfinite(smallest) & (smallest > 0)
    smallest = np.where(ok_row, smallest, 1.0)
    ordered = np.sort(level, axis=1)  # NaN (not expressed) last
    gaps = np.diff(ordered, axis=1)
    gaps = np.where(gaps > 1e-4 * ordered[:, 1:], gaps, np.inf)
    gap = np.min(gaps, axis=1, initial=np.inf)
    gap = np.where(np.isfinite(gap), gap, smallest)
    scales = np.column_stack([smallest / k for k in range(1, MAX_K + 1)]
                             + [gap / j for j in range(1, 4)])
    n_expr = expressed.sum(axis=1)
    best = np.zeros(x.shape, dtype=bool)
    chosen = np.zeros(len(x), dtype=bool)
    first = None
    for i in np.argsort(-scales, axis=1, kind="stable").T:  # per row, largest scale first
        rows = np.flatnonzero(~chosen)
        if not len(rows):
            break
        scale = scales[rows, i[rows]]
        whole = np.where(expressed[rows], np.rint(level[rows] / scale[:, None]), 0.0)
        # refined by least squares on the rounded counts (a candidate taken from one or two
        # levels carries their float32 rounding into every large count)
        fit = (np.nansum(level[rows] * whole, axis=1)
               / np.maximum((whole * whole).sum(axis=1), 1.0))
        scale = np.where(fit > 0, fit, scale)
        counts = level[rows] / scale[:, None]
        off = expressed[rows] & (np.abs(counts - np.rint(counts))
                                 > COUNT_TOL + COUNT_RTOL * np.abs(counts))
        if first is None:
            first = np.zeros(x.shape, dtype=bool)
            first[rows] = off
        take = off.sum(axis=1) <= np.maximum(1.0, K_SLACK * n_expr[rows])
        best[rows[take]] = off[take]
        chosen[rows[take]] = True
    if first is not None:
        best[~chosen] = first[~chosen]  # no scale fits: report the count at the largest scale
    return best
