"""Every tutorial runs offline, start to finish, on the shipped data, as a notebook."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TUTORIALS


@pytest.mark.slow
@pytest.mark.parametrize("stem", [t.stem for t in TUTORIALS])
def test_tutorial_runs(stem: str, executed_tutorials):
    notebook, error = executed_tutorials[stem]
    assert error is None, error
    out = notebook.parent
    assert any(out.glob("*.png")) and any(out.glob("*.h5ad"))
    cells = json.loads(notebook.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # the rendered tutorial shows its figures
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_tutorials_exist():
    assert TUTORIALS, "the tutorials/ folder holds no tutorial"
