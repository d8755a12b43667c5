"""The README's Python snippets run as written, in order, on the shared data."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pytest
import scanpy as sc

from tests.conftest import DATA, PBMC3K, REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_python_snippets_on_the_shared_data():
    assert len(BLOCKS) >= 2
    assert '"../shared/data"' in BLOCKS[0] and "SCADV_DATA" in BLOCKS[0]


@pytest.mark.slow
def test_readme_snippets_run_as_written(tmp_path, monkeypatch):
    if not PBMC3K.exists():
        pytest.skip(f"{PBMC3K.name} not found in {DATA} (set SCADV_DATA)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCADV_DATA", str(DATA))
    figdir = sc.settings.figdir
    sc.settings.figdir = tmp_path / "figures"
    namespace: dict = {}
    try:
        for i, block in enumerate(BLOCKS):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
            plt.close("all")
    finally:
        sc.settings.figdir = figdir
    assert (tmp_path / "figures" / "scadv_report.html").stat().st_size > 10_000
    assert (tmp_path / "pbmc3k_scadv.h5ad").exists()
    assert "scadv_pred" in namespace["new_cells"].obs
    assert "overview" in namespace["markers"].uns["scadv"]
    assert len(namespace["adata"].uns["scadv"]["max_change"]["signature"]) > 0
