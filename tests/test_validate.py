"""The input checks of ``scadv._validate``: option validators, matrix checks, AnnData names."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scadv import _validate as V
from scadv._errors import ScadvInputError
from scadv.tl import _common as C


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_positive_int_accepts_integers(value: object) -> None:
    out = V.positive_int("n", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(("value", "message"), [
    (0, "n must be ≥ 1, got 0"), (-3, "≥ 1"), (True, "must be an integer"),
    (np.bool_(True), "must be an integer"), (1.5, "must be an integer"),
    (2.0, "must be an integer"), ("3", "must be an integer"), (None, "must be an integer"),
    (float("nan"), "must be an integer"), ([1], "must be an integer"), (2**70, "≤"),
])
def test_positive_int_refuses(value: object, message: str) -> None:
    with pytest.raises(ScadvInputError, match=message):
        V.positive_int("n", value)


@pytest.mark.parametrize(("value", "message"), [
    (float("nan"), "finite"), (float("inf"), "finite"), (-float("inf"), "finite"),
    ("0.1", "must be a number"), (True, "must be a number"), (1 + 0j, "must be a number"),
    (None, "must be a number"), ([0.1], "must be a number"), (0.0, "must be positive"),
    (-1, "must be positive"),
])
def test_positive_refuses(value: object, message: str) -> None:
    with pytest.raises(ScadvInputError, match=message):
        V.positive("eps", value)


def test_real_ranges_and_types() -> None:
    assert V.positive("x", np.float32(0.5)) == pytest.approx(0.5)
    assert V.nonneg("x", 0) == 0.0
    assert V.fraction("f", 0.3) == pytest.approx(0.3)
    for bad in (0.0, 1.0, 1.2, -0.1):
        with pytest.raises(ScadvInputError, match="f must be"):
            V.fraction("f", bad)
    assert V.fraction("f", 1.0, closed_high=True) == 1.0
    with pytest.raises(ScadvInputError, match=r"weight_decay must be non-negative \(≥ 0\)"):
        V.nonneg("weight_decay", -1)


def test_reals_and_ints() -> None:
    assert V.reals("eps", 0.1) == (0.1,)
    assert V.reals("eps", np.array([0.1, 0.2])) == (0.1, 0.2)
    assert V.ints("hidden", (8, np.int64(4))) == (8, 4)
    for bad, message in (([], "at least one"), ((0.1, "a"), r"eps\[1\] must be a number"),
                         (np.zeros((2, 2)), "one-dimensional"), ({"a": 1}, "list / tuple"),
                         ("0.1", "list / tuple"), ((0.1, float("nan")), "finite")):
        with pytest.raises(ScadvInputError, match=message):
            V.reals("eps", bad, low=0.0, low_open=True)
    with pytest.raises(ScadvInputError, match=r"hidden\[1\] must be ≥ 1"):
        V.ints("hidden", (8, 0))
    with pytest.raises(ScadvInputError, match="list or tuple"):
        V.ints("hidden", 8)


def test_flag_choice_and_names() -> None:
    assert V.flag("copy", np.bool_(False)) is False
    for bad in (1, 0, "yes", None, [True]):
        with pytest.raises(ScadvInputError, match="copy must be True or False"):
            V.flag("copy", bad)
    assert V.choice("norm", "l2", ("linf", "l2")) == "l2"
    for bad in ("L2", ["l2"], np.array(["l2"]), True, None):
        with pytest.raises(ScadvInputError, match="norm must be one of"):
            V.choice("norm", bad, ("linf", "l2"))
    assert V.names("layers", "a") == ("a",)
    assert V.names("layers", ["a", "b"]) == ("a", "b")
    assert V.names("layers", None, allow_none=True) is None
    with pytest.raises(ScadvInputError, match="list of names"):
        V.names("include_genes", "CD3E", single=False)
    with pytest.raises(ScadvInputError, match=r"layers\[1\] must be a name"):
        V.names("layers", ["a", 3])
    with pytest.raises(ScadvInputError, match="non-empty list"):
        V.names("layers", [])
    with pytest.raises(ScadvInputError, match="non-empty"):
        V.name("label_key", "")


@pytest.mark.parametrize(("value", "message"), [
    ("my/model", "contains '/'"), ("", "is empty"), ("prepare", "reserved"),
    ("provenance", "reserved"), ("perturbations", "reserved"), (" pgd", "surrounding spaces"),
    ("pgd\n", "control characters"), (3, "must be a string"), (None, "must be a string"),
    ("x" * 201, "longer than 200"),
])
def test_key_name_refuses_unsafe_and_reserved(value: object, message: str) -> None:
    with pytest.raises(ScadvInputError, match=message):
        V.key_name("key_added", value)


def test_key_name_accepts_plain_names() -> None:
    assert V.key_name("key_added", "pgd_eps0.1 run-2") == "pgd_eps0.1 run-2"
    assert V.key_name("key_added", None, allow_none=True) is None


def test_clip_seed_device() -> None:
    V.clip("clip", None)
    V.clip("clip", "observed")
    V.clip("clip", (-1, 2.5))
    for bad in ("obs", (1, 1), (2, 1), (0, float("inf")), 3.0, (0, 1, 2), ("a", 1)):
        with pytest.raises(ScadvInputError, match="clip"):
            V.clip("clip", bad)
    assert V.seed(0) == 0
    for bad in (-1, 1.0, "1", 2**63, True):
        with pytest.raises(ScadvInputError, match="seed"):
            V.seed(bad)
    for bad in (3, "", None):
        with pytest.raises(ScadvInputError, match="device"):
            V.device(bad)


def test_options_checks_the_standard_options_by_name() -> None:
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    V.options({"adata": adata, "copy": False, "seed": 1, "key_added": None, "ax": None})
    for params, message in (
            ({"adata": np.ones((3, 2))}, "expected an AnnData"),
            ({"copy": "no"}, "copy must be True or False"),
            ({"batch_size": 0}, "batch_size must be ≥ 1"),
            ({"key_added": "a/b"}, "contains '/'"),
            ({"layer": 3}, "layer must be a name"),
            ({"show": 1}, "show must be True or False"),
            ({"save": 3}, "save must be a file name"),
            ({"ax": "left"}, "ax must be matplotlib Axes")):
        with pytest.raises(ScadvInputError, match=message):
            V.options(params)
    fig, axes = plt.subplots(1, 2)
    V.options({"ax": axes})
    V.options({"ax": axes[0]})
    plt.close(fig)


# ---- matrices -----------------------------------------------------------------------------


@pytest.mark.parametrize(("x", "message"), [
    (np.array([["a", "b"], ["c", "d"]], dtype=object), "Python objects"),
    (np.ones((2, 2), dtype=bool), "booleans"),
    (np.ones((2, 2), dtype=complex), "complex numbers"),
    (np.ones(3), "2-d matrix"),
    ([[1, 2], [3, 4]], "not a matrix"),
])
def test_matrix_dtype_problems_are_refused(x: object, message: str) -> None:
    for check in (V.check_finite, V.detect_kind, V.check_counts):
        with pytest.raises(ScadvInputError, match=message):
            check(x, what="adata.X")  # type: ignore[operator]


def test_integer_data_with_negatives_is_refused_not_read_as_scaled() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(50, 20)).astype(np.float32)
    counts[rng.random(counts.shape) < 0.05] = -1  # 5% negative entries, still whole numbers
    with pytest.raises(ScadvInputError, match="whole numbers"):
        V.detect_kind(counts, what="adata.X")
    with pytest.raises(ScadvInputError, match="whole numbers"):
        V.detect_kind(sparse.csr_matrix(counts), what="adata.X")
    z = rng.normal(size=(50, 20)).astype(np.float32)
    assert V.detect_kind(z, what="adata.X") == "scaled"
    few = np.abs(z)
    few[0, 0] = -1.5
    with pytest.raises(ScadvInputError, match="1 negative values"):
        V.detect_kind(few, what="adata.X")
    assert V.detect_kind(np.abs(z), what="adata.X") == "lognorm"
    assert V.detect_kind(np.abs(np.round(z * 3)), what="adata.X") == "counts"


def _adata(obs_names: list[str], var_names: list[str]) -> ad.AnnData:
    a = ad.AnnData(np.ones((len(obs_names), len(var_names)), dtype=np.float32),
                   obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=var_names))
    return a


def test_repeated_gene_names_are_refused_at_the_start() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _adata(["c0", "c1"], ["g0", "g1", "g0"])
    with pytest.raises(ScadvInputError, match="var_names_make_unique"):
        V.start(a, copy=False)


def test_cells_by_name_need_unique_cell_names() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _adata(["c0", "c1", "c0"], ["g0", "g1"])
    with pytest.raises(ScadvInputError, match="repeated cell names"):
        C.select_cells(a, ["c0"], split_key="s")
    mask = C.select_cells(a, np.array([True, False, True]), split_key="s")
    assert mask.tolist() == [True, False, True]  # a mask needs no names
    for bad, message in ((5, "list of cell names"), ([1, 2], "cell names"),
                         ([["c0"]], "one-dimensional")):
        with pytest.raises(ScadvInputError, match=message):
            C.select_cells(a, bad, split_key="s")
