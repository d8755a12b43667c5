"""Whole chains: prepare → train → attack → save → reload → predict."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scadv
from tests.conftest import perturbed


def _chain(adata: ad.AnnData, label_key: str) -> ad.AnnData:
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, label_key, progress=False)
    scadv.tl.pgd(adata, progress=False)
    return adata


def test_pbmc68k_reduced_chain(tmp_path):
    a = _chain(scadv.datasets.pbmc68k_reduced(), "bulk_labels")
    test = a.uns["scadv"]["classifier"]["metrics"]["test"]
    assert test["accuracy"] > 0.75  # FACS bulk labels; measured 0.87 at seed 42
    flips = a.uns["scadv"]["pgd"]["flip_rate"]
    assert flips[-1] > 0.25 and np.all(np.diff(flips) > 0)
    a.write_h5ad(tmp_path / "p68k.h5ad")
    back = ad.read_h5ad(tmp_path / "p68k.h5ad")
    scadv.tl.predict(back, key_added="again")
    np.testing.assert_array_equal(back.obsm["scadv_again_proba"], a.obsm["scadv_proba"])


@pytest.mark.slow
def test_pbmc3k_chain_is_deterministic(pbmc3k_raw):
    first = _chain(pbmc3k_raw.copy(), "cell_type")
    second = _chain(pbmc3k_raw.copy(), "cell_type")
    np.testing.assert_array_equal(first.obs["scadv_split"], second.obs["scadv_split"])
    np.testing.assert_array_equal(first.obsm["scadv_proba"], second.obsm["scadv_proba"])
    for eps in (0.05, 0.1, 0.15):
        layer = f"scadv_pgd_eps{eps:g}"
        np.testing.assert_array_equal(perturbed(first, layer), perturbed(second, layer))


def test_provenance_of_the_whole_session(small_trained, tmp_path):
    scadv.tl.pgd(small_trained, eps=0.2, cells="all", progress=False)
    prov = small_trained.uns["scadv"]["provenance"]
    assert "torch" in prov["session_info"] and "scanpy" in prov["session_info"]
    assert prov["versions"]["scadv"] == scadv.__version__
    steps = list(prov["steps"])
    assert steps[0].startswith("prepare") and steps[-1].startswith("pgd")
    assert any(s.startswith("classifier") for s in steps)
    small_trained.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert list(back.uns["scadv"]["provenance"]["steps"]) == steps
    params = back.uns["scadv"]["pgd"]["provenance"]["params"]
    assert float(np.asarray(params["eps"])) == 0.2 and params["cells"] == "all"
