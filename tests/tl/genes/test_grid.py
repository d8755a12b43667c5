"""scadv.tl.grid and scadv.tl.random_walk find the known smallest combination."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, make_model_space, snapshot, two_gene_rule


def test_grid_finds_the_two_gene_answer(tmp_path):
    a = make_model_space()
    scadv.tl.grid(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                  genes=list(a.var_names), add_layer=True, add_obs=True, progress=False)
    rec = a.uns["scadv"]["grid"]
    assert rec["found"]
    assert rec["smallest_size"] == 2
    table = rec["table"]
    assert list(table["genes"]) == ["g0;g1"]
    assert list(table["modifications"]) == ["perc99;perc99"]
    assert table["new_label"].iloc[0] == "B"
    # sizes 1 and 2 were searched (8 genes × 2 modifications, then pairs), not the rest
    assert rec["n_combinations_evaluated"] == 16 + 28 * 4
    mask = (a.obs["cluster"] == "A").to_numpy()
    assert (a.obs.loc[mask, "scadv_grid_pred"] == "B").all()
    assert a.uns["scadv"]["perturbations"]["scadv_grid"]["space"] == "var"  # a's own matrix
    np.testing.assert_allclose(scadv.get.perturbed(a, "scadv_grid", cells=mask)[:, :2], 1.0)
    np.testing.assert_array_equal(scadv.get.perturbed(a, "scadv_grid", cells=~mask), a.X[~mask])
    a.write_h5ad(tmp_path / "g.h5ad")
    assert ad.read_h5ad(tmp_path / "g.h5ad").uns["scadv"]["grid"]["table"].equals(table)


def test_random_walk_finds_the_two_gene_answer():
    a = make_model_space(n_genes=12)
    scadv.tl.random_walk(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                         genes=list(a.var_names), modification=["perc1", "perc99", "random"],
                         walk_length=30, seed=1, progress=False)
    rec = a.uns["scadv"]["random_walk"]
    assert rec["found"]
    assert rec["best_size"] == 2
    assert list(rec["best_genes"]) == ["g0", "g1"]
    assert list(rec["best_modifications"]) == ["perc99", "perc99"]
    assert rec["table"]["size"].is_monotonic_decreasing
    again = a.copy()
    scadv.tl.random_walk(again, cluster_key="cluster", target="A", classifier=two_gene_rule,
                         genes=list(a.var_names), modification=["perc1", "perc99", "random"],
                         walk_length=30, seed=1, progress=False)
    assert again.uns["scadv"]["random_walk"]["table"].equals(rec["table"])


def test_no_combination_found_is_reported_not_raised():
    a = make_model_space()
    scadv.tl.grid(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                  genes=["g0", "g2", "g3"], progress=False)
    rec = a.uns["scadv"]["grid"]
    assert not rec["found"]
    assert rec["smallest_size"] == 0
    assert len(rec["table"]) == 0
    assert rec["n_combinations_evaluated"] == rec["n_combinations_total"] == 3**3 - 1


def test_explosions_are_refused_with_their_size():
    a = make_model_space(n_genes=30)
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match=r"is 205,891,132,094,648 combinations"):
        scadv.tl.grid(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                      genes=list(a.var_names))
    with pytest.raises(ScadvInputError, match="genes=\\["):
        scadv.tl.grid(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                      genes=None)
    with pytest.raises(ScadvInputError, match=r"would classify 20,000,000 cell variants"):
        scadv.tl.random_walk(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                             genes=list(a.var_names), first_batch=1000, walk_length=999,
                             proposals=1000, max_rows=1000)
    assert_unchanged(a, before)
    scadv.tl.grid(a, cluster_key="cluster", target="A", classifier=two_gene_rule,
                  genes=list(a.var_names), max_size=2, progress=False)
    assert a.uns["scadv"]["grid"]["smallest_size"] == 2
