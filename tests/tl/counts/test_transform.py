"""The differentiable count transform against the recipe itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from scadv.tl._counts import _transform as T

from . import _tiny


def _parity(adata) -> None:
    """The torch transform of the raw counts equals the model input every scadv tool
    computes (``Source.rows``) and the numpy reference."""
    recipe = R.stored(adata)
    src = R.source(adata, recipe)
    idx = np.arange(adata.n_obs)
    counts, lib = src.counts(idx)
    rest = T.rest_of_library(counts, lib)
    tf = T.CountTransform.from_recipe(recipe)
    x = tf(torch.as_tensor(counts.toarray()), torch.as_tensor(rest)).numpy()
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, src.rows(idx), rtol=0, atol=2e-5)
    np.testing.assert_allclose(x, T.reference_model_input(counts, lib, recipe), rtol=0,
                               atol=2e-5)


def test_matches_prepare_on_synthetic_counts(small_trained):
    _parity(small_trained)


@pytest.mark.parametrize("options", [
    {"std_floor": 1.0}, {"max_value": 3.0}, {"min_detection": 0.2}, {"zscore": False},
    {"zscore": False, "target_sum": 1e3}, {"std_floor": 0.5, "max_value": 2.0,
                                           "target_sum": 100.0}])
def test_every_robust_option_is_one_recipe_for_all_readers(counts, options):
    """Each option of pp.prepare changes only stored statistics, honoured alike by the torch
    transform, the streamed model input, zero levels and observed ranges."""
    scadv.pp.prepare(counts, n_top_genes=100, progress=False, **options)
    _parity(counts)
    recipe = R.stored(counts)
    x = R.source(counts, recipe).dense()
    np.testing.assert_allclose(recipe["x_min"], x.min(axis=0), atol=1e-5)
    np.testing.assert_allclose(recipe["x_max"], x.max(axis=0), atol=1e-5)
    zero = T.CountTransform.from_recipe(recipe)(torch.zeros((1, x.shape[1])),
                                                torch.tensor([1000.0])).numpy()[0]
    np.testing.assert_allclose(R.zero_level(recipe), zero, atol=1e-6)


@pytest.mark.slow
def test_matches_prepare_on_pbmc3k(pbmc3k_trained):
    _parity(pbmc3k_trained)


def test_an_edit_changes_the_library_size_like_the_recipe():
    rec = _tiny.recipe(7, 0)
    counts, rest = _tiny.cells(20, 7, 0)
    edited = counts.copy()
    edited[:, 2] += 3
    edited[:, 4] = np.maximum(edited[:, 4] - 1, 0)
    tf = T.CountTransform.from_recipe(rec)
    x = tf(torch.as_tensor(edited), torch.as_tensor(rest)).numpy()
    ref = T.reference_model_input(edited, edited.sum(axis=1) + rest, rec)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    # every detected gene moved through the library size, not only the edited ones
    before = tf(torch.as_tensor(counts), torch.as_tensor(rest)).numpy()
    moved = np.abs(x - before) > 0
    assert moved[:, 2].all()
    others = np.delete(np.arange(7), [2, 4])
    detected = counts[:, others] > 0
    assert moved[:, others][detected].all() and not moved[:, others][~detected].any()


def test_gradient_through_the_library_size_matches_finite_differences():
    rec = _tiny.recipe(6, 1, max_value=0.0)  # no clip: smooth everywhere
    counts, rest = _tiny.cells(8, 6, 1)
    tf = T.CountTransform.from_recipe(rec)
    c = torch.as_tensor(counts.astype(np.float64) + 0.5, dtype=torch.float32).requires_grad_()
    w = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((tf(c, torch.as_tensor(rest)) * w).sum(), c)
    # d/dc_j Σ_g w_g z_g = w_j / (std_j (1/s + c_j)) − Σ_g w_g c_g / (std_g (1/s + c_g)) / L
    cc = counts.astype(np.float64) + 0.5
    lib = cc.sum(axis=1, keepdims=True) + rest[:, None]
    s = 1e4 / lib
    std = np.asarray(rec["std"], dtype=np.float64)
    ww = w.numpy().astype(np.float64)
    term = ww / (std * (1 / s + cc))
    expected = term - (term * cc).sum(axis=1, keepdims=True) / lib
    np.testing.assert_allclose(grad.numpy(), expected, rtol=2e-3, atol=1e-6)


def test_a_recipe_not_built_from_counts_is_refused():
    rec = _tiny.recipe(3, 0)
    rec["input_kind"] = "lognorm"
    with pytest.raises(ScadvInputError, match="prepared from raw counts"):
        T.CountTransform.from_recipe(rec)


def test_library_sizes_that_do_not_belong_to_the_counts_are_refused():
    counts, _ = _tiny.cells(4, 3, 0)
    with pytest.raises(ScadvInputError, match="ALL genes"):
        T.rest_of_library(counts, counts.sum(axis=1) - 1)
    with pytest.raises(ScadvInputError, match="one library size"):
        T.rest_of_library(counts, np.ones(3))
