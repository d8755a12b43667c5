"""The documentation builds without warnings and lists every public function."""

from __future__ import annotations

import subprocess
import sys

import pytest

import scadv
from tests.conftest import REPO


def test_every_public_function_is_in_the_api_reference():
    api = (REPO / "docs" / "api.md").read_text()
    for ns in ("pp", "tl", "pl", "datasets"):
        for name in getattr(scadv, ns).__all__:
            assert f"{ns}.{name}" in api, f"scadv.{ns}.{name} is missing from docs/api.md"


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(REPO / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "html" / "generated" / "scadv.tl.pgd.html").exists()


def test_every_plot_documents_ax_show_save():
    for name in scadv.pl.__all__:
        doc = getattr(scadv.pl, name).__doc__
        assert "{ax_show_save}" not in doc, f"scadv.pl.{name}: unfilled docstring placeholder"
        for param in ("show", "save") if name == "report" else ("ax", "show", "save"):
            assert f"\n    {param}\n" in doc or f"\n{param}\n" in doc, (name, param)
