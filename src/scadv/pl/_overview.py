"""``scadv.pl.overview``: heatmap of a gene-attack overview (clusters × modifications)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from .. import _records as REC
from .. import _validate as V
from .._errors import ScadvInputError
from . import _utils as U

_TITLES = {
    "n_flip_genes": "genes that flip the cluster alone",
    "n_signature_genes": "signature genes (cannot be modified with the others)",
}


@U.doc_ax_show_save
def overview(
    adata: AnnData,
    *,
    key: str = "overview",
    value: Literal["n_flip_genes", "n_signature_genes"] = "n_flip_genes",
    cmap: str = "Reds",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """Per cluster and modification, how many genes flip the cluster (or must stay).

    Parameters
    ----------
    adata
        Holds a result of :func:`scadv.tl.overview`.
    key
        Its ``key_added``.
    value
        ``'n_flip_genes'`` (genes that change the label alone) or ``'n_signature_genes'``
        (genes left out of the max-change set).
    cmap
        Matplotlib colour map.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    V.name("value", value)
    V.name("cmap", cmap)
    rec = U.record(adata, key, needs=("table", "targets", "modifications"),
                   schema={"table": REC.Field("table", columns=(
                               "cluster", "modification", "n_flip_genes", "n_signature_genes",
                               "n_cells", "n_genes"), min_rows=1),
                           "targets": REC.Field("strs", (None,), min_rows=1),
                           "modifications": REC.Field("strs", (None,), min_rows=1),
                           "classifier": REC.Field("str", optional=True)},
                   made_by="scadv.tl.overview")
    if value not in _TITLES:
        raise ScadvInputError(f"value must be one of {list(_TITLES)}, got {value!r}.")
    table: pd.DataFrame = rec["table"]
    absent = [t for t in rec["targets"] if t not in set(table["cluster"].astype(str))]
    if absent:
        raise REC.malformed(f"overview record {key!r}", "'table'",
                            f"has no rows for the target clusters {absent[:5]}",
                            "run scadv.tl.overview again.")
    if value == "n_signature_genes" and (table[value] < 0).all():
        raise ScadvInputError(f"{key!r} was run with signature=False; plot value='n_flip_genes' "
                              "or run scadv.tl.overview(..., signature=True).")
    targets = [str(t) for t in np.asarray(rec["targets"])]
    mods = [str(m) for m in np.asarray(rec["modifications"])]
    grid = table.pivot(index="cluster", columns="modification", values=value)
    grid = grid.loc[targets, mods].to_numpy(dtype=float)
    n_cells = table.drop_duplicates("cluster").set_index("cluster").loc[targets, "n_cells"]
    ax = U.axes(ax, figsize=(1.1 * len(mods) + 3.2, 0.42 * len(targets) + 1.4))
    finite = grid[np.isfinite(grid)]
    # counts start at 0 (the lightest colour) and the scale spans at least one gene, so an
    # all-zero grid stays light and the colour bar never goes negative
    top = max(float(finite.max()) if finite.size else 0.0, 1.0)
    im = ax.imshow(grid, cmap=cmap, aspect="auto", vmin=0, vmax=top)
    U.annotate_cells(ax, im, grid, lambda v: f"{int(v)}")
    ax.set_xticks(np.arange(len(mods)), mods)
    ax.set_yticks(np.arange(len(targets)),
                  [f"{t} (n={int(n)})" for t, n in zip(targets, n_cells, strict=True)])
    U.set_title(ax, f"{_TITLES[value]}\n({rec.get('classifier', '')}, of "
                 f"{int(table['n_genes'].iloc[0])} genes)")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.02, label="genes")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return U.finish(ax, show=show, save=save, name="overview")
