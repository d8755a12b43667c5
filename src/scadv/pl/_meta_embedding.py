"""``scadv.pl.meta_embedding``: the detector's triplet embedding of clean and attacked cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _device as D
from .. import _keys as K
from .. import _store as ST
from .. import _validate as V
from ..tl._detect import _common as MC
from . import _meta_common as PM
from . import _utils as U


@U.doc_ax_show_save
def meta_embedding(
    adata: AnnData,
    *,
    key: str = K.DEFAULT_DETECTOR,
    layers: Sequence[str] | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """UMAP of what the detector sees of each cell: clean test cells and attacked ones.

    For the consistency detector, its three standardised views (margin, squeeze, twin); for
    the triplet detector, its 64-d triplet embedding; for the logistic regression, the
    standardised meta-features. Clean test cells are grey; the successful (flipped) test
    cells of each attack are coloured. Where the detector separates manipulated cells, they
    form their own regions.

    Parameters
    ----------
    adata
        Holds a detector from :func:`scadv.tl.meta_detect`.
    key
        Key of the detector.
    layers
        Adversarial layers to include; default every evaluated one.
    n_neighbors
        Neighbours of the UMAP graph.
    seed
        Seeds the UMAP layout.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.names("layers", layers, allow_none=True)
    V.positive_int("n_neighbors", n_neighbors)
    rec = PM.detector(adata, key)
    test = PM.test_mask(adata, rec)
    cells = PM.layers(adata, key, rec, layers)
    det = MC.load(adata, key, source=None, device=D.resolve("cpu"))
    recipe = det.classifier["prepare"]
    blocks = [ST.reader(adata, recipe)[test]]
    groups = [np.zeros(int(test.sum()), dtype=np.int64)]
    for i, c in enumerate(cells, start=1):
        blocks.append(ST.reader(adata, recipe, layer=c.layer)[c.flipped])
        groups.append(np.full(int(c.flipped.sum()), i))
    x = np.vstack(blocks)
    group = np.concatenate(groups)
    emb = det.embedding(x)
    tmp = AnnData(X=np.zeros((len(emb), 1), dtype=np.float32), obsm={"X_det": emb})
    sc.pp.neighbors(tmp, use_rep="X_det", n_neighbors=int(n_neighbors), random_state=seed)
    sc.tl.umap(tmp, random_state=seed)
    xy = tmp.obsm["X_umap"]

    ax = U.axes(ax, figsize=(6.5, 5))
    clean_xy = xy[group == 0]
    ax.scatter(clean_xy[:, 0], clean_xy[:, 1], s=8, color="0.75",
               label=f"clean (n={int(test.sum())})", linewidths=0)
    colors = plt.get_cmap("tab10")(np.arange(len(cells)) % 10)
    for i, (c, color) in enumerate(zip(cells, colors, strict=True), start=1):
        xy_i = xy[group == i]
        ax.scatter(xy_i[:, 0], xy_i[:, 1], s=8, color=color, linewidths=0,
                   label=f"{c.label} (flipped n={int((group == i).sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    what = {"consistency": "views", "triplet": "triplet embedding"}.get(det.method,
                                                                      "meta-features")
    U.set_title(ax, f"meta-detector {key!r}: {what} of test cells")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False,
              markerscale=2)
    return U.finish(ax, show=show, save=save, name="meta_embedding")
