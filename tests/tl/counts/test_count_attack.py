"""``scadv.tl.count_attack``: what it writes, that it holds its promises, round trips, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import scadv
from scadv import _model as M
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, make_counts, snapshot

from . import _tiny

KEY = "count_attack"


def _name(b, key=KEY):
    return f"scadv_{key}_umis{b}"


def _model_counts(adata, model="classifier"):
    """Raw counts of the model genes (dense) and the library sizes over all genes."""
    genes = np.asarray(adata.uns["scadv"][model]["genes"]).astype(str)
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    return x[:, adata.var_names.get_indexer(genes)], x.sum(axis=1).astype(np.float64)


def _check_promises(adata, budgets, *, key=KEY, model="classifier", cap_add=3, cap_remove=3,
                    library=None, detected_only=False, genes=None):
    """Counts whole and ≥ 0, caps, budget, library range, gene limits, and the stored
    predictions are those of the rebuilt model input."""
    rec = adata.uns["scadv"][key]
    attacked = adata.obs[f"{_name(budgets[0], key)}_pred"].notna().to_numpy()
    idx = np.flatnonzero(attacked)
    c0, lib0 = _model_counts(adata, model)
    net = M.from_record(adata.uns["scadv"][model])
    min_umis = adata.obs[f"scadv_{key}_min_umis" if key != KEY else "scadv_min_umis"]
    m = min_umis.to_numpy()
    assert np.isnan(m[~attacked]).all() and not np.isnan(m[attacked]).any()
    for i, b in enumerate(budgets):
        name = _name(b, key)
        adv = scadv.get.perturbed(adata, name, cells=idx, space="counts").toarray()
        assert np.array_equal(adv, np.round(adv)) and adv.min() >= 0
        delta = adv - c0[idx]
        assert (delta <= cap_add).all() and (-delta <= cap_remove).all()
        assert (np.abs(delta).sum(axis=1) <= b).all()
        if detected_only:
            assert (delta[c0[idx] == 0] == 0).all()
        if genes is not None:
            assert (delta[:, ~genes] == 0).all()
        if library is not None:
            lib = lib0[idx] + delta.sum(axis=1)
            assert (lib >= np.minimum(library[0], lib0[idx])).all()
            assert (lib <= np.maximum(library[1], lib0[idx])).all()
        # what is stored rebuilds the model input the attack evaluated
        x = scadv.get.perturbed(adata, name, cells=idx)
        pred = M.infer(net, x, device=torch.device("cpu"))[1].argmax(axis=1)
        stored = adata.obs[f"{name}_pred"].cat.codes.to_numpy()[idx]
        np.testing.assert_array_equal(pred, stored)
        flipped = (adata.obs[f"{name}_flipped"].astype(str) == "True").to_numpy()[idx]
        clean = M.infer(net, scadv.get.model_input(adata, model=model, cells=idx),
                        device=torch.device("cpu"))[1].argmax(axis=1)
        np.testing.assert_array_equal(flipped, pred != clean)
        if rec["target"] == "None":
            # flipped within b UMIs exactly when the minimal count found is at most b
            np.testing.assert_array_equal(flipped, m[idx] <= b)
            assert (np.abs(delta).sum(axis=1)[flipped] == m[idx][flipped]).all()
        assert rec["flip_rate"][i] == pytest.approx(flipped.mean())
    assert rec["engine"]["disagreements"] == 0


def test_writes_every_result_and_keeps_its_promises(small_trained):
    a = small_trained
    before = a.X.copy()
    scadv.tl.count_attack(a, budgets=(1, 2, 5, 10), progress=False)
    assert (a.X != before).nnz == 0  # X is never touched
    rec = a.uns["scadv"][KEY]
    budgets = (1, 2, 5, 10)
    lib = tuple(rec["limits"]["library"])
    assert rec["limits"]["library_from"] == "reference cells (recipe)"
    assert lib == (a.obs["scadv_library_size"].min(), a.obs["scadv_library_size"].max())
    _check_promises(a, budgets, library=lib)
    assert set(scadv.get.perturbations(a).loc[[_name(b) for b in budgets], "space"]) == {"counts"}
    m = a.obs["scadv_min_umis"].to_numpy()
    test = (a.obs["scadv_split"] == "test").to_numpy()
    assert np.isfinite(m[test]).any() and (m[test] >= 1).all()
    assert rec["median_min_umis"] == pytest.approx(np.median(m[test]))
    np.testing.assert_allclose(rec["flipped_within"], [(m[test] <= b).mean() for b in budgets])
    # bins for colouring a UMAP, ordered, with "> 10" for cells not flipped
    bins = a.obs["scadv_min_umis_bin"]
    assert list(bins.cat.categories) == ["1", "2", "3–5", "6–10", "> 10"]
    assert bins.cat.ordered and len(a.uns["scadv_min_umis_bin_colors"]) == 5
    assert ((bins == "> 10").to_numpy() == (test & np.isinf(m))).all()
    # the genes table: one row per edited gene, UMIs adding up, detection from the recipe
    genes = rec["genes"]
    assert list(genes.columns) == ["gene", "umis", "added", "removed", "cells", "switched_on",
                                   "detection"]
    assert (genes["umis"] == genes["added"] + genes["removed"]).all()
    assert (genes["switched_on"] <= genes["added"]).all()
    assert genes["umis"].is_monotonic_decreasing
    flipped = (a.obs[f"{_name(10)}_flipped"].astype(str) == "True").to_numpy()
    c0, _ = _model_counts(a)
    adv = scadv.get.perturbed(a, _name(10), cells=flipped, space="counts").toarray()
    assert genes["umis"].sum() == np.abs(adv - c0[flipped]).sum()
    detection = pd.Series(np.asarray(a.uns["scadv"]["prepare"]["detection"]),
                          index=np.asarray(a.uns["scadv"]["prepare"]["genes"]))
    np.testing.assert_allclose(genes["detection"], detection[genes["gene"]].to_numpy())


def test_sc_pl_umap_colours_by_the_minimal_umis(small_trained):
    a = small_trained
    scadv.tl.count_attack(a, budgets=(1, 3), cells="all", progress=False)
    m = a.obs["scadv_min_umis"].to_numpy()
    assert np.isinf(m).any() and np.isfinite(m).any()  # both kinds of cells
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2))
    import matplotlib.pyplot as plt
    for col in ("scadv_min_umis", "scadv_min_umis_bin"):
        ax = sc.pl.umap(a, color=col, show=False)
        assert ax.collections and len(ax.collections[0].get_offsets()) == a.n_obs
    plt.close("all")


def test_survives_h5ad_and_rebuilds_the_same_cells(small_trained, tmp_path):
    a = small_trained
    scadv.tl.count_attack(a, budgets=(2, 5), progress=False)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    for name in (_name(2), _name(5)):
        np.testing.assert_array_equal(scadv.get.perturbed(a, name),
                                      scadv.get.perturbed(b, name))
        assert (scadv.get.perturbed(a, name, space="counts")
                != scadv.get.perturbed(b, name, space="counts")).nnz == 0
        pd.testing.assert_series_equal(a.obs[f"{name}_flipped_to"], b.obs[f"{name}_flipped_to"])
    np.testing.assert_array_equal(a.obs["scadv_min_umis"], b.obs["scadv_min_umis"])
    pd.testing.assert_frame_equal(a.uns["scadv"][KEY]["genes"], b.uns["scadv"][KEY]["genes"])
    _check_promises(b, (2, 5))
    # a backed AnnData is read batch by batch and gives the same answer
    c = ad.read_h5ad(path, backed="r")
    scadv.tl.count_attack(c, budgets=(2, 5), key_added="again", progress=False)
    np.testing.assert_array_equal(c.obs["scadv_again_min_umis"], a.obs["scadv_min_umis"])
    c.file.close()


@pytest.fixture(scope="module")
def small_once() -> ad.AnnData:
    a = make_counts(n_per_class=20, n_genes=120, seed=5)
    scadv.pp.prepare(a, n_top_genes=60, progress=False)
    scadv.tl.train_classifier(a, "cell_type", max_epochs=10, progress=False)
    return a


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(cap_add=st.integers(0, 3), cap_remove=st.integers(0, 3), detected_only=st.booleans(),
       narrow=st.booleans(), some_genes=st.booleans(), beam=st.sampled_from([1, 3]),
       top_k=st.sampled_from([1, 8]))
def test_constraints_hold_for_any_options(small_once, cap_add, cap_remove, detected_only,
                                          narrow, some_genes, beam, top_k):
    if cap_add + cap_remove == 0:
        cap_add = 1
    a = small_once.copy()
    lib = a.obs["scadv_library_size"].to_numpy()
    library = (float(np.median(lib)) - 3, float(np.median(lib)) + 3) if narrow else None
    genes = None
    if some_genes:
        genes = np.zeros(len(a.uns["scadv"]["classifier"]["genes"]), dtype=bool)
        genes[::3] = True
    scadv.tl.count_attack(a, budgets=(1, 4, 8), beam=beam, top_k=top_k, cap_add=cap_add,
                          cap_remove=cap_remove, detected_only=detected_only,
                          library=library, genes=genes, progress=False)
    _check_promises(a, (1, 4, 8), cap_add=cap_add, cap_remove=cap_remove, library=library,
                    detected_only=detected_only, genes=genes)


def test_minimal_umis_are_the_true_minimum_with_an_exhaustive_search():
    """A 5-gene model: the exhaustive search's column equals brute force over all edits."""
    rng = np.random.default_rng(1)
    n, g = 30, 5
    counts = rng.poisson(rng.uniform(0.3, 4.0, g), size=(n, g)).astype(np.float32)
    other = rng.poisson(30.0, size=(n, 40)).astype(np.float32)  # genes outside the model
    labels = np.where(counts[:, 0] > counts[:, 1], "a", "b")
    a = ad.AnnData(X=sparse.csr_matrix(np.hstack([counts, other])),
                   obs=pd.DataFrame({"t": pd.Categorical(labels)},
                                    index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"m{j}" for j in range(g)]
                                    + [f"o{j}" for j in range(40)]))
    scadv.pp.prepare(a, include_genes=[f"m{j}" for j in range(g)], n_top_genes=1,
                     progress=False)
    keep = np.asarray(a.uns["scadv"]["prepare"]["genes"]).astype(str)
    assert set(keep) >= {f"m{j}" for j in range(g)}
    scadv.tl.train_classifier(a, "t", hidden=(8,), dropout=(0.0,), input_rank=None,
                              max_epochs=3, progress=False)
    rec = a.uns["scadv"]["classifier"]
    n_genes = len(keep)
    scadv.tl.count_attack(a, budgets=(1, 2, 3), beam=2000, top_k=2 * n_genes, cap_add=2,
                          cap_remove=2, library=None, cells="all", progress=False)
    net = M.from_record(rec)
    c0, lib = _model_counts(a)
    rest = lib - c0.sum(axis=1)
    y = a.obs["scadv_pred"].cat.codes.to_numpy()
    truth = _tiny.brute_force(net, c0, rest, y, rec["prepare"], budget=3, cap_add=2,
                              cap_remove=2, library=None, detected_only=False, targeted=False)
    m = a.obs["scadv_min_umis"].to_numpy()
    np.testing.assert_array_equal(np.where(truth < 0, np.inf, truth), m)
    assert len(np.unique(truth)) >= 2  # not a trivial case


