"""Validation of stored records (``scadv._records``, ``_model.architecture``, the detector's
loaders): values are checked, sizes are checked before allocation, weights carry a hash."""

from __future__ import annotations

import copy
import time
import tracemalloc

import anndata as ad
import numpy as np
import pytest

import scadv
from scadv import _detector as DT
from scadv import _model as M
from scadv import _records as REC
from scadv._errors import ScadvInputError
from scadv.tl._detect import _common as MC

from .conftest import assert_unchanged, snapshot


def _classifier(adata: ad.AnnData) -> dict:
    return copy.deepcopy(dict(adata.uns["scadv"]["classifier"]))


def test_weight_shapes_match_the_built_networks() -> None:
    arch = M.Architecture(30, 4, (16, 8), (0.1, 0.2), 5)
    built = {k: tuple(v.shape) for k, v in arch.build().state_dict().items()}
    assert arch.weight_shapes() == built
    plain = M.Architecture(30, 4, (16,), (0.1,), 0)
    assert plain.weight_shapes() == {k: tuple(v.shape) for k, v in
                                     plain.build().state_dict().items()}
    shape = DT.Shape(n_features=12, hidden=10, embed_dim=6, width=7, n_blocks=3)
    triplet, detector = shape.build()
    assert shape.weight_shapes() == (
        {k: tuple(v.shape) for k, v in triplet.state_dict().items()},
        {k: tuple(v.shape) for k, v in detector.state_dict().items()})


def test_weights_hash_is_order_free_and_sensitive() -> None:
    rng = np.random.default_rng(0)
    w = {"b": rng.normal(size=(3, 2)).astype(np.float32), "a": rng.normal(size=4)}
    h = REC.weights_sha256(w)
    assert h == REC.weights_sha256(dict(reversed(list(w.items()))))
    changed = {**w, "a": w["a"].copy()}
    changed["a"][2] = np.nextafter(np.float32(changed["a"][2]), np.float32(np.inf))
    assert REC.weights_sha256(changed) != h
    assert REC.weights_sha256({**w, "a": w["a"].reshape(2, 2)}) != h  # same bytes, new shape
    assert REC.weights_sha256({"ba": w["b"], "": w["a"]}) != h  # names are length-prefixed


def test_new_classifiers_store_a_weights_hash_that_loading_checks(
        small_trained: ad.AnnData) -> None:
    rec = small_trained.uns["scadv"]["classifier"]
    assert rec["weights_sha256"] == REC.weights_sha256(rec["weights"])
    tampered = _classifier(small_trained)
    name = "head.bias"
    tampered["weights"][name] = tampered["weights"][name] + 0.5
    with pytest.raises(ScadvInputError, match="content hash"):
        M.from_record(tampered)
    old = _classifier(small_trained)  # a record written by scadv 0.1: no hash
    del old["weights_sha256"]
    M.from_record(old)


@pytest.mark.parametrize(("where", "value", "message"), [
    ("weights.head.bias", np.nan, "NaN or infinite"),
    ("weights.head.weight", np.inf, "NaN or infinite"),
    ("prepare.mean", np.nan, "'mean' holds NaN"),
    ("prepare.std", 0.0, "'std' holds zero"),
    ("prepare.max_value", np.inf, "'max_value' holds NaN or infinite"),
    ("prepare.target_sum", -1.0, "'target_sum' must be positive"),
])
def test_non_finite_values_are_refused(small_trained: ad.AnnData, where: str, value: float,
                                       message: str) -> None:
    rec = _classifier(small_trained)
    rec.pop("weights_sha256")  # the value checks, not the hash, must catch these
    part, name = where.split(".", 1)
    entry = rec[part][name]
    if isinstance(entry, np.ndarray):
        entry = entry.copy()
        entry.flat[0] = value
    else:
        entry = value
    rec[part][name] = entry
    with pytest.raises(ScadvInputError, match=message):
        M.architecture(rec)


def test_nan_weights_never_give_a_flip_rate(small_trained: ad.AnnData) -> None:
    """A NaN model used to predict NaN and report flip rate 0 (it looked perfectly robust)."""
    a = small_trained
    rec = a.uns["scadv"]["classifier"]
    rec["weights"]["head.weight"] = np.full_like(rec["weights"]["head.weight"], np.nan)
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="NaN or infinite"):
        scadv.tl.pgd(a, eps=0.1, cells="all", progress=False)
    with pytest.raises(ScadvInputError, match="NaN or infinite"):
        scadv.tl.predict(a)
    assert_unchanged(a, before)


