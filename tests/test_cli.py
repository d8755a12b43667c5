"""The scadv command line."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np

from scadv.cli import main


def test_demo_writes_h5ad_figures_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "clean test accuracy" in out and "ε=0.1" in out and "flip rate" in out
    for name in ("scadv_pbmc68k_reduced.h5ad", "flip_rate.png", "umap_flipped.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 1000
    back = ad.read_h5ad(tmp_path / "demo" / "scadv_pbmc68k_reduced.h5ad")
    assert "pgd" in back.uns["scadv"]
    assert "scadv_pgd_eps0.1" in back.uns["scadv"]["perturbations"]


def test_audit_user_file(pbmc3k_path, tmp_path, capsys):
    code = main(["audit", str(pbmc3k_path), "--label-key", "cell_type", "--out",
                 str(tmp_path / "audit"), "--eps", "0.1", "--cells", "all"])
    assert code == 0
    out = capsys.readouterr().out
    assert "2700 cells" in out and "on 2700 all cells" in out
    assert (tmp_path / "audit" / "scadv_pbmc3k_raw.h5ad").exists()


def test_audit_errors_are_clear(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.h5ad"), "--label-key", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err
    path = tmp_path / "small.h5ad"
    ad.AnnData(X=np.ones((1, 1), dtype=np.float32)).write_h5ad(path)
    assert main(["audit", str(path), "--label-key", "cell_type"]) == 1
    assert "label key 'cell_type' not found" in capsys.readouterr().err


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "scadv.cli", "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith("scadv ")
