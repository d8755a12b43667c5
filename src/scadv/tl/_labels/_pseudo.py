"""``scadv.tl.pseudo_labels``: clusters to train on when a data set has no cell-type labels."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
import scanpy.logging as logg
from anndata import AnnData
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA

from ... import _keys as K
from ... import _provenance as P
from ... import _recipe as R
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results

Method = Literal["kmeans", "leiden"]


def pseudo_labels(
    adata: AnnData,
    *,
    method: Method = "kmeans",
    n_clusters: int = 10,
    n_pcs: int = 50,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
    key_added: str = K.PSEUDO_LABEL,
    copy: bool = False,
) -> AnnData | None:
    """Cluster the cells into pseudo-labels, for data sets without cell-type labels.

    The PBMC3k study fell back to MiniBatchKMeans with 10 clusters on 50 principal components
    when it had no labels; this is that fallback, made explicit (scadv never picks it for
    you). The principal components are computed from the model input recorded by
    :func:`scadv.pp.prepare` (normalised, log1p, z-scored model genes), so run that first.
    Pass the result as the label key: ``scadv.tl.train_classifier(adata, 'scadv_pseudo_label')``.
    A classifier trained on pseudo-labels learns the clustering, not cell types: its accuracy
    and flip rates are about those clusters.

    Parameters
    ----------
    adata
        Prepared with :func:`scadv.pp.prepare`.
    method
        ``'kmeans'``: MiniBatchKMeans with ``n_clusters`` clusters on ``n_pcs`` PCs (the
        study's choice). ``'leiden'``: Leiden clustering (``resolution``) of the
        ``n_neighbors``-nearest-neighbour graph of the same PCs (needs ``igraph``).
    n_clusters
        Number of k-means clusters.
    n_pcs
        Principal components (capped at the number of cells and model genes minus one).
    resolution
        Leiden resolution: higher gives more clusters.
    n_neighbors
        Neighbours of the Leiden graph.
    seed
        Seeds the PCA, k-means and Leiden.
    key_added
        Name of the ``obs`` column and of the record in ``uns['scadv']``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    The copy with the results if ``copy=True``, else ``None``. Writes

    ``obs[key_added]``
        Categorical cluster labels ``'0'``, ``'1'``, ... (ordered by size, largest first).
    ``uns['scadv'][key_added]``
        ``kind='pseudo_labels'``, the method and its parameters, cluster sizes and provenance
        (and so the audit report says the labels are pseudo-labels, and how they were made).
    """
    V.options(locals())
    V.choice("method", method, ("kmeans", "leiden"))
    V.integer("n_clusters", n_clusters, minimum=2)
    V.positive_int("n_pcs", n_pcs)
    V.positive("resolution", resolution)
    V.positive_int("n_neighbors", n_neighbors)
    start = logg.info(f"pseudo-labels by {method}")
    params = P.call_params(locals(), pseudo_labels)
    adata = V.start(adata, copy=copy)
    if key_added in adata.obs and not str(key_added).startswith(K.PREFIX):
        raise ScadvInputError(f"obs[{key_added!r}] exists and is not a scadv column; pass "
                              "another key_added.")
    recipe = R.stored(adata)
    if recipe is None:
        raise ScadvInputError("pseudo-labels are computed on the model input: run "
                              "scadv.pp.prepare(adata) first.")
    x = R.source(adata, recipe).dense(
        what="clustering every cell's model input",
        hint="Cluster a subsample (adata[sample].copy()) and predict the rest with a classifier "
             "trained on it, or cluster with scanpy and pass the clusters as labels.")
    n_comps = max(1, min(int(n_pcs), x.shape[0] - 1, x.shape[1] - 1))
    pcs = PCA(n_components=n_comps, svd_solver="randomized",
              random_state=int(seed)).fit_transform(x).astype(np.float32)
    if method == "kmeans":
        if int(n_clusters) > adata.n_obs:
            raise ScadvInputError(f"n_clusters={n_clusters} is more than the {adata.n_obs} "
                                  "cells.")
        raw = MiniBatchKMeans(n_clusters=int(n_clusters), random_state=int(seed),
                              n_init=3, batch_size=1024).fit_predict(pcs)
    else:
        try:
            import igraph  # noqa: F401
        except ImportError as err:
            raise ScadvInputError("method='leiden' needs the igraph package: pip install "
                                  "igraph (or use method='kmeans').") from err
        tmp = AnnData(X=np.zeros((len(pcs), 1), dtype=np.float32), obsm={"X_pca": pcs})
        sc.pp.neighbors(tmp, n_neighbors=int(n_neighbors), use_rep="X_pca",
                        random_state=int(seed))
        sc.tl.leiden(tmp, resolution=float(resolution), random_state=int(seed),
                     flavor="igraph", n_iterations=2, directed=False)
        raw = tmp.obs["leiden"].astype(int).to_numpy()
    # clusters renumbered by size (largest '0'), so the names do not depend on the solver
    ids, sizes = np.unique(raw, return_counts=True)
    order = ids[np.lexsort((ids, -sizes))]
    rank = np.empty(int(ids.max()) + 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[raw]
    names = [str(i) for i in range(len(order))]
    labels = pd.Categorical.from_codes(codes, categories=names)
    counts = np.bincount(codes, minlength=len(names))
    what = (f"MiniBatchKMeans, {n_clusters} clusters on {n_comps} PCs" if method == "kmeans"
            else f"Leiden (resolution {resolution:g}) on a {n_neighbors}-NN graph of "
                 f"{n_comps} PCs")
    record = {
        "kind": "pseudo_labels",
        "method": method,
        "description": what,
        "n_pcs": n_comps,
        "classes": np.asarray(names),
        "n_cells_per_class": counts,
        "provenance": P.record(params, seed=int(seed)),
    }
    write_results(adata, step=f"pseudo-labels: {what} ({len(names)} clusters)", start=start,
                  uns={key_added: record}, obs={key_added: labels})
    return adata if copy else None
