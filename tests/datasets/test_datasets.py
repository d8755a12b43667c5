"""scadv.datasets: bundled and local data, never a download in tests."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from scipy import io, sparse

import scadv
from scadv._errors import ScadvInputError


def test_pbmc68k_reduced_is_bundled():
    a = scadv.datasets.pbmc68k_reduced()
    assert a.shape == (700, 765) and "bulk_labels" in a.obs


def test_pbmc3k_from_h5ad(pbmc3k_path):
    a = scadv.datasets.pbmc3k(pbmc3k_path)
    assert a.shape == (2700, 32738)
    assert a.obs["cell_type"].notna().sum() == 2638


def test_pbmc3k_from_10x_folder(tmp_path):
    rng = np.random.default_rng(0)
    m = sparse.random(5, 4, density=0.5, random_state=rng, format="coo") * 10
    m.data = np.round(m.data)
    with gzip.open(tmp_path / "matrix.mtx.gz", "wb") as f:
        io.mmwrite(f, sparse.coo_matrix(m.T))  # genes × cells, as 10x writes it
    with gzip.open(tmp_path / "features.tsv.gz", "wt") as f:
        f.writelines(f"ENSG{i}\tGENE{i % 3}\tGene Expression\n" for i in range(4))
    with gzip.open(tmp_path / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"CELL{i}-1\n" for i in range(5))
    a = scadv.datasets.pbmc3k(tmp_path)
    assert a.shape == (5, 4) and a.var_names.is_unique


def test_bad_paths(tmp_path):
    with pytest.raises(ScadvInputError, match="does not exist"):
        scadv.datasets.pbmc3k(tmp_path / "nope.h5ad")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ScadvInputError, match="unsupported file"):
        scadv.datasets.pbmc3k(tmp_path / "x.csv")