def test_targeted_attack_reaches_the_target(small_trained):
    a = small_trained
    scadv.tl.count_attack(a, budgets=(2, 20), target="type1", cells="all", key_added="tgt",
                          progress=False)
    rec = a.uns["scadv"]["tgt"]
    m = a.obs["scadv_tgt_min_umis"].to_numpy()
    clean = a.obs["scadv_pred"].astype(str).to_numpy()
    assert (m[clean == "type1"] == 0).all()
    pred = a.obs[f"{_name(20, 'tgt')}_pred"].astype(str).to_numpy()
    reached = np.isfinite(m) & (clean != "type1")
    assert reached.any() and (pred[reached] == "type1").all()
    assert rec["target_success_rate"][-1] == pytest.approx(
        (pred[clean != "type1"] == "type1").mean())
    assert "0" in list(a.obs["scadv_tgt_min_umis_bin"].cat.categories)
    _check_promises(a, (2, 20), key="tgt")


def test_counts_in_a_layer(small_trained):
    a = small_trained
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)  # X is now log-normalised; the counts live in a layer
    with pytest.raises(ScadvInputError, match="layer='counts'"):
        scadv.tl.count_attack(a, budgets=(2,), progress=False)
    scadv.tl.count_attack(a, budgets=(2, 5), layer="counts", progress=False)
    assert a.uns["scadv"]["perturbations"][_name(5)]["matrix"] == "counts"
    adv = scadv.get.perturbed(a, _name(5), space="counts")
    assert np.array_equal(adv.data, np.round(adv.data))


