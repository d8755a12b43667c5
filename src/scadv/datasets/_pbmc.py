"""Bundled and local PBMC datasets."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import scanpy as sc
from anndata import AnnData

from .._errors import ScadvInputError


def pbmc68k_reduced() -> AnnData:
    """700 PBMCs × 765 genes, bundled inside scanpy (no download): the embedded default.

    ``X`` is already scaled (z-scores after ``regress_out``), ``.raw`` holds log-normalised
    values, and ``obs['bulk_labels']`` holds FACS-sorted cell types (``obs['louvain']``
    clusters). See :func:`scanpy.datasets.pbmc68k_reduced`.
    """
    return sc.datasets.pbmc68k_reduced()


def pbmc3k(path: str | Path | None = None) -> AnnData:
    """10x Genomics PBMC3k raw counts, from a local file or folder.

    Parameters
    ----------
    path
        An ``.h5ad`` file (e.g. ``shared/data/pbmc3k_raw.h5ad`` with Seurat cell types in
        ``obs['cell_type']``), a 10x ``.h5`` file, or a 10x matrix folder
        (``matrix.mtx``, ``genes.tsv``/``features.tsv``, ``barcodes.tsv``). Only without a path
        does this fall back to :func:`scanpy.datasets.pbmc3k`, which downloads the data.

    Returns
    -------
    Cells × genes with raw counts in ``X`` and unique gene symbols as ``var_names``.
    """
    if path is None:
        return sc.datasets.pbmc3k()
    path = Path(path)
    if not path.exists():
        raise ScadvInputError(
            f"{path} does not exist. Pass the path of a PBMC3k .h5ad, 10x .h5 or 10x folder, "
            "or no path to download it with scanpy."
        )
    if path.is_dir():
        adata = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=True)
    elif path.suffix == ".h5ad":
        adata = ad.read_h5ad(path)
    elif path.suffix == ".h5":
        adata = sc.read_10x_h5(path)
    else:
        raise ScadvInputError(f"unsupported file {path.name}: use .h5ad, .h5 or a 10x folder.")
    adata.var_names_make_unique()
    return adata
