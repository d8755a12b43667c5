"""Tampered files: every stored record type (classifier, recipe, detector, attack, gene-attack,
attribution and check records) with one entry corrupted (deleted, wrong type, wrong shape,
wrong dtype, NaN / inf, huge sizes, strings where arrays go, nested junk, code in strings),
read back from .h5ad and handed to every function that loads it. Each must give a
:class:`~scadv.ScadvInputError` (leaving the AnnData as it was) or work; never another
exception, never code execution (cases in :mod:`.cases`)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import anndata as ad
import pytest
import torch

from . import cases as CS

CASES = CS.tampered_cases()


@pytest.fixture(autouse=True)
def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a record must never unpickle anything."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stored record was unpickled")

    for module, name in ((pickle, "loads"), (pickle, "load"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_every_record_type_and_operator_is_covered() -> None:
    assert len(CASES) >= 100
    assert {c.record for c in CASES} == {key for _, key in CS._loaders()}
    assert {c.op for c in CASES} == set(CS.OPS) | set(CS.OBSM_OPS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tampered_record_is_a_clear_error_or_works(case: CS.Tamper) -> None:
    for name, out in CS.run_tampered(case):
        assert out.kind in ("error", "accepted"), f"{case.id} → {name}: {out.message}"
        assert out.unchanged, f"{case.id} → {name} changed the AnnData before raising"
    assert not Path(CS.CODE_MARKER).exists()


@pytest.mark.parametrize("record", sorted({(c.data, c.record) for c in CASES}),
                         ids=lambda r: r[1])
def test_tampered_files_round_trip(record: tuple[str, str], tmp_path: Path) -> None:
    """The whole file written and read back, for one tampered entry per record type."""
    case = next(c for c in CASES if (c.data, c.record) == record and c.path)
    adata = CS.tampered(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(tmp_path / "tampered.h5ad")
        back = ad.read_h5ad(tmp_path / "tampered.h5ad")
    for name, call in CS._loaders()[record]:
        out = CS.run(lambda c=call: c(back), back)
        assert out.kind in ("error", "accepted"), f"{case.id} → {name}: {out.message}"
