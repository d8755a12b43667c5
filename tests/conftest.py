"""Shared fixtures: real PBMC3k (skipped cleanly when absent) and small synthetic data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse

matplotlib.use("Agg")
sc.settings.verbosity = 0
# Results depend on torch's CPU thread count in their last bits (BLAS splits its sums over
# threads), and sign-based attacks and training can amplify that (docs/usage.md,
# benchmarks/thread_determinism.py): the suite pins one thread, so its numbers do not depend
# on the machine's core count.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    """The shared data: $SCADV_DATA, else ../shared/data beside the checkout, else shared/data
    inside it."""
    if "SCADV_DATA" in os.environ:
        return Path(os.environ["SCADV_DATA"])
    for candidate in (REPO.parent / "shared" / "data", REPO / "shared" / "data"):
        if candidate.exists():
            return candidate
    return REPO.parent / "shared" / "data"


DATA = _data_dir()
PBMC3K = DATA / "pbmc3k_raw.h5ad"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} not found in {path.parent} (set SCADV_DATA to the folder "
                    "holding the shared data to run this test)")
    return path


@pytest.fixture(scope="session")
def pbmc3k_path() -> Path:
    return _need(PBMC3K)


@pytest.fixture(scope="session")
def _pbmc3k_raw(pbmc3k_path: Path) -> ad.AnnData:
    return ad.read_h5ad(pbmc3k_path)


@pytest.fixture
def pbmc3k_raw(_pbmc3k_raw: ad.AnnData) -> ad.AnnData:
    """Raw PBMC3k counts (a fresh copy per test)."""
    return _pbmc3k_raw.copy()


@pytest.fixture(scope="session")
def _pbmc3k_trained(_pbmc3k_raw: ad.AnnData) -> ad.AnnData:
    import scadv

    adata = _pbmc3k_raw.copy()
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, "cell_type", progress=False)
    scadv.tl.pgd(adata, progress=False)
    return adata


@pytest.fixture
def pbmc3k_trained(_pbmc3k_trained: ad.AnnData) -> ad.AnnData:
    """PBMC3k prepared, with the default classifier trained and PGD run (a fresh copy)."""
    return _pbmc3k_trained.copy()


@pytest.fixture(scope="session")
def _pbmc3k_meta(_pbmc3k_trained: ad.AnnData) -> ad.AnnData:
    import scadv

    adata = _pbmc3k_trained.copy()
    scadv.tl.pgd(adata, eps=0.5, keep_zeros=True, clip="observed", key_added="realistic",
                 progress=False)
    scadv.tl.adaptive_count_attack(adata, detector=None, progress=False)
    scadv.tl.benign_perturb(adata)
    scadv.tl.meta_detect(adata, progress=False)
    return adata


@pytest.fixture
def pbmc3k_meta(_pbmc3k_meta: ad.AnnData) -> ad.AnnData:
    """PBMC3k with the default classifier, default PGD, a data-respecting PGD (ε=0.5,
    key 'realistic'), the count-space attack to the first flip (key 'counts'), every benign
    perturbation and the default meta-detector (a fresh copy)."""
    return _pbmc3k_meta.copy()


def make_counts(n_per_class: int = 40, n_classes: int = 3, n_genes: int = 300,
                n_markers: int = 15, seed: int = 0, label_key: str = "cell_type") -> ad.AnnData:
    """Synthetic UMI counts: each class over-expresses its own block of marker genes."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    labels = np.repeat([f"type{i}" for i in range(n_classes)], n_per_class)
    base = rng.gamma(0.6, 1.0, size=n_genes)
    rates = np.tile(base, (n, 1))
    for c in range(n_classes):
        rows = labels == f"type{c}"
        block = slice(c * n_markers, (c + 1) * n_markers)
        rates[np.ix_(rows, np.arange(n_genes)[block])] *= 8.0
    library = rng.lognormal(0.0, 0.3, size=(n, 1))
    counts = rng.poisson(rates * library).astype(np.float32)
    adata = ad.AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame({label_key: pd.Categorical(labels)},
                         index=[f"cell{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]),
    )
    return adata


@pytest.fixture
def counts() -> ad.AnnData:
    """120 synthetic cells × 300 genes of raw counts, three classes in obs['cell_type']."""
    return make_counts()


@pytest.fixture(scope="session")
def _small_trained_once() -> ad.AnnData:
    import scadv

    adata = make_counts()
    scadv.pp.prepare(adata, n_top_genes=100)
    scadv.tl.train_classifier(adata, "cell_type", max_epochs=15, progress=False)
    return adata


@pytest.fixture
def small_trained(_small_trained_once: ad.AnnData) -> ad.AnnData:
    """Synthetic data prepared and with a quickly trained classifier (for fast edge cases);
    trained once per session (training is deterministic), a fresh copy per test."""
    return _small_trained_once.copy()


@pytest.fixture(scope="session")
def _small_meta(_small_trained_once: ad.AnnData) -> ad.AnnData:
    import scadv

    adata = _small_trained_once.copy()
    scadv.tl.pgd(adata, eps=(0.3, 0.6), cells="all", progress=False)
    # 12 validation cells: a 10% target is the lowest a conformal threshold can promise
    scadv.tl.meta_detect(adata, budget=30, target_fpr=0.1, triplet_epochs=2, detector_epochs=3,
                         progress=False)
    return adata


@pytest.fixture
def small_meta(_small_meta: ad.AnnData) -> ad.AnnData:
    """``small_trained`` with PGD on all cells (ε 0.3, 0.6) and a quickly trained meta-detector
    (a fresh copy)."""
    return _small_meta.copy()


def snapshot(adata: ad.AnnData) -> dict:
    """Everything a failed call must leave unchanged."""
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X, copy=True)
    return {
        "X": x,
        "obs": adata.obs.copy(),
        "var_names": adata.var_names.copy(),
        "layers": sorted(adata.layers),
        "obsm": sorted(adata.obsm),
        "uns": sorted(adata.uns),
        "raw": adata.raw is not None,
    }


def assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    after = snapshot(adata)
    np.testing.assert_array_equal(after["X"], before["X"])
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    assert after["var_names"].equals(before["var_names"])
    for key in ("layers", "obsm", "uns", "raw"):
        assert after[key] == before[key], key


@pytest.fixture(scope="session")
def _pbmc3k_markers(_pbmc3k_raw: ad.AnnData) -> ad.AnnData:
    import scadv
    from scadv.classifiers import PBMC_MARKERS, marker_genes

    adata = _pbmc3k_raw.copy()
    scadv.pp.prepare(adata, include_genes=marker_genes(PBMC_MARKERS))
    return adata


@pytest.fixture
def pbmc3k_markers(_pbmc3k_markers: ad.AnnData) -> ad.AnnData:
    """PBMC3k prepared with the canonical PBMC markers forced into the model genes (no
    classifier trained; a fresh copy)."""
    return _pbmc3k_markers.copy()


def make_model_space(n_per_cluster: int = 20, n_genes: int = 8, seed: int = 0) -> ad.AnnData:
    """A tiny AnnData already in a classifier's input space, for the gene attacks.

    Cluster ``'A'`` has genes 0 and 1 at 0, cluster ``'B'`` at 1; every other gene is noise.
    With :func:`two_gene_rule` as classifier, modifying gene 0 or gene 1 alone to the 99th
    percentile (1) never flips cluster A; modifying both does.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.1, size=(2 * n_per_cluster, n_genes)).astype(np.float32)
    x[:n_per_cluster, :2] = 0.0
    x[n_per_cluster:, :2] = 1.0
    return ad.AnnData(
        X=x,
        obs=pd.DataFrame({"cluster": pd.Categorical(["A"] * n_per_cluster + ["B"] * n_per_cluster)},
                         index=[f"c{i}" for i in range(2 * n_per_cluster)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


def two_gene_rule(x: np.ndarray) -> pd.DataFrame:
    """Class ``'B'`` when gene 0 + gene 1 > 1.5 (a steep logistic), else ``'A'``."""
    p = 1.0 / (1.0 + np.exp(-8.0 * (x[:, 0] + x[:, 1] - 1.5)))
    return pd.DataFrame({"A": 1.0 - p, "B": p})


SIM = {"n_cells": 600, "n_genes": 500, "n_types": 4, "markers_per_type": 25,
       "genes_per_lineage": 25, "genes_per_activity_program": 25}


@pytest.fixture(scope="session")
def _sim_trained() -> ad.AnnData:
    import scadv

    adata = scadv.datasets.simulate(**SIM, seed=0)
    scadv.pp.prepare(adata, n_top_genes=500)
    scadv.tl.train_classifier(adata, "cell_type", max_epochs=20, progress=False)
    scadv.tl.adversarial_train(adata, "cell_type", steps=5, max_epochs=20,
                               split_key="scadv_split", progress=False)
    return adata


@pytest.fixture
def sim_trained(_sim_trained: ad.AnnData) -> ad.AnnData:
    """Simulated counts with known markers (600 cells × 500 genes, 4 types), prepared,
    with a plain classifier ('classifier') and an adversarially trained one ('robust') on the
    same split (a fresh copy)."""
    return _sim_trained.copy()


def model_x(adata: ad.AnnData, model: str = "classifier") -> np.ndarray:
    """The model input of every cell (what scadv 0.1 wrote into ``X``), computed on demand."""
    import scadv

    return scadv.get.model_input(adata, model=model)


def perturbed(adata: ad.AnnData, name: str) -> np.ndarray:
    """A perturbation's model input of every cell (what scadv 0.1 wrote into
    ``layers[name]``), rebuilt from the compact stored change."""
    import scadv

    return scadv.get.perturbed(adata, name, cells=np.arange(adata.n_obs))


def stored(adata: ad.AnnData) -> list[str]:
    """Names of the perturbations stored in ``adata``."""
    import scadv

    return list(scadv.get.perturbations(adata).index)


def model_counts(adata: ad.AnnData) -> np.ndarray:
    """Raw counts of the model genes (dense), from ``X`` of lazily prepared data."""
    genes = list(adata.uns["scadv"]["prepare"]["genes"])
    x = adata[:, genes].X
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def prepared_x(adata: ad.AnnData) -> np.ndarray:
    """The model input of ``adata``'s own recipe (``uns['scadv']['prepare']``)."""
    from scadv import _recipe as R

    return R.source(adata, adata.uns["scadv"]["prepare"]).dense()


