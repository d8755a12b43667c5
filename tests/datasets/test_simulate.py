"""scadv.datasets.simulate: a hierarchical topic model with known markers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError

SMALL = {"n_cells": 400, "n_genes": 400, "n_types": 4, "markers_per_type": 20,
         "genes_per_lineage": 20, "genes_per_activity_program": 20}


def test_counts_truth_and_determinism(tmp_path):
    a = scadv.datasets.simulate(**SMALL, seed=3)
    b = scadv.datasets.simulate(**SMALL, seed=3)
    c = scadv.datasets.simulate(**SMALL, seed=4)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    assert not np.array_equal(a.X.toarray(), c.X.toarray())
    x = a.X.toarray()
    assert (x >= 0).all() and (x == np.round(x)).all()
    assert a.obs["cell_type"].nunique() == 4 and a.obs["lineage"].nunique() == 2
    truth = a.uns["scadv"]["simulation"]
    markers = truth["markers"]
    assert markers.shape == (4, 400) and (markers.sum(axis=1) == 20).all()
    assert not (markers.sum(axis=0) > 1).any()  # each marker defines one type
    # var records the same truth
    marker_of = a.var["scadv_sim_marker_of"].astype(object)
    for t, name in enumerate(truth["classes"]):
        np.testing.assert_array_equal(marker_of == name, markers[t])
    # markers are over-expressed in their own type, by the fold the model implies (at this
    # small size the background program spreads over few genes, so the fold is ~1.6; at the
    # defaults it is ~3-4)
    expected_mean = truth["alpha"] @ truth["phi"]  # types × genes
    codes = a.obs["cell_type"].cat.codes.to_numpy()
    for t, name in enumerate(truth["classes"]):
        own = (a.obs["cell_type"] == name).to_numpy()
        fold = x[own][:, markers[t]].mean() / x[~own][:, markers[t]].mean()
        expected = expected_mean[t, markers[t]].sum() / np.mean(
            expected_mean[codes[~own]][:, markers[t]].sum(axis=1))
        assert fold > 1.4
        assert fold == pytest.approx(expected, rel=0.15)
    # theta rows are mixtures
    np.testing.assert_allclose(a.obsm["scadv_sim_theta"].sum(axis=1), 1, atol=1e-5)
    a.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    np.testing.assert_array_equal(back.uns["scadv"]["simulation"]["markers"], markers)


def test_library_sizes_and_overdispersion():
    a = scadv.datasets.simulate(n_cells=2000, n_genes=300, n_types=2, n_lineages=1,
                                markers_per_type=10, genes_per_lineage=10,
                                n_activity_programs=0, library_size=2000, library_sd=0.5,
                                dispersion=0.5, seed=0)
    x = a.X.toarray()
    lib = x.sum(axis=1)
    assert 1500 < np.median(lib) < 2600
    assert 0.4 < np.std(np.log(lib)) < 0.6  # log-normal spread
    # background genes within one type: variance well above the Poisson mean
    bg = (a.var["scadv_sim_program"] == "background").to_numpy()
    cells = (a.obs["cell_type"] == "type0").to_numpy()
    norm = x[cells][:, bg] / lib[cells, None] * 2000
    mean, var = norm.mean(axis=0), norm.var(axis=0)
    high = mean > 5
    assert (var[high] / mean[high]).mean() > 2
    poisson = scadv.datasets.simulate(n_cells=2000, n_genes=300, n_types=2, n_lineages=1,
                                      markers_per_type=10, genes_per_lineage=10,
                                      n_activity_programs=0, library_sd=0.0, dispersion=0.0,
                                      concentration=1e6, seed=0)
    xp = poisson.X.toarray()[(poisson.obs["cell_type"] == "type0").to_numpy()]
    m, v = xp.mean(axis=0), xp.var(axis=0)
    assert 0.8 < (v[m > 5] / m[m > 5]).mean() < 1.3


def test_prepare_works_on_it():
    a = scadv.datasets.simulate(**SMALL, seed=0)
    scadv.pp.prepare(a, n_top_genes=200)
    assert a.uns["scadv"]["prepare"]["input_kind"] == "counts"
    assert "simulation" in a.uns["scadv"]
    # most true markers are highly variable, so they survive gene selection
    assert a.var["scadv_sim_marker_of"].notna().sum() >= 0.75 * 4 * 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_types": 1}, "n_types must be ≥ 2"),
        ({"n_genes": 50}, "the programs need"),
        ({"type_weight": 0.5, "lineage_weight": 0.5}, "sum below 1"),
        ({"dispersion": -1}, "dispersion"),
        ({"type_proportions": [1, 2]}, "type_proportions"),
        ({"n_lineages": 9}, "n_lineages"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ScadvInputError, match=message):
        scadv.datasets.simulate(**{**SMALL, **kwargs})
