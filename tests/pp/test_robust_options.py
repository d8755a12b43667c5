"""Robust preprocessing options of ``scadv.pp.prepare`` (issue 9): std floor, detection
threshold, no z-scoring; stored in the recipe, honoured by every reader, round-tripped."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import scadv
from scadv import _recipe as R
from scadv._errors import ScadvInputError
from tests.conftest import assert_unchanged, snapshot


def test_std_floor_bounds_the_jump_of_one_umi(counts):
    plain = counts.copy()
    scadv.pp.prepare(plain, n_top_genes=100, progress=False)
    scadv.pp.prepare(counts, n_top_genes=100, std_floor=1.0, progress=False)
    p, r = R.stored(plain), R.stored(counts)
    lib = counts.obs["scadv_library_size"].to_numpy()
    floor = np.log1p(1e4 / np.median(lib))
    assert r["std_floor"] == 1.0 and r["std_floor_value"] == pytest.approx(floor, rel=1e-6)
    np.testing.assert_array_equal(r["genes"], p["genes"])
    np.testing.assert_allclose(r["std"], np.maximum(p["std"], np.float32(floor)))
    np.testing.assert_allclose(r["lognorm_std"], p["std"])
    assert (p["std"] < floor).any()  # the floor did something here
    # one UMI switching on a silent gene at the median library: at most 1 SD
    assert (np.log1p(1e4 / np.median(lib)) / r["std"] <= 1.0 + 1e-5).all()
    assert p["std_floor"] == 0.0 and "std_floor_value" not in p


def test_min_detection_leaves_out_rarely_detected_genes(counts):
    keep = "gene299"
    scadv.pp.prepare(counts, n_top_genes=100, min_detection=0.4, include_genes=[keep],
                     progress=False)
    rec = R.stored(counts)
    genes = np.asarray(rec["genes"]).astype(str)
    detection = np.asarray((counts.X > 0).mean(axis=0)).ravel()
    frac = detection[counts.var_names.get_indexer(genes)]
    assert (frac[genes != keep] >= 0.4).all()
    np.testing.assert_allclose(rec["detection"], frac, rtol=1e-6)
    assert rec["min_detection"] == 0.4


def test_without_z_scoring_the_input_is_the_clipped_log(counts):
    scadv.pp.prepare(counts, n_top_genes=100, zscore=False, target_sum=1e3, progress=False)
    rec = R.stored(counts)
    assert not rec["zscore"]
    assert (np.asarray(rec["mean"]) == 0).all() and (np.asarray(rec["std"]) == 1).all()
    assert (np.asarray(rec["lognorm_mean"]) > 0).any()
    x = R.source(counts, rec).dense()
    genes = counts.var_names.get_indexer(np.asarray(rec["genes"]).astype(str))
    lognorm = sc.pp.log1p(sc.pp.normalize_total(counts, target_sum=1e3, copy=True), copy=True)
    np.testing.assert_allclose(x, np.clip(lognorm.X.toarray()[:, genes], -10, 10), atol=1e-5)
    np.testing.assert_allclose(R.zero_level(rec), 0.0)
    # a missing gene stands at its training mean, not at zero expression
    new = counts[:, [g for g in counts.var_names if g != rec["genes"][0]]].copy()
    del new.uns["scadv"]
    filled = R.source(new, rec, missing_genes="mean").dense()
    np.testing.assert_allclose(filled[:, 0], rec["lognorm_mean"][0], rtol=1e-6)


def test_library_range_and_detection_are_recorded_and_round_trip(counts, tmp_path):
    scadv.pp.prepare(counts, n_top_genes=100, std_floor=2.0, min_detection=0.1,
                     progress=False)
    rec = R.stored(counts)
    lib = counts.obs["scadv_library_size"].to_numpy()
    assert (rec["library_min"], rec["library_max"]) == (lib.min(), lib.max())
    assert rec["library_median"] == np.median(lib)
    path = tmp_path / "p.h5ad"
    counts.write_h5ad(path)
    back = R.stored(ad.read_h5ad(path))
    for key in ("std_floor", "std_floor_value", "min_detection", "zscore", "library_min",
                "library_max"):
        assert back[key] == rec[key], key
    for key in ("std", "lognorm_mean", "lognorm_std", "detection"):
        np.testing.assert_array_equal(back[key], rec[key])


def test_recipes_without_the_new_keys_keep_working(counts):
    scadv.pp.prepare(counts, n_top_genes=100, progress=False)
    rec = R.stored(counts)
    x = R.source(counts, rec).dense()
    old = {k: v for k, v in rec.items() if k not in (
        "std_floor", "min_detection", "zscore", "lognorm_mean", "lognorm_std", "detection",
        "library_min", "library_max", "library_median")}
    counts.uns["scadv"]["prepare"] = old
    np.testing.assert_array_equal(R.source(counts, old).dense(), x)
    np.testing.assert_array_equal(R.fill_value(old), rec["mean"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"std_floor": 0.0}, "std_floor must be a positive"),
    ({"std_floor": float("nan")}, "std_floor must be a positive"),
    ({"min_detection": 1.0}, r"min_detection is a fraction"),
    ({"min_detection": -0.1}, r"min_detection is a fraction"),
    ({"min_detection": 0.999}, "smaller min_detection"),
])
def test_bad_robust_options_are_refused_before_anything_is_written(counts, kwargs, match):
    before = snapshot(counts)
    with pytest.raises(ScadvInputError, match=match):
        scadv.pp.prepare(counts, n_top_genes=100, progress=False, **kwargs)
    assert_unchanged(counts, before)


def test_std_floor_needs_counts(counts):
    sc.pp.normalize_total(counts, target_sum=1e4)
    sc.pp.log1p(counts)
    with pytest.raises(ScadvInputError, match="std_floor bounds the z-score change of one UMI"):
        scadv.pp.prepare(counts, std_floor=1.0, progress=False)
