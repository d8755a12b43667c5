"""Gene modifications: statistics over all cells, values for the target cluster only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scadv._errors import ScadvInputError
from scadv.tl._genes import _matrix as MX
from scadv.tl._genes import _modifications as MOD


@pytest.fixture
def columns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    cluster = np.zeros(200, dtype=bool)
    cluster[:30] = True
    x[cluster] += 3.0  # the cluster sits high: statistics must come from all cells
    return x, cluster


def _values(spec, x, cluster, seed=0):
    return MOD.parse(spec).values(x, cluster, np.random.default_rng(seed))


def test_percentiles_over_all_cells(columns):
    x, cluster = columns
    for spec, q in (("perc1", 1), ("perc99", 99), ("perc50", 50)):
        out = _values(spec, x, cluster)
        assert out.shape == (30, 5)
        np.testing.assert_allclose(out, np.broadcast_to(np.percentile(x, q, axis=0), out.shape),
                                   rtol=1e-6)


def test_fixed_aberrant_and_random(columns):
    x, cluster = columns
    assert (_values(3, x, cluster) == 3).all()
    assert (_values("fixed=-2.5", x, cluster) == -2.5).all()
    top = np.abs(x).max(axis=0)
    np.testing.assert_allclose(_values("positive_aberrant", x, cluster)[0], 1e4 * top, rtol=1e-6)
    np.testing.assert_allclose(_values("negative_aberrant", x, cluster)[0], -1e4 * top, rtol=1e-6)
    r1, r2 = _values("random", x, cluster, seed=1), _values("random", x, cluster, seed=1)
    np.testing.assert_array_equal(r1, r2)  # seeded
    assert (r1 >= x.min(axis=0)).all()
    assert (r1 <= x.max(axis=0)).all()
    assert not np.array_equal(r1, _values("random", x, cluster, seed=2))


def test_decile_shift_moves_ranks(columns):
    x, cluster = columns
    up = _values("decile+1", x, cluster)
    down = _values("decile-2", x, cluster)
    n = len(x)
    for j in range(x.shape[1]):
        ordered = np.sort(x[:, j])
        rank = np.searchsorted(ordered, x[cluster, j], side="left")
        np.testing.assert_array_equal(up[:, j], ordered[np.minimum(rank + n // 10, n - 1)])
        np.testing.assert_array_equal(down[:, j], ordered[np.maximum(rank - 2 * n // 10, 0)])


def test_user_function_gets_cluster_and_all_values(columns):
    x, cluster = columns

    def to_global_median(cluster_values, all_values):
        assert cluster_values.shape == (30, 5)
        assert all_values.shape == (200, 5)
        return np.median(all_values, axis=0)

    out = _values(to_global_median, x, cluster)
    np.testing.assert_allclose(out[0], np.median(x, axis=0))
    assert MOD.parse(to_global_median).name == "fn:to_global_median"
    with pytest.raises(ScadvInputError, match="does not broadcast"):
        _values(lambda c, a: np.zeros(7), x, cluster)
    with pytest.raises(ScadvInputError, match="NaN"):
        _values(lambda c, a: c * np.nan, x, cluster)


def test_parse_errors_name_the_choices():
    for bad in ("perc101", "decile", "banana", None, True, float("inf"), "fixed=x"):
        with pytest.raises(ScadvInputError):
            MOD.parse(bad)
    with pytest.raises(ScadvInputError, match="repeated"):
        MOD.parse_many(["perc1", "perc1"])
    assert [m.name for m in MOD.parse_many(("perc1", 2))] == ["perc1", "fixed=2"]


def test_new_values_on_sparse_matrix_match_dense(columns):
    x, cluster = columns
    x = np.where(x > 1, x, 0).astype(np.float32)
    mods = MOD.parse_many(["perc1", "perc99", "decile+3"])
    cols = np.array([4, 0, 2])
    dense = MOD.new_values(mods, MX.from_matrix(x, "x"), cols, cluster,
                           np.random.default_rng(0), chunk=2)
    sp = MOD.new_values(mods, MX.from_matrix(sparse.csr_matrix(x), "x"), cols, cluster,
                        np.random.default_rng(0))
    np.testing.assert_array_equal(dense, sp)
    assert dense.shape == (3, 30, 3)
    # a background other than zero (the model input's zero level) gives the same values
    shifted = MX.AttackedMatrix(lambda idx: x[idx] - 2.0, len(x), x.shape[1],
                                np.full(x.shape[1], -2.0, np.float32), "shifted")
    np.testing.assert_allclose(
        MOD.new_values(mods, shifted, cols, cluster, np.random.default_rng(0)), dense - 2.0,
        atol=1e-6)


@pytest.mark.parametrize("sparse_input", [False, True])
def test_sorted_gene_values_give_the_dense_columns_numbers(columns, sparse_input):
    """The built-in modifications read each gene's sorted values (no dense columns): exactly the
    numbers the dense columns give, random draws included, with ties and values both below and
    above the background."""
    x, cluster = columns
    x = np.where(np.abs(x) > 0.8, x, 0).astype(np.float32)
    x[::7, 1] = 1.5  # ties
    mat = MX.from_matrix(sparse.csr_matrix(x) if sparse_input else x, "x")
    cols = np.array([4, 0, 2, 1])
    specs = ["perc1", "perc99", "perc37.5", "perc0", "perc100", "decile+3", "decile-2",
             "positive_aberrant", "negative_aberrant", "random", "fixed=2"]
    got = MOD.new_values(MOD.parse_many(specs), mat, cols, cluster, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    for i, spec in enumerate(specs):
        want = MOD.parse(spec).values(x[:, cols], cluster, rng)
        np.testing.assert_array_equal(got[i], want, err_msg=spec)
    stats = mat.gene_values()
    assert stats.nbytes() < x.nbytes  # only the non-background values, without their cells
    np.testing.assert_array_equal(stats.percentile(cols, 1), np.percentile(x[:, cols], 1, 0))


def test_gene_values_of_a_matrix_with_nan_are_refused():
    x = np.ones((10, 3), dtype=np.float32)
    x[4, 1] = np.nan
    with pytest.raises(ScadvInputError, match="NaN"):
        MX.from_matrix(x, "x").gene_values()
