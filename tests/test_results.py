"""``scadv._results.write_results``: unsafe and reserved keys are refused before anything is
written, and replacing an earlier record is announced."""

from __future__ import annotations

import io
from collections.abc import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scadv
from scadv._errors import ScadvInputError
from scadv._results import write_results

from .conftest import assert_unchanged, snapshot


def _adata() -> ad.AnnData:
    return ad.AnnData(np.ones((4, 3), dtype=np.float32),
                      obs=pd.DataFrame(index=[f"c{i}" for i in range(4)]))


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """scanpy's log at warning level, as text."""
    buf = io.StringIO()
    verbosity, logfile = sc.settings.verbosity, sc.settings.logfile
    sc.settings.verbosity = 1
    sc.settings.logfile = buf
    try:
        yield buf
    finally:
        sc.settings.verbosity = verbosity
        sc.settings.logfile = logfile


@pytest.mark.parametrize("kwargs", [
    {"uns": {"my/model": {"a": 1}}},
    {"uns": {"": {"a": 1}}},
    {"uns": {"ok": {"nested/key": 1}}},
    {"obs": {"scadv_my/model_pred": np.zeros(4)}},
    {"layers": {"scadv_a/b": np.zeros((4, 3))}},
    {"obsm": {"": np.zeros((4, 2))}},
    {"colors": {"a/b": ["#000000"]}},
])
def test_keys_that_cannot_be_read_back_are_refused_before_writing(kwargs: dict) -> None:
    a = _adata()
    before = snapshot(a)
    kwargs = {"obs": {"scadv_fine": np.ones(4)}, **kwargs}
    with pytest.raises(ScadvInputError, match="'/'"):
        write_results(a, step="test", **kwargs)
    assert_unchanged(a, before)


@pytest.mark.parametrize("key", ["prepare", "provenance", "perturbations"])
def test_reserved_records_are_not_replaced_by_other_results(key: str) -> None:
    a = _adata()
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="reserved"):
        write_results(a, step="test", uns={key: {"method": "pgd", "n": np.arange(3)}},
                      obs={"scadv_fine": np.ones(4)})
    assert_unchanged(a, before)


def test_a_foreign_uns_entry_is_refused_before_anything_is_written() -> None:
    a = _adata()
    a.uns["scadv"] = "not a dictionary"
    before = snapshot(a)
    with pytest.raises(ScadvInputError, match="not the dictionary"):
        write_results(a, step="test", uns={"run": {"a": 1}}, obs={"scadv_fine": np.ones(4)})
    assert_unchanged(a, before)


def test_replacing_a_record_warns_and_names_the_way_to_keep_both(log: io.StringIO) -> None:
    a = _adata()
    write_results(a, step="first", uns={"run": {"method": "pgd", "x": 1}})
    assert "replacing" not in log.getvalue()
    write_results(a, step="second", uns={"run": {"method": "fgsm", "x": 2}})
    text = log.getvalue()
    assert "replacing the earlier pgd record" in text and "key_added='run_2'" in text
    assert a.uns["scadv"]["run"]["x"] == 2
    log.truncate(0)
    write_results(a, step="update", uns={"run": {"method": "fgsm", "x": 3}}, update={"run"})
    assert "replacing" not in log.getvalue()


def test_key_added_with_a_slash_no_longer_loses_the_file(small_trained: ad.AnnData,
                                                         tmp_path) -> None:
    """``key_added='my/model'`` used to write an .h5ad that read_h5ad could not open."""
    a = small_trained
    before = snapshot(a)
    for call in (lambda: scadv.tl.train_classifier(a, "cell_type", key_added="my/model",
                                                   max_epochs=1, progress=False),
                 lambda: scadv.tl.pgd(a, eps=0.1, key_added="my/pgd", progress=False),
                 lambda: scadv.tl.predict(a, key_added="prepare"),
                 lambda: scadv.tl.pgd(a, eps=0.1, key_added="provenance", progress=False)):
        with pytest.raises(ScadvInputError, match="key_added"):
            call()
    assert_unchanged(a, before)
    a.write_h5ad(tmp_path / "ok.h5ad")
    back = ad.read_h5ad(tmp_path / "ok.h5ad")
    assert "classifier" in back.uns["scadv"]


def test_second_attack_run_with_the_same_key_warns(small_trained: ad.AnnData,
                                                    log: io.StringIO) -> None:
    a = small_trained
    scadv.tl.fgsm(a, eps=0.2, cells="all", progress=False)
    assert "replacing" not in log.getvalue()
    scadv.tl.fgsm(a, eps=0.3, cells="all", progress=False)
    assert "replacing the earlier" in log.getvalue()
    assert "uns['scadv']['fgsm']" in log.getvalue()
