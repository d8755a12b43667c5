"""``scadv.tl.score_attributions``: attributions scored against known marker genes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from sklearn.metrics import average_precision_score

from ... import _keys as K
from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from . import _rankings as RK


def score_attributions(
    adata: AnnData,
    *,
    keys: str | Sequence[str],
    truth: Mapping[str, Sequence[str]] | None = None,
    k: int = 20,
    key_added: str = "attr_truth",
    copy: bool = False,
) -> AnnData | None:
    """Score gene attributions against the genes that truly define each class.

    Per class: precision@k (fraction of the top ``k`` attributed genes that are true markers),
    recall@k, and the area under the precision–recall curve of the full ranking (average
    precision; a random ranking scores the fraction of true markers among the ranked genes,
    reported as ``auprc_random``). Only the model's genes can be ranked: true markers outside
    them count as missed (``marker_coverage`` says how many were ranked at all).

    Parameters
    ----------
    adata
        Holds the attribution runs and, by default, the ground truth written by
        :func:`scadv.datasets.simulate` (``uns['scadv']['simulation']``).
    keys
        One or more attribution runs (``key_added`` of :func:`scadv.tl.attribute`).
    truth
        ``{class: [marker genes]}`` instead of the simulation's ground truth.
    k
        Size of the top-gene set for precision and recall.
    key_added
        Name of the record.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]``: ``keys``,
    ``classes``, ``precision_at_k``, ``recall_at_k``, ``auprc`` and ``auprc_random``
    (runs × classes; NaN where a run does not explain a class), their means over classes
    (``*_mean``, per run), ``marker_coverage`` (per class), ``table`` (a DataFrame: ``key``,
    ``class``, ``precision_at_k``, ``recall_at_k``, ``auprc``, ``auprc_random``,
    ``n_markers``), ``k`` and provenance.
    """
    V.options(locals())
    V.names("keys", keys)
    V.positive_int("k", k)
    start = logg.info("scoring attributions against known markers")
    params = P.call_params(locals(), score_attributions)
    adata = V.start(adata, copy=copy)
    keys = [keys] if isinstance(keys, str) else [str(key) for key in keys]
    if not keys:
        raise ScadvInputError("keys is empty; name at least one attribution run.")
    markers = _truth(adata, truth)
    recs = [RK.record(adata, key) for key in keys]
    classes = [c for c in markers if any(c in RK.scores(r)[1] for r in recs)]
    if not classes:
        raise ScadvInputError(f"none of the classes with known markers ({list(markers)[:10]}) "
                              "is explained by the attribution runs; check the class names.")
    shape = (len(keys), len(classes))
    prec, rec_k, auprc, rand = (np.full(shape, np.nan) for _ in range(4))
    coverage = np.full(len(classes), np.nan)
    rows = []
    for i, rec in enumerate(recs):
        scores, cls, genes = RK.scores(rec)
        k = RK.check_k(k, len(genes))
        for j, c in enumerate(classes):
            true = markers[c]
            is_marker = np.isin(genes, list(true))
            coverage[j] = is_marker.sum() / len(true)
            if c not in cls or np.isnan(scores[cls.index(c)]).all() or not is_marker.any():
                continue
            s = np.nan_to_num(scores[cls.index(c)], nan=-np.inf)
            hits = is_marker[RK.top_k(s, k)].sum()
            prec[i, j] = hits / k
            rec_k[i, j] = hits / len(true)
            auprc[i, j] = average_precision_score(is_marker, np.where(np.isfinite(s), s, -1e30))
            rand[i, j] = is_marker.mean()
            rows.append({"key": keys[i], "class": c, "precision_at_k": prec[i, j],
                         "recall_at_k": rec_k[i, j], "auprc": auprc[i, j],
                         "auprc_random": rand[i, j], "n_markers": len(true)})
    out = {
        "keys": keys,
        "classes": classes,
        "k": int(k),
        "precision_at_k": prec,
        "recall_at_k": rec_k,
        "auprc": auprc,
        "auprc_random": rand,
        "precision_at_k_mean": np.nanmean(prec, axis=1),
        "recall_at_k_mean": np.nanmean(rec_k, axis=1),
        "auprc_mean": np.nanmean(auprc, axis=1),
        "marker_coverage": coverage,
        "table": pd.DataFrame(rows),
        "provenance": P.record(params),
    }
    write_results(adata, step=f"ground-truth scores (precision@{k}: " + ", ".join(
        f"{key} {v:.2f}" for key, v in zip(keys, out["precision_at_k_mean"], strict=True)) + ")",
        start=start, uns={key_added: out})
    return adata if copy else None


def _truth(adata: AnnData, truth: Mapping[str, Sequence[str]] | None) -> dict[str, set[str]]:
    """``{class: set of marker genes}`` from ``truth`` or the simulation's record."""
    if truth is not None:
        if not isinstance(truth, Mapping) or not truth:
            raise ScadvInputError("truth must be a non-empty dict {class: [marker genes]}.")
        out = {}
        for c, genes in truth.items():
            if isinstance(genes, str):
                raise ScadvInputError(f"truth[{c!r}] must be a non-empty list of genes.")
            out[str(c)] = set(V.names(f"truth[{c!r}]", genes, single=False) or ())
        return out
    ns = adata.uns.get(K.UNS)
    sim = ns.get(K.SIMULATION) if isinstance(ns, Mapping) else None
    if not isinstance(sim, Mapping) or "markers" not in sim:
        raise ScadvInputError(
            "no ground truth: adata.uns['scadv']['simulation'] (written by "
            "scadv.datasets.simulate) is missing. Pass truth={class: [marker genes]}."
        )
    sim_genes = np.asarray(sim["genes"]).astype(str)
    mat = np.asarray(sim["markers"], dtype=bool)
    return {str(c): set(sim_genes[mat[i]]) for i, c in enumerate(np.asarray(sim["classes"]))
            if mat[i].any()}