@pytest.mark.parametrize("arch", [
    {"n_input": 1_000_000, "hidden": np.array([65_536, 65_536])},  # 2^32+ weights
    {"hidden": np.full(10, 65_536)},
    {"n_classes": 10**12},
    {"input_rank": 10**9},
    {"hidden": np.arange(1, 100)},  # 99 layers
])
def test_huge_declared_sizes_fail_fast_without_allocating(small_trained: ad.AnnData,
                                                         arch: dict) -> None:
    rec = _classifier(small_trained)
    rec["arch"].update(arch)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ScadvInputError, match="classifier"):
            M.from_record(rec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6 and time.perf_counter() - t0 < 5


def test_declared_sizes_that_disagree_with_the_stored_weights_fail_before_building(
        small_trained: ad.AnnData) -> None:
    rec = _classifier(small_trained)
    n_input = int(rec["arch"]["n_input"])
    rec["arch"]["hidden"] = np.array([60_000, 60_000, 64])  # 3.6e9 bytes if built
    tracemalloc.start()
    try:
        with pytest.raises(ScadvInputError, match="do not match|declares"):
            M.from_record(rec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6, (peak, n_input)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r.pop("arch"), "'arch' is missing"),
    (lambda r: r["arch"].pop("n_input"), "'n_input' is missing"),
    (lambda r: r["arch"].update(n_input="100"), "'n_input' must be a number"),
    (lambda r: r["arch"].update(hidden="256"), "must be an array"),
    (lambda r: r["arch"].update(dropout=np.array([0.4])), "dropout rates"),
    (lambda r: r.update(classes=np.array(["a", "a", "b"])), "repeats names"),
    (lambda r: r.update(classes=np.array([1, 2, 3])), "must hold strings"),
    (lambda r: r.update(genes=r["genes"][:-1]), "'genes' has"),
    (lambda r: r["weights"].pop("head.bias"), "missing \\['head.bias'\\]"),
    (lambda r: r["weights"].update(extra=np.zeros(2)), "unexpected \\['extra'\\]"),
    (lambda r: r["weights"].update({"head.bias": "abc"}), "'head.bias' must be an array"),
    (lambda r: r["weights"].update({"head.bias": np.zeros(7)}), "expected \\(3,\\)"),
    (lambda r: r["weights"].update({"head.bias": np.zeros(3, dtype=np.int64)}), "dtype int64"),
    (lambda r: r.update(weights=[1, 2]), "must be a dictionary"),
    (lambda r: r.update(prepare="None"), "'prepare' must be a dictionary"),
    (lambda r: r["prepare"].update(input_kind="pickle"), "'input_kind' must be one of"),
    (lambda r: r["prepare"].update(genes=r["prepare"]["genes"][::-1]), "differ from the genes"),
    (lambda r: r.update(format_version="1"), "'format_version' must be a number"),
    (lambda r: r.update(format_version=99), "newer than this scadv"),
    (lambda r: r.update(kind="something"), "not a scadv classifier record"),
])
def test_malformed_classifier_entries_are_clear_errors(small_trained: ad.AnnData, mutate,
                                                       message: str) -> None:
    rec = _classifier(small_trained)
    mutate(rec)
    with pytest.raises(ScadvInputError, match=message):
        M.from_record(rec)


def test_a_malformed_stored_recipe_is_an_error_not_ignored(small_trained: ad.AnnData) -> None:
    a = small_trained
    a.uns["scadv"]["prepare"]["std"] = a.uns["scadv"]["prepare"]["std"][:-3]
    with pytest.raises(ScadvInputError, match="preprocessing recipe is malformed: 'std'"):
        scadv.tl.train_classifier(a, "cell_type", key_added="again", progress=False)
    with pytest.raises(ScadvInputError, match="'std'"):
        scadv.pp.transform(a.copy(), reference=a)


# ---- the detector ----------------------------------------------------------------------------


def test_fingerprint_covers_weights_and_recipe_and_accepts_old_records(
        small_meta: ad.AnnData) -> None:
    a = small_meta
    det = a.uns["scadv"]["meta"]
    assert int(det["classifier_fingerprint_version"]) == MC.FINGERPRINT_VERSION
    clf = copy.deepcopy(dict(a.uns["scadv"]["classifier"]))
    assert MC.same_classifier(det, clf)
    shifted = copy.deepcopy(clf)
    shifted["prepare"]["mean"] = shifted["prepare"]["mean"] + 0.25  # same weights, new input
    assert not MC.same_classifier(det, shifted)
    old = copy.deepcopy(dict(det))  # a detector written by scadv 0.1
    del old["classifier_fingerprint_version"]
    old["classifier_fingerprint"] = MC.legacy_fingerprint(clf)
    assert MC.same_classifier(old, clf)
    retrained = copy.deepcopy(clf)
    retrained["weights"]["head.bias"] = retrained["weights"]["head.bias"] + 1e-3
    retrained["weights_sha256"] = REC.weights_sha256(retrained["weights"])
    assert not MC.same_classifier(det, retrained)
    assert not MC.same_classifier(old, retrained)
    a.uns["scadv"]["classifier"] = retrained
    with pytest.raises(ScadvInputError, match="another version of classifier"):
        scadv.tl.meta_score(a, progress=False)
