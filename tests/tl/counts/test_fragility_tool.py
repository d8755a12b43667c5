"""``scadv.tl.fragility``: the smallest ε per cell, written to obs, next to the UMIs needed."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy.stats import spearmanr

import scadv
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, snapshot


def test_minimal_eps_flips_and_a_bit_less_does_not(small_trained, tmp_path):
    a = small_trained
    scadv.tl.fragility(a, tol=0.02, progress=False)
    rec = a.uns["scadv"]["fragility"]
    eps = a.obs["scadv_min_eps"].to_numpy()
    test = (a.obs["scadv_split"] == "test").to_numpy()
    assert np.isnan(eps[~test]).all() and np.isfinite(eps[test]).all()
    assert rec["median_min_eps"] == pytest.approx(np.median(eps[test]))
    # PGD at the cell's own ε flips it; at half of it the default PGD flips far fewer cells
    idx = np.flatnonzero(test)
    scadv.tl.pgd(a, eps=float(np.median(eps[test])), key_added="at_median", progress=False)
    flipped = (a.obs[f"scadv_at_median_eps{np.median(eps[test]):g}_flipped"].astype(str)
               == "True").to_numpy()[idx]
    assert flipped[eps[idx] <= np.median(eps[test]) * 0.9].mean() >= 0.8
    assert flipped[eps[idx] >= np.median(eps[test]) * 1.1].mean() <= 0.2
    classes = list(rec["classes"])
    labels = a.obs["cell_type"].astype(str).to_numpy()[idx]
    for c, med in zip(classes, rec["median_min_eps_per_class"], strict=True):
        assert med == pytest.approx(np.median(eps[idx][labels == c]))
    a.write_h5ad(tmp_path / "f.h5ad")
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "f.h5ad").obs["scadv_min_eps"], eps)


def test_fragility_ranks_cells_like_the_count_attack(small_trained):
    a = small_trained
    scadv.tl.fragility(a, cells="all", progress=False)
    scadv.tl.count_attack(a, cells="all", budgets=(1, 2, 5, 10, 20, 50), beam=1, top_k=16,
                          progress=False)
    eps, umis = a.obs["scadv_min_eps"].to_numpy(), a.obs["scadv_min_umis"].to_numpy()
    ok = np.isfinite(eps) & np.isfinite(umis)
    assert ok.mean() > 0.9
    assert spearmanr(eps[ok], umis[ok])[0] > 0.5


def test_targeted_and_errors(small_trained):
    a = small_trained
    before = snapshot(a)
    for kwargs, match in (({"eps_min": 1.0, "eps_max": 0.5}, "eps_min < eps_max"),
                          ({"tol": 1.5}, "tol"), ({"steps": 0}, "steps"),
                          ({"target": "nope"}, "not a class")):
        with pytest.raises(ScadvInputError, match=match):
            scadv.tl.fragility(a, progress=False, **kwargs)
    assert_unchanged(a, before)
    some = np.zeros(a.n_obs, dtype=bool)
    some[::4] = True  # a quarter of all cells: every type, train and test
    scadv.tl.fragility(a, target="type2", cells=some, key_added="to2", progress=False)
    eps = a.obs["scadv_to2_min_eps"].to_numpy()
    pred = a.obs["scadv_pred"].astype(str).to_numpy()
    assert np.isnan(eps[~some]).all() and (pred[some] == "type2").any()
    assert (eps[some & (pred == "type2")] == 0).all()
    assert (eps[some & (pred != "type2")] > 0).all()
