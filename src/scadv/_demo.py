"""The embedded demo data: scanpy's bundled pbmc68k_reduced, as log-normalised expression."""

from __future__ import annotations

from anndata import AnnData

#: Label column of the demo data (FACS-sorted cell types).
LABEL_KEY = "bulk_labels"
NAME = "pbmc68k_reduced"


def load() -> AnnData:
    """700 PBMCs × 765 genes from :func:`scanpy.datasets.pbmc68k_reduced` (bundled, no
    download), with its log-normalised ``.raw`` as ``X``.

    The bundled ``X`` was scaled after ``sc.pp.regress_out``, so a recipe learnt from it
    cannot be reproduced on new cells (and :func:`scadv.pp.prepare` says so). Its ``.raw``
    holds the log-normalised values those came from: preparing those gives a recipe that new
    log-normalised or count data follow exactly. ``obs`` (``bulk_labels``, ``louvain``) and
    the bundled UMAP (``obsm['X_umap']``) are kept.
    """
    import scanpy as sc

    full = sc.datasets.pbmc68k_reduced()
    if full.raw is None:  # pragma: no cover - the bundled file always has it
        raise RuntimeError("scanpy's pbmc68k_reduced has no .raw: update scanpy.")
    adata = AnnData(X=full.raw.X.copy(), obs=full.obs.copy(), var=full.raw.var.copy(),
                    obsm={"X_umap": full.obsm["X_umap"].copy()})
    adata.var_names = full.raw.var_names.copy()
    adata.obs_names = full.obs_names.copy()
    return adata