def test_clear_errors_and_nothing_written(small_trained):
    a = small_trained
    before = snapshot(a)
    bad = [({"budgets": (0, 5)}, "whole numbers of UMIs"),
           ({"budgets": (2.5,)}, "whole numbers of UMIs"),
           ({"budgets": (5, 5)}, "repeated"),
           ({"cap_add": 0, "cap_remove": 0}, "no edit"),
           ({"beam": 0}, "beam"),
           ({"library": (10.0, 5.0)}, "low < high"),
           ({"library": "reference"}, "'observed'"),
           ({"target": "nope"}, "not a class"),
           ({"genes": ["not_a_gene"]}, "not model genes")]
    for kwargs, match in bad:
        with pytest.raises(ScadvInputError, match=match):
            scadv.tl.count_attack(a, progress=False, **kwargs)
    assert_unchanged(a, before)


def test_no_counts_anywhere_says_how_to_fix_it(small_trained):
    a = small_trained
    lognorm = a.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    with pytest.raises(ScadvInputError, match="raw UMI counts.*layer='counts'"):
        scadv.tl.count_attack(lognorm, progress=False)
    # a model prepared from log-normalised data has no count recipe at all
    b = make_counts(n_per_class=15, n_genes=80)
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    scadv.pp.prepare(b, n_top_genes=40, progress=False)
    scadv.tl.train_classifier(b, "cell_type", max_epochs=3, progress=False)
    before = snapshot(b)
    with pytest.raises(ScadvInputError, match="prepared from raw counts"):
        scadv.tl.count_attack(b, progress=False)
    assert_unchanged(b, before)


