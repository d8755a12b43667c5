"""Every public ``scadv.tl`` function on data backed on disk and on a dask-backed ``X``.

Each function gives exactly the results it gives on the same data in memory (the matrix is
read a batch of cells at a time: ``read_h5ad(..., backed='r')``, or ``adata.X`` a dask array,
whose cell-parallel work then runs as dask tasks). Functions that hold a cell-proportional
dense matrix (a cluster's rows, the cells to attribute, every cell's input for clustering)
say how much memory that takes when it would not fit.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import scadv
from scadv import _rows as RW
from scadv._errors import ScadvInputError
from tests.conftest import make_counts

da = pytest.importorskip("dask.array")

GENES = 5  # gene-level attacks scan the first few model genes


def _genes(b: ad.AnnData) -> list[str]:
    return [str(g) for g in b.uns["scadv"]["prepare"]["genes"][:GENES]]


TL = scadv.tl
CALLS: dict[str, Callable[[ad.AnnData], Any]] = {
    "train_classifier": lambda b: TL.train_classifier(b, "cell_type", max_epochs=2,
                                                      key_added="m2", progress=False),
    "predict": lambda b: TL.predict(b, progress=False),
    "pgd": lambda b: TL.pgd(b, eps=0.3, key_added="p2", progress=False),
    "fgsm": lambda b: TL.fgsm(b, eps=0.3, key_added="f2", progress=False),
    "adversarial_train": lambda b: TL.adversarial_train(b, "cell_type", max_epochs=1,
                                                        key_added="adv", progress=False),
    "robust_accuracy": lambda b: TL.robust_accuracy(b, eps=(0.0, 0.1), progress=False),
    "meta_detect": lambda b: TL.meta_detect(b, eps=(0.3, 0.6, 1.0), triplet_epochs=1,
                                            detector_epochs=1, key_added="d2", progress=False),
    "meta_score": lambda b: TL.meta_score(b, progress=False),
    "meta_evaluate": lambda b: TL.meta_evaluate(b, progress=False),
    "benign_perturb": lambda b: TL.benign_perturb(b),
    "adaptive_pgd": lambda b: TL.adaptive_pgd(b, eps=0.3, progress=False),
    "adaptive_count_attack": lambda b: TL.adaptive_count_attack(b, detector=None, budget=10,
                                                                progress=False),
    "attribute": lambda b: TL.attribute(b, key_added="a2", progress=False),
    "attribution_stability": lambda b: TL.attribution_stability(b, n_repeats=1,
                                                                progress=False),
    "attribution_agreement": lambda b: TL.attribution_agreement(
        b, keys=["attr_integrated_gradients", "attr_saliency"]),
    "marker_overlap": lambda b: TL.marker_overlap(b, keys="attr_integrated_gradients"),
    "gene_set_enrichment": lambda b: TL.gene_set_enrichment(
        b, {"first": _genes(b), "other": [str(g) for g in
                                         b.uns["scadv"]["prepare"]["genes"][10:20]]},
        min_size=2, k=10),
    "score_attributions": lambda b: TL.score_attributions(
        b, keys="attr_integrated_gradients", truth={"type0": _genes(b)}, k=5),
    "single_gene": lambda b: TL.single_gene(b, cluster_key="cell_type", target="type0",
                                            genes=_genes(b), progress=False),
    "max_change": lambda b: TL.max_change(b, cluster_key="cell_type", target="type0",
                                          genes=_genes(b), progress=False),
    "cgd": lambda b: TL.cgd(b, cluster_key="cell_type", target="type0", progress=False),
    "grid": lambda b: TL.grid(b, cluster_key="cell_type", target="type0",
                              genes=_genes(b)[:2], progress=False),
    "random_walk": lambda b: TL.random_walk(b, cluster_key="cell_type", target="type0",
                                            genes=_genes(b), progress=False),
    "overview": lambda b: TL.overview(b, cluster_key="cell_type", genes=_genes(b),
                                      progress=False),
    "pseudo_labels": lambda b: TL.pseudo_labels(b, n_clusters=3, n_pcs=10),
    "add_model": lambda b: TL.add_model(
        b, scadv.models.from_record(b.uns["scadv"]["classifier"]), key_added="copy"),
    "count_attack": lambda b: TL.count_attack(b, budgets=(1, 3), key_added="c2",
                                              progress=False),
    "fragility": lambda b: TL.fragility(b, key_added="fr2", progress=False),
    "compare_models": lambda b: TL.compare_models(
        b, ["classifier"], eps=(0.3,), genes=_genes(b), n_boot=5, progress=False),
}
#: Functions that stream their cells: they work whatever the memory.
STREAMING = ("train_classifier", "predict", "pgd", "fgsm", "meta_score", "meta_evaluate",
             "benign_perturb", "adaptive_pgd", "adaptive_count_attack", "add_model",
             "count_attack", "fragility")
#: Functions that hold a cell-proportional dense matrix, and say so when it would not fit.
#: (meta_detect: the twin and PCA fits of the consistency detector hold the training cells.)
IN_MEMORY = ("meta_detect", "adversarial_train", "robust_accuracy", "attribute",
             "attribution_stability", "single_gene", "max_change", "cgd", "grid",
             "random_walk", "overview", "pseudo_labels", "compare_models")
#: Functions that read only stored results, never the matrix.
RECORDS_ONLY = ("attribution_agreement", "marker_overlap", "gene_set_enrichment",
                "score_attributions")


def test_every_public_function_is_audited():
    assert sorted(CALLS) == sorted(TL.__all__)
    assert sorted(STREAMING + IN_MEMORY + RECORDS_ONLY) == sorted(TL.__all__)


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    a = make_counts()
    scadv.pp.prepare(a, n_top_genes=100, progress=False)
    scadv.tl.train_classifier(a, "cell_type", max_epochs=15, progress=False)
    scadv.tl.pgd(a, eps=(0.3, 0.6), cells="all", progress=False)
    scadv.tl.meta_detect(a, eps=(0.3, 0.6, 1.0), triplet_epochs=2, detector_epochs=3,
                         progress=False)
    scadv.tl.attribute(a, progress=False)
    scadv.tl.attribute(a, method="saliency", progress=False)
    sc.tl.rank_genes_groups(a, "cell_type")
    path = tmp_path_factory.mktemp("inputs") / "small.h5ad"
    a.write_h5ad(path)
    return path


def _open(path, mode: str) -> ad.AnnData:
    if mode == "backed":
        return ad.read_h5ad(path, backed="r")
    b = ad.read_h5ad(path)
    if mode == "dask":
        b.X = da.from_array(b.X, chunks=(50, -1), asarray=False)
    return b


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Everything a function wrote, flattened (run times and provenance left out)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k in ("provenance", "seconds"):
                continue
            out.update(_flat(v, f"{prefix}/{k}"))
    elif isinstance(obj, pd.DataFrame):
        for c in obj.columns:
            out[f"{prefix}/{c}"] = obj[c].astype(str).to_numpy() if obj[c].dtype == object \
                else obj[c].to_numpy()
    elif sparse.issparse(obj):
        out[prefix] = obj.toarray()
    else:
        out[prefix] = obj
    return out


def _results(b: ad.AnnData) -> dict[str, Any]:
    res = _flat(dict(b.uns), "uns")
    res.update({f"obs/{c}": b.obs[c].astype(str).to_numpy() if b.obs[c].dtype.name in (
        "category", "object") else b.obs[c].to_numpy() for c in b.obs})
    res.update(_flat({k: b.obsm[k] for k in b.obsm}, "obsm"))
    return res


def _same(expected: dict[str, Any], got: dict[str, Any], what: str) -> None:
    assert sorted(got) == sorted(expected), what
    for key, value in expected.items():
        if isinstance(value, np.ndarray) or isinstance(got[key], np.ndarray):
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value),
                                          err_msg=f"{what}: {key}")
        else:
            assert got[key] == value or (value != value and got[key] != got[key]), (
                f"{what}: {key}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CALLS))
def test_backed_and_dask_input_give_the_in_memory_results(h5ad, name):
    call = CALLS[name]
    memory = _open(h5ad, "memory")
    call(memory)
    expected = _results(memory)
    backed = _open(h5ad, "backed")
    try:
        call(backed)
        _same(expected, _results(backed), f"{name} on backed data")
        assert backed.isbacked and not RW.in_memory(backed.X)
    finally:
        backed.file.close()
    lazy = _open(h5ad, "dask")
    call(lazy)
    _same(expected, _results(lazy), f"{name} on a dask-backed X")
    assert RW.is_dask(lazy.X)  # X stays lazy: never computed into memory whole


@pytest.mark.parametrize("name", IN_MEMORY)
def test_functions_that_need_memory_say_how_much(h5ad, name, monkeypatch):
    monkeypatch.setattr(RW, "physical_memory", lambda: 1000)
    backed = _open(h5ad, "backed")
    try:
        with pytest.raises(ScadvInputError, match=r"in memory: [0-9.]+ KiB|"
                                                  r"need [0-9.]+ KiB in memory"):
            CALLS[name](backed)
    finally:
        backed.file.close()


@pytest.mark.parametrize("name", STREAMING)
def test_streaming_functions_work_whatever_the_memory(h5ad, name, monkeypatch):
    monkeypatch.setattr(RW, "physical_memory", lambda: 1000)
    backed = _open(h5ad, "backed")
    try:
        CALLS[name](backed)
    finally:
        backed.file.close()


def _file_state(path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f["X"][k]).copy() for k in ("data", "indices", "indptr")} | {
            "var": sorted(f["var"].keys()), "layers": sorted(f["layers"].keys())}


def test_prepare_on_backed_data_leaves_the_file_alone(tmp_path):
    a = make_counts(seed=2)
    a.layers["raw_copy"] = a.X.copy()
    path = tmp_path / "c.h5ad"
    a.write_h5ad(path)
    before = _file_state(path)
    backed = ad.read_h5ad(path, backed="r+")
    var_before = backed.var.copy()
    scadv.pp.prepare(backed, n_top_genes=50, progress=False)
    pd.testing.assert_frame_equal(backed.var, var_before)
    assert not RW.in_memory(backed.X) and backed.shape == a.shape
    backed.file.close()
    after = _file_state(path)
    for key, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(value), err_msg=key)


def test_compact_perturbations_round_trip_and_read_backed(h5ad, tmp_path):
    memory = _open(h5ad, "memory")
    cells = memory.obs["scadv_pgd_eps0.3_pred"].notna().to_numpy()
    expected = scadv.get.perturbed(memory, "scadv_pgd_eps0.3", cells=cells)
    backed = _open(h5ad, "backed")
    try:
        got = scadv.get.perturbed(backed, "scadv_pgd_eps0.3", cells=cells)
        np.testing.assert_array_equal(got, expected)
    finally:
        backed.file.close()


def test_predict_and_meta_score_read_only_the_records_of_a_file(h5ad, tmp_path):
    # a copy whose matrix is not readable any more: only uns['scadv'] may be opened
    records_only = tmp_path / "records_only.h5ad"
    shutil.copy(h5ad, records_only)
    with h5py.File(records_only, "a") as f:
        f["X"].attrs["encoding-type"] = "unreadable"
        f["obs"].attrs["encoding-type"] = "unreadable"
    with pytest.raises(Exception):  # noqa: B017, PT011 - anndata cannot read it whole
        ad.read_h5ad(records_only)
    reference = ad.read_h5ad(h5ad)
    got, want = make_counts(seed=5), make_counts(seed=5)
    scadv.tl.predict(got, source=records_only, progress=False)
    scadv.tl.predict(want, source=reference, progress=False)
    np.testing.assert_array_equal(got.obsm["scadv_proba"], want.obsm["scadv_proba"])
    got, want = make_counts(seed=5), make_counts(seed=5)
    scadv.tl.meta_score(got, source=str(records_only), progress=False)
    scadv.tl.meta_score(want, source=reference, progress=False)
    np.testing.assert_array_equal(got.obs["scadv_meta_score"], want.obs["scadv_meta_score"])
    assert set(got.uns["scadv"]) >= {"meta", "classifier"}
    with pytest.raises(ScadvInputError, match=r"no scadv classifier 'other'.*\['classifier'\]"):
        scadv.tl.predict(make_counts(), source=records_only, model="other", progress=False)
    with pytest.raises(ScadvInputError, match="does not exist"):
        scadv.tl.predict(make_counts(), source=tmp_path / "nowhere.h5ad", progress=False)
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(ScadvInputError, match="cannot read"):
        scadv.tl.predict(make_counts(), source=tmp_path / "text.h5ad", progress=False)
