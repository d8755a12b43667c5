"""Peak memory: no step of the chain allocates a dense cells × all-genes matrix.

20,000 synthetic cells × 10,000 genes (sparse counts): a dense float32 copy of all genes is
800 MB. Each step's peak of Python-level allocations (numpy arrays included, via tracemalloc)
must stay far below that.
"""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scadv

N_CELLS, N_GENES, NNZ_PER_CELL = 20_000, 10_000, 150
DENSE_ALL_GENES = N_CELLS * N_GENES * 4
LIMIT = DENSE_ALL_GENES // 2


def _atlas(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    n_types = 4
    labels = rng.integers(0, n_types, N_CELLS)
    # each type prefers its own block of 50 genes; the rest is shared background
    weights = rng.gamma(0.3, 1.0, N_GENES)
    rows = np.repeat(np.arange(N_CELLS), NNZ_PER_CELL)
    cols = rng.choice(N_GENES, size=N_CELLS * NNZ_PER_CELL, p=weights / weights.sum())
    marker = rng.random(len(rows)) < 0.3
    cols[marker] = labels[rows[marker]] * 50 + rng.integers(0, 50, marker.sum())
    vals = rng.geometric(0.5, len(rows)).astype(np.float32)
    x = sparse.csr_matrix((vals, (rows, cols)), shape=(N_CELLS, N_GENES))
    x.sum_duplicates()
    return ad.AnnData(
        X=x, obs=pd.DataFrame({"cell_type": pd.Categorical([f"t{v}" for v in labels])},
                              index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_chain_never_densifies_all_genes(tmp_path):
    a = _atlas()
    peaks = {
        "prepare": _peak(lambda: scadv.pp.prepare(a, progress=False)),
        "train": _peak(lambda: scadv.tl.train_classifier(a, "cell_type", max_epochs=2,
                                                         progress=False)),
        "pgd": _peak(lambda: scadv.tl.pgd(a, eps=(0.1,), progress=False)),
        "predict": _peak(lambda: scadv.tl.predict(a, progress=False)),
        # the gene statistics over all cells (sorted non-background values) and the largest
        # cluster's rows, CELL_BLOCK cells at a time
        "single_gene": _peak(lambda: scadv.tl.single_gene(
            a, cluster_key="cell_type", target="t0", progress=False,
            genes=list(np.asarray(a.uns["scadv"]["prepare"]["genes"])[:300]))),
    }
    path = tmp_path / "atlas.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    peaks["predict (backed)"] = _peak(lambda: scadv.tl.predict(backed, progress=False))
    backed.file.close()
    over = {k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items() if v > LIMIT}
    assert not over, (f"steps over {LIMIT / 2**20:.0f} MiB (a dense copy of all genes is "
                      f"{DENSE_ALL_GENES / 2**20:.0f} MiB): {over}")
    assert np.array_equal(a.X.shape, (N_CELLS, N_GENES))  # X untouched: all genes, sparse
    assert sparse.issparse(a.X)
