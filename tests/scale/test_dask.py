"""Cell-parallel work on a dask.distributed cluster gives the in-process results, bit for bit.

A 2-worker ``LocalCluster`` (worker processes) computes predict, pgd, fgsm, the meta-detector's
scores and a per-cluster gene scan of an AnnData whose ``X`` is a dask array; the tasks use the
same blocks of cells and seeds as the in-process loop. Small blocks make several tasks.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scadv
from scadv import _parallel as PAR
from scadv import _rows as RW
from scadv.tl._attacks import _attack as A

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc, distributed.Client(lc) as client:
        yield client


@pytest.fixture
def small_blocks(monkeypatch):
    """Several tasks even on small data: 50 cells per prediction / scoring batch, 40 per
    attack chunk."""
    monkeypatch.setattr(RW, "BATCH", 50)
    monkeypatch.setattr(A, "ATTACK_CHUNK", 40)


def _lazy(a: ad.AnnData) -> ad.AnnData:
    b = a.copy()
    b.X = da.from_array(a.X, chunks=(37, -1), asarray=False)
    return b


def _dense(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _same_results(a: ad.AnnData, b: ad.AnnData) -> None:
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert sorted(a.obsm) == sorted(b.obsm)
    for k in a.obsm:
        np.testing.assert_array_equal(_dense(a.obsm[k]), _dense(b.obsm[k]), err_msg=k)
    for name, ent in a.uns["scadv"].get("perturbations", {}).items():
        if "delta" in ent:
            np.testing.assert_array_equal(ent["delta"],
                                          b.uns["scadv"]["perturbations"][name]["delta"])


@pytest.mark.slow
def test_distributed_cluster_equals_in_process(small_meta, cluster, small_blocks):
    assert PAR.distributed_client() is cluster
    mem, lazy = small_meta, _lazy(small_meta)
    for a in (mem, lazy):
        scadv.tl.predict(a, progress=False)
        scadv.tl.pgd(a, eps=(0.2, 0.4), cells="all", key_added="p", progress=False)
        scadv.tl.pgd(a, eps=0.5, cells="all", keep_zeros=True, clip="observed",
                     random_start=True, key_added="real", progress=False)
        scadv.tl.fgsm(a, eps=0.3, cells="all", progress=False)
        scadv.tl.meta_score(a, layers=None, key_added="again", progress=False)
    assert RW.is_dask(lazy.X)
    _same_results(mem, lazy)
    # the stored perturbations read back the same, through the dask X
    cells = mem.obs["scadv_real_eps0.5_pred"].notna().to_numpy()
    np.testing.assert_array_equal(scadv.get.perturbed(lazy, "scadv_real_eps0.5", cells=cells),
                                  scadv.get.perturbed(mem, "scadv_real_eps0.5", cells=cells))


@pytest.mark.slow
def test_gene_scans_per_cluster_on_the_cluster(small_trained, cluster):
    mem, lazy = small_trained, _lazy(small_trained)
    genes = [str(g) for g in mem.uns["scadv"]["prepare"]["genes"][:20]]
    for a in (mem, lazy):
        scadv.tl.single_gene(a, cluster_key="cell_type", target=["type0", "type1", "type2"],
                             genes=genes, modification=("perc1", "perc99", "random"),
                             progress=False)
        scadv.tl.overview(a, cluster_key="cell_type", genes=genes, progress=False)
    for key in ("single_gene", "overview"):
        got, want = lazy.uns["scadv"][key], mem.uns["scadv"][key]
        pd.testing.assert_frame_equal(got["table"], want["table"])
        assert got["n_classifier_calls"] == want["n_classifier_calls"]
    pd.testing.assert_frame_equal(lazy.uns["scadv"]["single_gene"]["summary"],
                                  mem.uns["scadv"]["single_gene"]["summary"])


def test_dask_local_threads_and_the_training_attack(small_trained, small_blocks):
    """dask's local threads (the scheduler dask.config selects, even while a client exists)
    compute the same tasks; the meta-detector's training attack, a cell-parallel pass too,
    gives the same detector."""
    import dask

    mem, lazy = small_trained, _lazy(small_trained)
    with dask.config.set(scheduler="threads", num_workers=2):
        assert PAR.distributed_client() is None
        for a in (mem, lazy):
            scadv.tl.pgd(a, eps=(0.3, 0.6), cells="all", progress=False)
            scadv.tl.meta_detect(a, eps=(0.3, 0.6, 1.0), triplet_epochs=1, detector_epochs=2,
                                 progress=False)
    _same_results(mem, lazy)
    pd.testing.assert_frame_equal(lazy.uns["scadv"]["meta"]["table"],
                                  mem.uns["scadv"]["meta"]["table"])
