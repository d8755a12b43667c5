"""Streaming per-gene statistics and gene selection: the same genes as scanpy, batch by batch."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from scadv import _recipe as R
from scadv.pp import _stats as S
from tests.conftest import make_counts


def _no_check(block, cells):
    return None


def _scanpy_hvg(x, names, cand, flavor, n_top):
    if flavor == "seurat_v3":
        tmp = ad.AnnData(X=x[:, cand], var=pd.DataFrame(index=names[cand]))
    else:
        ln = R.lognormalize(x, target_sum=1e4)
        tmp = ad.AnnData(X=ln[:, cand], var=pd.DataFrame(index=names[cand]))
        tmp.uns["log1p"] = {"base": None}
    hvg = sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor=flavor, inplace=False)
    return np.asarray(hvg["highly_variable"])


def _mine(x, flavor, n_top, batch_size=S.RW.BATCH):
    st = S.first_pass(x, kind="counts", target_sum=1e4, check=_no_check, progress=False,
                      batch_size=batch_size)
    cand = np.flatnonzero(st.detected >= 3)
    if flavor == "seurat_v3":
        return st, cand, S.seurat_v3(st, x, cand, n_top, progress=False)
    return st, cand, S.dispersion(st, cand, n_top, flavor)


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat", "cell_ranger"])
def test_same_genes_as_scanpy_on_pbmc3k(pbmc3k_raw, flavor):
    x = pbmc3k_raw.X
    _, cand, mine = _mine(x, flavor, 2000, batch_size=500)  # several batches
    ref = _scanpy_hvg(x, pbmc3k_raw.var_names, cand, flavor, 2000)
    assert mine.sum() == ref.sum() == 2000
    np.testing.assert_array_equal(mine, ref)


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat", "cell_ranger"])
def test_same_genes_as_scanpy_on_synthetic_counts(flavor):
    a = make_counts(n_per_class=120, n_classes=3, n_genes=1500, seed=4)
    _, cand, mine = _mine(a.X, flavor, 150, batch_size=97)
    ref = _scanpy_hvg(a.X, a.var_names, cand, flavor, 150)
    np.testing.assert_array_equal(mine, ref)


def test_moments_do_not_depend_on_the_batch_size_or_storage():
    a = make_counts(n_per_class=50, n_genes=200, seed=1)
    one = S.first_pass(a.X, kind="counts", target_sum=1e4, check=_no_check, progress=False,
                       batch_size=1000)
    dense = S.first_pass(a.X.toarray(), kind="counts", target_sum=1e4, check=_no_check,
                         progress=False, batch_size=7)
    for name in ("lognorm", "counts", "normalised"):
        m1, v1 = getattr(one, name).mean_var(one.n_obs)
        m2, v2 = getattr(dense, name).mean_var(dense.n_obs)
        np.testing.assert_allclose(m1, m2, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(one.detected, dense.detected)
    np.testing.assert_allclose(one.lognorm_max, dense.lognorm_max, rtol=1e-6)
    np.testing.assert_allclose(one.lognorm_min, dense.lognorm_min, rtol=1e-6)


def test_zscore_statistics_match_the_whole_matrix_computation():
    a = make_counts(n_per_class=60, n_genes=120, seed=2)
    st = S.first_pass(a.X, kind="counts", target_sum=1e4, check=_no_check, progress=False,
                      batch_size=33)
    ln = R.lognormalize(a.X, target_sum=1e4)
    mean, std = R.zscore_stats(ln)
    m, v = st.lognorm.mean_var(st.n_obs)
    s = np.sqrt(v)
    s[s == 0] = 1
    np.testing.assert_allclose(m, mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s, std, rtol=1e-4, atol=1e-6)
    dense = ln.toarray()
    np.testing.assert_allclose(st.lognorm_max, dense.max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(st.lognorm_min, dense.min(axis=0), rtol=1e-6)


def test_constant_counts_are_refused_before_the_loess_fit():
    x = sparse.csr_matrix(np.ones((50, 40), dtype=np.float32))
    st = S.first_pass(x, kind="counts", target_sum=1e4, check=_no_check, progress=False)
    cand = np.arange(40)
    with pytest.raises(ValueError, match="loess"):
        S.seurat_v3(st, x, cand, 10, progress=False)