def model_genes(adata: ad.AnnData) -> np.ndarray:
    """The model genes of ``adata``'s own recipe, in model order."""
    return np.asarray(adata.uns["scadv"]["prepare"]["genes"]).astype(str)


# ---- tutorials, executed once per session (tests/test_tutorials.py and the docs build) -----


TUTORIALS = sorted((REPO / "tutorials").glob("*.py"))


def execute_tutorial(script: Path, out: Path, timeout: int = 900) -> tuple[Path, str | None]:
    """Run a jupytext tutorial as a notebook (nbclient, a fresh kernel, working folder
    ``out``) and write the executed notebook with its outputs and figures next to the other
    outputs; returns ``(notebook, error or None)``."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(script)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    saved = {k: os.environ.get(k) for k in ("SCADV_DATA", "SCADV_TUTORIAL_OUT", "MPLBACKEND",
                                            "TQDM_DISABLE")}
    os.environ["TQDM_DISABLE"] = "1"  # no progress bars in the rendered notebooks
    os.environ["SCADV_DATA"] = str(DATA)
    os.environ["SCADV_TUTORIAL_OUT"] = str(out)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures
    error = None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(out)}}).execute()
    except CellExecutionError as err:
        error = str(err)[-3000:]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    path = out / f"{script.stem}.ipynb"
    nbformat.write(nb, path)
    return path, error


@pytest.fixture(scope="session")
def executed_tutorials(tmp_path_factory) -> dict[str, tuple[Path, str | None]]:
    """Every tutorial executed once: ``{stem: (executed notebook, error or None)}``; the
    tutorial tests check them and the docs build renders them (not executing them again)."""
    _need(PBMC3K)
    root = tmp_path_factory.mktemp("tutorials")
    return {t.stem: execute_tutorial(t, root / t.stem) for t in TUTORIALS}
