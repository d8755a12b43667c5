"""Every tutorial runs offline, start to finish, on the shipped data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO

TUTORIALS = sorted((REPO / "tutorials").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", TUTORIALS, ids=[t.stem for t in TUTORIALS])
def test_tutorial_runs(script: Path, tmp_path, pbmc3k_path):
    env = {**os.environ, "SCADV_DATA": str(DATA), "SCADV_TUTORIAL_OUT": str(tmp_path),
           "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(tmp_path.glob("*.png")) and any(tmp_path.glob("*.h5ad"))


def test_tutorials_exist():
    assert TUTORIALS, "the tutorials/ folder holds no tutorial"
