"""scadv.pp.prepare: counts, log-normalised and scaled input; the recipe it records."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, make_counts, snapshot


def _model_input(a):
    return R.source(a, a.uns["scadv"]["prepare"]).dense()


def test_counts_input_pbmc3k_leaves_the_data_as_it_was(pbmc3k_raw):
    raw_counts = pbmc3k_raw.X.copy()
    var = pbmc3k_raw.var.copy()
    assert scadv.pp.prepare(pbmc3k_raw, progress=False) is None
    a = pbmc3k_raw
    rec = a.uns["scadv"]["prepare"]
    assert rec["input_kind"] == "counts" and rec["flavor"] == "seurat_v3"
    assert len(rec["genes"]) == 2000 and not bool(rec["x_is_model_input"])
    # nothing of the user's data changed: X, var, no new layers, no .raw
    assert (a.X != raw_counts).nnz == 0 and a.X.dtype == raw_counts.dtype
    pd.testing.assert_frame_equal(a.var, var)
    assert list(a.layers) == [] and a.raw is None
    lib = np.asarray(raw_counts.sum(axis=1)).ravel()
    np.testing.assert_allclose(a.obs["scadv_library_size"], lib)
    # the model input is the z-score of the log data, clipped at 10, computed from the counts
    x = _model_input(a)
    assert x.dtype == np.float32 and x.shape == (a.n_obs, 2000)
    assert x.max() <= 10 and x.min() >= -10
    np.testing.assert_allclose(x.mean(axis=0)[np.abs(x).max(axis=0) < 10], 0, atol=1e-4)
    ln = R.lognormalize(raw_counts, target_sum=1e4)
    cols = a.var_names.get_indexer(rec["genes"])
    np.testing.assert_allclose(R.lognorm_to_model(ln[:, cols], rec), x, atol=1e-6)
    has_zeros = (raw_counts[:, cols].toarray() == 0).any(axis=0)
    assert has_zeros.mean() > 0.99
    np.testing.assert_allclose(rec["zero_level"][has_zeros], x.min(axis=0)[has_zeros], atol=1e-5)
    np.testing.assert_allclose(rec["x_min"], x.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(rec["x_max"], x.max(axis=0), atol=1e-6)
    assert "provenance" in rec and rec["provenance"]["versions"]["scadv"]


def test_subset_gives_the_classic_in_place_layout(pbmc3k_raw):
    lazy = scadv.pp.prepare(pbmc3k_raw, copy=True, progress=False)
    raw_counts = pbmc3k_raw.X.copy()
    scadv.pp.prepare(pbmc3k_raw, subset=True, progress=False)
    a = pbmc3k_raw
    rec = a.uns["scadv"]["prepare"]
    assert a.n_vars == 2000 and list(a.var_names) == list(rec["genes"])
    assert bool(rec["x_is_model_input"])
    assert R.same(rec, lazy.uns["scadv"]["prepare"])  # the same recipe either way
    full = a.raw.var_names.get_indexer(a.var_names)
    np.testing.assert_array_equal(a.layers["counts"].toarray(), raw_counts[:, full].toarray())
    assert a.raw.n_vars == 32738
    np.testing.assert_allclose(np.expm1(a.raw.X[:5].toarray()).sum(axis=1), 1e4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(a.X), _model_input(lazy), atol=1e-6)
    assert R.source(a, rec).kind == "model"  # X is read as the model input


def test_lognorm_input_is_not_normalised_again(counts):
    by_counts = counts.copy()
    scadv.pp.prepare(by_counts, n_top_genes=100, flavor="seurat", progress=False)
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    scadv.pp.prepare(lognorm, n_top_genes=100, progress=False)
    assert lognorm.uns["scadv"]["prepare"]["input_kind"] == "lognorm"
    assert lognorm.uns["scadv"]["prepare"]["flavor"] == "seurat"  # no counts → seurat
    np.testing.assert_array_equal(lognorm.uns["scadv"]["prepare"]["genes"],
                                  by_counts.uns["scadv"]["prepare"]["genes"])
    np.testing.assert_allclose(_model_input(lognorm), _model_input(by_counts), atol=1e-4)
    assert "counts" not in lognorm.layers


def test_lognorm_with_counts_layer_uses_seurat_v3(counts):
    a = counts.copy()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    scadv.pp.prepare(a, n_top_genes=100, progress=False)
    rec = a.uns["scadv"]["prepare"]
    assert rec["input_kind"] == "lognorm" and rec["flavor"] == "seurat_v3"
    assert a.layers["counts"].shape == (a.n_obs, a.n_vars)
    by_counts = scadv.pp.prepare(counts, n_top_genes=100, copy=True, progress=False)
    np.testing.assert_array_equal(rec["genes"], by_counts.uns["scadv"]["prepare"]["genes"])


def test_scaled_input_pbmc68k_is_used_unchanged():
    a = scadv.datasets.pbmc68k_reduced()
    x_before = np.array(a.X, copy=True)
    scadv.pp.prepare(a)
    rec = a.uns["scadv"]["prepare"]
    assert rec["input_kind"] == "scaled" and bool(rec["has_stats"])
    np.testing.assert_array_equal(a.X, x_before)
    assert a.n_vars == 765 and "counts" not in a.layers
    raw = a.raw.X.toarray() if sparse.issparse(a.raw.X) else a.raw.X
    np.testing.assert_allclose(rec["mean"], raw.mean(axis=0), atol=1e-4)


def test_prepare_twice_gives_the_same_recipe(counts):
    scadv.pp.prepare(counts, n_top_genes=100, progress=False)
    before = snapshot(counts)
    rec = counts.uns["scadv"]["prepare"]
    scadv.pp.prepare(counts, n_top_genes=100, progress=False)
    assert_unchanged(counts, before)
    assert R.same(counts.uns["scadv"]["prepare"], rec)
    classic = counts.copy()
    scadv.pp.prepare(classic, n_top_genes=100, subset=True, progress=False)
    before = snapshot(classic)
    rec = classic.uns["scadv"]["prepare"]
    scadv.pp.prepare(classic, progress=False)  # X is already the model input: nothing to do
    assert_unchanged(classic, before)
    assert classic.uns["scadv"]["prepare"] is rec


def test_prepared_in_place_data_cannot_be_prepared_again_from_its_counts_layer(counts):
    scadv.pp.prepare(counts, n_top_genes=100, subset=True, progress=False)
    before = snapshot(counts)
    with pytest.raises(ScadvInputError, match="library sizes would be computed"):
        scadv.pp.prepare(counts, layer="counts")
    assert_unchanged(counts, before)


def test_copy_returns_prepared_and_leaves_input(counts):
    before = snapshot(counts)
    out = scadv.pp.prepare(counts, n_top_genes=100, copy=True, progress=False)
    assert isinstance(out, ad.AnnData) and out.n_vars == counts.n_vars
    assert len(out.uns["scadv"]["prepare"]["genes"]) == 100
    assert_unchanged(counts, before)


def test_include_genes_are_kept(pbmc3k_raw):
    markers = ["MS4A1", "CD79A", "CD8A", "CCR7", "IL7R"]
    scadv.pp.prepare(pbmc3k_raw, include_genes=markers, progress=False)
    genes = set(pbmc3k_raw.uns["scadv"]["prepare"]["genes"])
    assert set(markers) <= genes and len(genes) >= 2000


def test_seurat_flavour_is_available(pbmc3k_raw):
    vst = scadv.pp.prepare(pbmc3k_raw, copy=True, progress=False)
    scadv.pp.prepare(pbmc3k_raw, flavor="seurat", progress=False)
    assert pbmc3k_raw.uns["scadv"]["prepare"]["flavor"] == "seurat"
    overlap = len(set(pbmc3k_raw.uns["scadv"]["prepare"]["genes"])
                  & set(vst.uns["scadv"]["prepare"]["genes"]))
    assert 1000 < overlap < 1900  # related but different gene selections


def test_backed_input_gives_the_same_recipe_without_loading_it(counts, tmp_path):
    path = tmp_path / "c.h5ad"
    counts.write_h5ad(path)
    in_memory = scadv.pp.prepare(counts, n_top_genes=100, copy=True, progress=False)
    backed = ad.read_h5ad(path, backed="r")
    scadv.pp.prepare(backed, n_top_genes=100, progress=False)
    assert R.same(backed.uns["scadv"]["prepare"], in_memory.uns["scadv"]["prepare"])
    np.testing.assert_allclose(backed.uns["scadv"]["prepare"]["x_max"],
                               in_memory.uns["scadv"]["prepare"]["x_max"])
    with pytest.raises(ScadvInputError, match="needs the data in memory"):
        scadv.pp.prepare(backed, subset=True)
    backed.file.close()


def test_degenerate_matrices_get_a_clear_error(counts):
    const = counts.copy()
    const.X = sparse.csr_matrix(np.ones(const.shape, dtype=np.float32))
    with pytest.raises(ScadvInputError, match="constant"):
        scadv.pp.prepare(const, n_top_genes=10, progress=False)
    with pytest.raises(ScadvInputError, match="seurat_v3' failed"):
        scadv.pp.prepare(const, n_top_genes=10, flavor="seurat_v3", progress=False)
    same_cols = counts.copy()
    col = np.arange(1, counts.n_obs + 1, dtype=np.float32)[:, None]
    same_cols.X = sparse.csr_matrix(np.repeat(col, counts.n_vars, axis=1))
    with pytest.raises(ScadvInputError, match="constant|no gene varies"):
        scadv.pp.prepare(same_cols, n_top_genes=10, progress=False)
    two = counts[:2].copy()
    with pytest.raises(ScadvInputError, match="at least 3 of the 2 cells"):
        scadv.pp.prepare(two, progress=False)


def test_layer_input(counts):
    a = counts.copy()
    a.layers["umi"] = a.X.copy()
    a.X = sparse.csr_matrix(a.X.shape, dtype=np.float32)
    scadv.pp.prepare(a, n_top_genes=100, layer="umi")
    assert a.uns["scadv"]["prepare"]["input_kind"] == "counts"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.X.data.__setitem__(0, np.nan), "NaN"),
        (lambda a: a.X.data.__setitem__(0, np.inf), "infinite"),
        (lambda a: setattr(a, "X", a.X * 37.3), "not log-transformed"),
    ],
    ids=["nan", "inf", "normalised-not-logged"],
)
def test_bad_values_are_refused_and_input_unchanged(counts, mutate, message):
    mutate(counts)
    before = snapshot(counts)
    with pytest.raises(ScadvInputError, match=message):
        scadv.pp.prepare(counts, n_top_genes=100)
    assert_unchanged(counts, before)


def test_counts_expected(counts):
    before = snapshot(counts)
    bad = counts.copy()
    bad.X.data[:3] = -1.0  # three stray negatives: neither counts nor z-scores
    with pytest.raises(ScadvInputError, match="3 negative values"):
        scadv.pp.prepare(bad, n_top_genes=100)
    frac = counts.copy()
    frac.X.data[0] = 0.5
    with pytest.raises(ScadvInputError, match="non-integer values"):
        scadv.pp.prepare(frac, n_top_genes=100, expect="counts")
    lognorm = counts.copy()
    sc.pp.log1p(lognorm)
    with pytest.raises(ScadvInputError, match="non-integer"):
        scadv.pp.prepare(lognorm, expect="counts")
    scaled = scadv.datasets.pbmc68k_reduced()
    with pytest.raises(ScadvInputError, match="negative values"):
        scadv.pp.prepare(scaled, expect="counts")
    with pytest.raises(ScadvInputError, match="expect='lognorm', but adata.X looks like raw"):
        scadv.pp.prepare(counts, expect="lognorm")
    assert_unchanged(counts, before)


def test_view_empty_and_unknown_genes(counts):
    view = counts[:50]
    with pytest.raises(ScadvInputError, match="view"):
        scadv.pp.prepare(view)
    assert scadv.pp.prepare(view, n_top_genes=100, copy=True).n_obs == 50  # copy=True is fine
    with pytest.raises(ScadvInputError, match="empty"):
        scadv.pp.prepare(counts[:0].copy())
    before = snapshot(counts)
    with pytest.raises(ScadvInputError, match="include_genes"):
        scadv.pp.prepare(counts, include_genes=["NOT_A_GENE"])
    with pytest.raises(ScadvInputError, match="layer 'missing' not found"):
        scadv.pp.prepare(counts, layer="missing")
    with pytest.raises(ScadvInputError, match="seurat_v3' needs raw counts"):
        lognorm = counts.copy()
        sc.pp.log1p(lognorm)
        scadv.pp.prepare(lognorm, flavor="seurat_v3")
    assert_unchanged(counts, before)


def test_cells_without_counts_are_refused():
    a = make_counts()
    x = a.X.toarray()
    x[0] = 0
    a.X = sparse.csr_matrix(x)
    with pytest.raises(ScadvInputError, match="zero total counts"):
        scadv.pp.prepare(a, n_top_genes=100)


def test_h5ad_round_trip_of_the_recipe(counts, tmp_path):
    scadv.pp.prepare(counts, n_top_genes=100)
    counts.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert R.same(back.uns["scadv"]["prepare"], counts.uns["scadv"]["prepare"])
