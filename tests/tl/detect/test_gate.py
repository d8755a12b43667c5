"""The realism gate: measured cells pass whatever their depth; model-space edits do not."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scadv import _recipe as R
from scadv.tl._detect import _gate as G
from tests.conftest import model_x


def _recipe(a):
    return a.uns["scadv"]["classifier"]["prepare"]


def _from_counts(counts, recipe, genes, names):
    counts = sparse.csr_matrix(counts, dtype=np.float32)
    lib = np.asarray(counts.sum(axis=1)).ravel()
    cols = [list(names).index(g) for g in genes]
    return R.lognorm_to_model(R.lognormalize(counts[:, cols], target_sum=float(
        recipe["target_sum"]), library_size=lib), recipe)


def test_measured_cells_pass_at_any_depth(small_trained):
    a = small_trained
    recipe = _recipe(a)
    gate = G.gate_arrays(recipe)
    assert (G.violations(gate, model_x(a)) == 0).all()
    rng = np.random.default_rng(0)
    counts = sparse.csr_matrix(a.X)
    genes = np.asarray(recipe["genes"]).astype(str)
    for depth in (0.25, 2.0, 8.0, 50.0):  # shallower and far deeper than the reference
        c = counts.copy()
        c.data = (rng.binomial(c.data.astype(np.int64), depth) if depth < 1
                  else rng.poisson(c.data * depth)).astype(np.float32)
        c.eliminate_zeros()
        keep = np.asarray(c.sum(axis=1)).ravel() > 0
        x = _from_counts(c[keep], recipe, genes, a.var_names)
        assert (G.violations(gate, x) == 0).all(), depth
    # a cell whose smallest model-gene count is 2 or 3 (no count of one): still on the lattice
    c = counts.toarray()[:20] * 3
    assert (G.violations(gate, _from_counts(c, recipe, genes, a.var_names)) == 0).all()


def test_model_space_edits_leave_the_lattice(small_trained):
    a = small_trained
    gate = G.gate_arrays(_recipe(a))
    x = model_x(a)
    zero = np.asarray(gate["zero_level"])
    expressed = x > zero + 1e-3
    rng = np.random.default_rng(1)
    moved = x + np.where(expressed, rng.uniform(-0.3, 0.3, x.shape), 0.0).astype(np.float32)
    assert (G.violations(gate, moved) > 10).all()  # a data-respecting PGD-like edit
    below = x.copy()
    below[:, 0] = zero[0] - 0.5
    assert (G.violations(gate, below) >= 1).all()  # below zero expression
    one = x.copy()  # one expressed gene per cell set to an arbitrary value in range
    rows = np.arange(len(x))
    cols = np.array([rng.choice(np.flatnonzero(e)) for e in expressed])
    one[rows, cols] = one[rows, cols] + rng.uniform(0.05, 0.25, len(x)).astype(np.float32)
    # (a shift can land on a whole count by chance, e.g. double it: not every cell is caught)
    assert (G.violations(gate, one) >= 1).mean() > 0.9


def test_missing_genes_and_clipped_values_are_not_checked(small_trained):
    a = small_trained
    gate = G.gate_arrays(_recipe(a))
    x = model_x(a)
    x[:, :10] = 0.0  # the training mean, as missing_genes='mean' fills it
    assert (G.violations(gate, x) == 0).all()
    y = model_x(a)
    y[:, 10:12] += 0.41
    missing = np.zeros(x.shape[1], dtype=bool)
    missing[10:12] = True
    assert (G.violations(gate, y, missing=missing) == 0).all()
    z = model_x(a)
    z[:, 3] = float(gate["max_value"])  # at the clip: its count is unknown
    assert (G.violations(gate, z) == 0).all()


def test_values_beyond_the_clip_are_impossible(small_trained):
    """adverSCarial's aberrant values (±10,000 × a gene's largest value) lie far past the clip:
    no measured cell holds them, so the gate counts them, as it counts a value below the clip
    for a gene whose zero level is above it."""
    a = small_trained
    gate = G.gate_arrays(_recipe(a))
    mv = float(gate["max_value"])
    zero = np.asarray(gate["zero_level"])
    j = int(np.argmax(zero > -mv))  # a gene whose zero level lies above the lower clip
    for value in (1e4 * mv, mv + 0.01, -1e4 * mv, -mv):
        x = model_x(a)
        x[:, j] = value
        assert (G.violations(gate, x) >= 1).all(), value
    x = model_x(a)
    x[:, j] = mv  # exactly at the upper clip: possible
    assert (G.violations(gate, x) == 0).all()


def test_scaled_recipes_have_no_count_checks(small_trained):
    recipe = dict(_recipe(small_trained))
    recipe["input_kind"] = "scaled"
    gate = G.gate_arrays(recipe)
    assert not gate["check_lattice"] and not gate["check_zero"]
    x = model_x(small_trained) + 0.3
    assert (G.violations(gate, x) == 0).all()
