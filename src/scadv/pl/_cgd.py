"""``scadv.pl.cgd``: a CGD walk, fraction of the cluster switched against genes modified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _records as REC
from .. import _validate as V
from .._errors import ScadvInputError
from . import _utils as U


@U.doc_ax_show_save
def cgd(
    adata: AnnData,
    *,
    key: str = "cgd",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes:
    """The trajectory of :func:`scadv.tl.cgd`: fractions of the cluster's cells predicted as
    the new label and as the original one, against the number of genes modified.

    Parameters
    ----------
    adata
        Holds a result of :func:`scadv.tl.cgd`.
    key
        Its ``key_added``.
    {ax_show_save}
    """
    V.options(locals())
    V.name("key", key)
    rec = U.record(adata, key, needs=("trajectory", "to", "original_label", "start_frac_to"),
                   schema={"trajectory": REC.Field("table", columns=("frac_to", "frac_original")),
                           "to": REC.Field("str"), "original_label": REC.Field("str"),
                           "target": REC.Field("str"), "classes": REC.Field("strs", (None,)),
                           "start_frac_to": REC.Field("float", low=0.0, high=1.0),
                           "start_frac_original": REC.Field("float", low=0.0, high=1.0),
                           "switched": REC.Field("bool", optional=True),
                           "mode": REC.Field("str", optional=True),
                           "cluster_key": REC.Field("str", optional=True)},
                   made_by="scadv.tl.cgd")
    tr: pd.DataFrame = rec["trajectory"]
    to, orig = str(rec["to"]), str(rec["original_label"])
    classes = [str(c) for c in np.asarray(rec["classes"])]
    if to not in classes or orig not in classes:
        raise ScadvInputError(f"the stored scadv.tl.cgd record {key!r} is malformed: its labels "
                              f"{to!r} / {orig!r} are not among its classes. Run scadv.tl.cgd "
                              "again.")
    palette = U.palette(adata, classes, str(rec.get("cluster_key", "")))
    x = np.r_[0, tr["n_genes_modified"].to_numpy()].astype(float)
    frac_to = np.r_[float(rec["start_frac_to"]), tr["frac_to"].to_numpy()]
    frac_orig = np.r_[float(rec["start_frac_original"]), tr["frac_original"].to_numpy()]
    labels = np.r_[[orig], tr["label"].astype(str).to_numpy()] if "label" in tr else None
    # each level lasts one gene: the last one (often the switch itself) gets its own width
    # instead of collapsing onto the right edge of the axes
    xs = np.r_[x, x[-1] + 1]
    ax = U.axes(ax, figsize=(5.5, 3.6))
    for frac, name in ((frac_to, to), (frac_orig, orig)):
        ax.step(xs, np.r_[frac, frac[-1]], where="post", color=palette[classes.index(name)],
                lw=1.8, label=f"predicted {name}")
        ax.plot(x, frac, "o", ms=3, color=palette[classes.index(name)])
    ax.axhline(0.5, color="0.6", ls=":", lw=1)
    switched = bool(rec.get("switched", False))
    at = None
    if labels is not None and (labels == to).any():
        at = int(np.flatnonzero(labels == to)[0])
    elif switched:
        at = len(x) - 1
    if at is not None:
        ax.axvline(x[at], color="0.2", ls="--", lw=1,
                   label=f"cluster labelled {to} ({int(x[at])} genes)")
    ax.set_xlim(-0.5, xs[-1] + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("genes modified")
    ax.set_ylabel("fraction of the cluster's cells")
    mode = "true gradients" if str(rec.get("mode")) == "gradient" else "probes"
    verdict = (f"switched after {int(x[at])} genes" if at is not None
               else f"not switched after {int(x[-1])} genes")
    U.set_title(ax, f"CGD ({mode}) on {rec['target']}: {verdict}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    return U.finish(ax, show=show, save=save, name="cgd")
