"""One rank of the 2-process gloo group of ``test_distributed.py`` (run by the test with
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set, as torchrun would)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import scanpy as sc
import torch

import scadv
from scadv.tl._training import _train as T
from tests.conftest import make_counts

#: Two configurations: the default model (PCA input layer, projected once, dropout) and a
#: plain MLP with input noise, class weights, label smoothing and an odd minibatch size.
CONFIGS: dict[str, dict] = {
    "default": {},
    "plain": {"input_rank": None, "input_noise": 0.1, "class_weight": "balanced",
              "label_smoothing": 0.1, "batch_size": 25},
}
#: Small passes over the cells, so that the PCA's sums span several batches shared out.
PCA_BATCH = 32


def data():
    a = make_counts(n_per_class=50, n_genes=200, seed=1)
    scadv.pp.prepare(a, n_top_genes=80, progress=False)
    return a


def train(a, name: str, *, distributed: bool) -> dict[str, np.ndarray]:
    T._pca_projection.__kwdefaults__["batch_size"] = PCA_BATCH
    scadv.tl.train_classifier(a, "cell_type", max_epochs=6, patience=10, progress=False,
                              distributed=distributed, **CONFIGS[name])
    rec = a.uns["scadv"]["classifier"]
    out = {f"w/{k}": np.asarray(v) for k, v in rec["weights"].items()}
    out.update({f"h/{k}": np.asarray(v) for k, v in rec["history"].items()})
    out["proba"] = a.obsm["scadv_proba"]
    out["pred"] = a.obs["scadv_pred"].cat.codes.to_numpy()
    return out


def main(out: str) -> None:
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    torch.set_num_threads(1)
    res = {}
    for name in CONFIGS:
        res.update({f"{name}/{k}": v for k, v in train(data(), name, distributed=True).items()})
    np.savez(out, **res)


if __name__ == "__main__":
    main(sys.argv[1])
