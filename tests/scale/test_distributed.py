"""Data-parallel training in a 2-process gloo group equals single-process training.

Measured (2 ranks, these two configurations): the PCA input layer is bit for bit the same; the
trained weights, probabilities and losses differ by at most ~3e-7 (float32 rounding of the
gradient's summation order: two half-batch sums all-reduced instead of one full-batch sum);
predictions, epochs and validation accuracies are identical; both ranks hold the same model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from scadv._errors import ScadvInputError
from tests.conftest import REPO
from tests.scale import ddp_worker as W

TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_rank_gloo_training_equals_one_process(tmp_path, monkeypatch):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.scale.ddp_worker",
                               str(tmp_path / f"rank{r}.npz")], cwd=REPO,
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    # meanwhile, the single-process runs here
    monkeypatch.setitem(W.T._pca_projection.__kwdefaults__, "batch_size", W.PCA_BATCH)
    single = {}
    for name in W.CONFIGS:
        single.update({f"{name}/{k}": v
                       for k, v in W.train(W.data(), name, distributed=False).items()})
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert sorted(ranks[0].files) == sorted(single)
    for key, value in single.items():
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)  # same model
        if key.endswith(("input.weight", "input.bias", "/pred", "h/epoch", "h/best_epoch",
                         "h/val_accuracy")):
            np.testing.assert_array_equal(ranks[0][key], value, err_msg=key)
        else:
            np.testing.assert_allclose(ranks[0][key], value, rtol=0, atol=TOL, err_msg=key)


def test_distributed_without_a_process_group_says_how_to_launch(small_trained, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    import scadv

    with pytest.raises(ScadvInputError, match="torchrun --nproc-per-node"):
        scadv.tl.train_classifier(small_trained, "cell_type", distributed=True, progress=False)
