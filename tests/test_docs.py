"""The documentation builds without warnings, renders the executed tutorials and shows an
example figure on every plot's page."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import scadv
from tests.conftest import REPO, TUTORIALS


def test_every_public_function_is_in_the_api_reference():
    api = (REPO / "docs" / "api.md").read_text()
    for ns in ("pp", "tl", "pl", "datasets"):
        for name in getattr(scadv, ns).__all__:
            assert f"{ns}.{name}" in api, f"scadv.{ns}.{name} is missing from docs/api.md"


def test_every_plot_has_an_example_figure_in_the_docs():
    text = (REPO / "docs" / "_examples.py").read_text()
    for name in scadv.pl.__all__:
        if name == "report":  # an HTML document, shown in docs/app.md
            continue
        assert f'"scadv.pl.{name}": _snippet(' in text, f"no example figure for scadv.pl.{name}"


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path, executed_tutorials):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    failed = {k: e for k, (_, e) in executed_tutorials.items() if e is not None}
    if failed:
        pytest.fail(f"tutorials failed to execute (see test_tutorials): {list(failed)}")
    executed = tmp_path / "executed"
    executed.mkdir()
    for notebook, _ in executed_tutorials.values():
        (executed / notebook.name).write_bytes(notebook.read_bytes())
    env = {**os.environ, "SCADV_EXECUTED_TUTORIALS": str(executed), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(REPO / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=1500, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    html = tmp_path / "html"
    assert (html / "generated" / "scadv.tl.pgd.html").exists()
    for name in scadv.pl.__all__:
        if name == "report":
            continue
        page = (html / "generated" / f"scadv.pl.{name}.html").read_text()
        assert re.search(r'<img[^>]+class="plot-directive"', page), name
    for script in TUTORIALS:
        page = (html / "tutorials" / f"{script.stem}.html").read_text()
        assert "# %%" not in page  # rendered cells, not the raw script
        assert page.count("<img") >= 1, f"{script.stem}: no figure rendered"
    for extra in ("install", "changelog", "citing", "app"):
        assert (html / f"{extra}.html").exists()


def test_every_plot_documents_ax_show_save():
    for name in scadv.pl.__all__:
        doc = getattr(scadv.pl, name).__doc__
        assert "{ax_show_save}" not in doc, f"scadv.pl.{name}: unfilled docstring placeholder"
        for param in ("show", "save") if name == "report" else ("ax", "show", "save"):
            assert f"\n    {param}\n" in doc or f"\n{param}\n" in doc, (name, param)