def test_old_recipe_without_library_range_falls_back_to_training_cells(small_trained):
    a = small_trained
    rec = a.uns["scadv"]["classifier"]["prepare"]
    for k in ("library_min", "library_max", "library_median", "detection"):
        del rec[k]
    scadv.tl.count_attack(a, budgets=(3,), progress=False)
    limits = a.uns["scadv"][KEY]["limits"]
    train = (a.obs["scadv_split"] == "train").to_numpy()
    lib = a.obs["scadv_library_size"].to_numpy()[train]
    assert tuple(limits["library"]) == (lib.min(), lib.max())
    assert "training cells" in limits["library_from"]
    assert a.uns["scadv"][KEY]["detection_from"] == "attacked cells"


def test_raw_counts_of_a_colleague_with_the_classifier_copied_in(small_trained):
    """New cells as read from disk (genes in another order, no scadv keys) attacked with a
    classifier copied from the reference."""
    ref = small_trained
    new = make_counts(n_per_class=10, seed=11)
    new = new[:, new.var_names[::-1]].copy()  # other gene order
    new.uns["scadv"] = {"classifier": ref.uns["scadv"]["classifier"]}
    with pytest.raises(ScadvInputError, match="cells='all'"):
        scadv.tl.count_attack(new, progress=False)
    scadv.tl.count_attack(new, cells="all", budgets=(2, 10), progress=False)
    assert new.obs["scadv_min_umis"].notna().all()
    _check_promises(new, (2, 10))
