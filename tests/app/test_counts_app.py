"""The count attack in the app's attack registry."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dash")

from scadv._errors import ScadvInputError
from scadv.app import ATTACKS, Session


def test_count_attack_on_one_cell(small_trained):
    assert "counts" in ATTACKS
    s = Session(adata=small_trained, name="small")
    cell = s.test_cells()[0]
    res = s.attack("counts", cell, {"umis": 20, "beam": 1})
    assert res.pred_before == s.adata.obs.loc[cell, "scadv_pred"]
    g = res.genes
    assert {"counts_before", "counts_after", "umis"} <= set(g.columns)
    assert np.abs(g["umis"]).sum() <= 20 and (g["counts_after"] >= 0).all()
    np.testing.assert_array_equal(g["counts_after"] - g["counts_before"], g["umis"])
    assert res.n_genes_moved == int((g["umis"] != 0).sum())
    assert (np.abs(g["umis"].to_numpy()[:res.n_genes_moved]) > 0).all()  # edited genes first
    if res.flipped:
        assert "fewest found" in res.attack
    assert "app" not in s.adata.uns["scadv"]  # on a copy
    with pytest.raises(ScadvInputError, match="whole number"):
        s.attack("counts", cell, {"umis": 2.5})


def test_count_attack_without_counts_says_so(small_trained):
    import scanpy as sc

    a = small_trained
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    s = Session(adata=a, name="lognorm")
    with pytest.raises(ScadvInputError, match="raw UMI counts"):
        s.attack("counts", s.test_cells()[0], {"umis": 5})
