"""A matrix of bad inputs across the public API: every bad option value of every public
``pp`` / ``tl`` / ``pl`` function must give a :class:`~scadv.ScadvInputError` that names the
problem, and leave the input AnnData untouched (cases in :mod:`.cases`)."""

from __future__ import annotations

import pytest

from . import cases as CS

CASES = CS.bad_input_cases()

#: Options whose errors name the offending value or record rather than the option itself.
NAMED_BY_VALUE = {"cluster_key", "#0", "adata", "modification", "target", "kinds", "perturbations",
                  "genes", "cells", "reference", "layers", "de_key", "label_key", "classes",
                  "truth", "keys", "to", "models", "features", "model", "key", "detector",
                  "source", "layer", "max_size", "k", "n_genes", "metric", "baseline",
                  "n_lineages", "type_weight", "n_cells", "type_proportions"}


def test_the_matrix_is_large_and_covers_every_public_function() -> None:
    import scadv

    assert len(CASES) >= 200
    covered = {c.call.func for c in CASES}
    public = {f"{ns}.{name}" for ns in ("pp", "tl", "pl", "get")
              for name in getattr(scadv, ns).__all__} | {"datasets.simulate"}
    assert public <= covered, sorted(public - covered)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_that_changes_nothing(case: CS.Case) -> None:
    out = CS.run_case(case)
    assert out.kind == "error", f"{case.id}: {out.kind} {out.message}"
    assert out.unchanged, f"{case.id} changed the AnnData before raising"
    if case.option not in NAMED_BY_VALUE:
        assert case.option in out.message, out.message
