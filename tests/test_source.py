"""The model input of any AnnData, computed batch by batch: in memory, backed, dask."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from tests.conftest import make_counts


@pytest.fixture
def prepared():
    a = make_counts(n_per_class=30, n_genes=200, seed=3)
    scadv.pp.prepare(a, n_top_genes=60, progress=False)
    return a


def _by_hand(a, recipe):
    ln = R.lognormalize(a.X, target_sum=float(recipe["target_sum"]))
    aligned, _ = R.align(ln, a.var_names, recipe["genes"], missing_genes="error", what="x")
    return R.lognorm_to_model(aligned, recipe)


def test_rows_equal_the_whole_matrix_transform(prepared):
    a = prepared
    recipe = a.uns["scadv"]["prepare"]
    src = R.source(a, recipe)
    assert src.kind == "counts" and src.label == "adata.X"
    expected = _by_hand(a, recipe)
    np.testing.assert_array_equal(src.dense(), expected)
    idx = np.array([5, 0, 7, 7])
    np.testing.assert_array_equal(src.rows(idx), expected[idx])
    got = np.concatenate([x for _, x in src.batches(batch_size=7)])
    np.testing.assert_array_equal(got, expected)


def test_counts_and_library_sizes(prepared):
    a = prepared
    src = R.source(a, a.uns["scadv"]["prepare"])
    counts, lib = src.counts(np.arange(5))
    cols = a.var_names.get_indexer(src.genes)
    np.testing.assert_array_equal(counts.toarray(), a.X[:5][:, cols].toarray())
    np.testing.assert_allclose(lib, np.asarray(a.X[:5].sum(axis=1)).ravel())


def test_backed_and_dask_inputs_give_identical_rows(prepared, tmp_path):
    a = prepared
    expected = R.source(a, a.uns["scadv"]["prepare"]).dense()
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    src = R.source(backed, backed.uns["scadv"]["prepare"])
    assert not src.in_memory
    np.testing.assert_array_equal(src.dense(), expected)
    np.testing.assert_array_equal(src.rows(np.array([9, 2, 2])), expected[[9, 2, 2]])
    backed.file.close()
    da = pytest.importorskip("dask.array")
    lazy = a.copy()
    lazy.X = da.from_array(a.X.toarray(), chunks=(17, 200))
    np.testing.assert_array_equal(R.source(lazy, a.uns["scadv"]["prepare"]).dense(), expected)


def test_new_cells_with_genes_in_another_order_and_missing_genes(prepared):
    a = prepared
    recipe = a.uns["scadv"]["prepare"]
    expected = R.source(a, recipe).dense()
    new = ad.AnnData(X=a.X.copy(), var=a.var.copy(), obs=a.obs.copy())
    order = np.random.default_rng(0).permutation(new.n_vars)
    new = new[:, order].copy()
    np.testing.assert_array_equal(R.source(new, recipe).dense(), expected)
    gone = str(recipe["genes"][0])
    fewer = new[:, new.var_names != gone].copy()
    with pytest.raises(ScadvInputError, match="missing"):
        R.source(fewer, recipe)
    src = R.source(fewer, recipe, missing_genes="mean")
    x = src.dense()
    np.testing.assert_array_equal(x[:, 0], 0)  # the training mean is z-score 0
    assert src.missing[0] and src.missing.sum() == 1


def test_lognormalised_input_and_raw(prepared):
    a = prepared
    recipe = a.uns["scadv"]["prepare"]
    expected = R.source(a, recipe).dense()
    ln = ad.AnnData(X=sparse.csr_matrix(R.lognormalize(a.X, target_sum=1e4)), obs=a.obs,
                    var=a.var)
    src = R.source(ln, recipe)
    assert src.kind == "lognorm"
    np.testing.assert_allclose(src.dense(), expected, atol=1e-6)
    holder = ad.AnnData(X=np.zeros((a.n_obs, 3), np.float32) - 1, obs=a.obs)
    holder.raw = ln
    src = R.source(holder, recipe)
    assert src.label == "adata.raw"
    np.testing.assert_allclose(src.dense(), expected, atol=1e-6)


def test_non_finite_values_name_the_cell(prepared):
    a = prepared
    x = a.X.toarray()
    x[4, 3] = np.nan
    a.X = sparse.csr_matrix(x)
    with pytest.raises(ScadvInputError, match=a.obs_names[4]):
        R.source(a, a.uns["scadv"]["prepare"]).dense()
    # a large or backed matrix is only sampled up front: the batch that holds it names the cell
    src = R.Source(a.X, kind="counts", recipe=a.uns["scadv"]["prepare"],
                   present=a.var_names.get_indexer(a.uns["scadv"]["prepare"]["genes"]),
                   missing=np.zeros(60, bool), label="adata.X", obs_names=a.obs_names)
    with pytest.raises(ScadvInputError, match=a.obs_names[4]):
        src.dense()


def test_model_input_refuses_what_would_not_fit(prepared, monkeypatch):
    from scadv import _rows as RW

    monkeypatch.setattr(RW, "physical_memory", lambda: 1000)
    with pytest.raises(ScadvInputError, match=r"would need \d+ KiB in memory"):
        R.source(prepared, prepared.uns["scadv"]["prepare"]).dense()
