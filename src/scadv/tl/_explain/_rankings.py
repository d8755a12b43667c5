"""Per-class gene rankings: reading attribution records and comparing rankings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ... import _keys as K
from ... import _records as REC
from ..._errors import ScadvInputError

#: Entries every attribution record carries (what the checks read).
NEEDS = ("scores", "classes", "genes", "method")


def record(adata: AnnData, key: str) -> Mapping[str, Any]:
    """The attribution record ``uns['scadv'][key]``, or an error naming the fix."""
    ns = adata.uns.get(K.UNS)
    rec = ns.get(key) if isinstance(ns, Mapping) else None
    if not isinstance(rec, Mapping) or any(n not in rec for n in NEEDS):
        known = sorted(k for k, v in (ns or {}).items()
                       if isinstance(v, Mapping) and all(n in v for n in NEEDS))
        raise ScadvInputError(
            f"no attribution results under adata.uns['scadv'][{key!r}] (attribution runs: "
            f"{known or 'none'}). Run scadv.tl.attribute(adata, method=...) first, or pass the "
            "key of an attribution run."
        )
    scores(rec)  # the entries every reader relies on are valid
    return rec


#: What every reader of an attribution record relies on.
SCHEMA = {
    "scores": REC.Field("floats", ("n_classes", "n_genes"), finite="nan"),
    "classes": REC.Field("strs", ("n_classes",), unique=True),
    "genes": REC.Field("strs", ("n_genes",), unique=True),
    "method": REC.Field("str"),
    "model": REC.Field("str", optional=True),
    "signed": REC.Field("bool", optional=True),
}


def scores(rec: Mapping[str, Any]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(scores (classes × genes), classes, genes)`` of an attribution record (checked)."""
    got = REC.fields(rec, SCHEMA, what="attribution record",
                     fix="run scadv.tl.attribute again.")
    return (got["scores"].astype(np.float64), [str(c) for c in got["classes"]], got["genes"])


def check_k(k: int, n_genes: int) -> int:
    """A valid top-k size."""
    if int(k) < 1:
        raise ScadvInputError(f"k must be ≥ 1, got {k}.")
    if int(k) > n_genes:
        raise ScadvInputError(f"k={k} exceeds the {n_genes} ranked genes.")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties broken by gene order)."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[..., :k]


def jaccard_at_k(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row, the Jaccard index of the top-``k`` genes of two score matrices (NaN rows stay
    NaN)."""
    out = np.full(a.shape[0], np.nan)
    ta, tb = top_k(a, k), top_k(b, k)
    for i in range(a.shape[0]):
        if np.isnan(a[i]).all() or np.isnan(b[i]).all():
            continue
        inter = len(np.intersect1d(ta[i], tb[i], assume_unique=True))
        out[i] = inter / (2 * k - inter)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, Spearman's rank correlation of two score matrices over all genes."""
    out = np.full(a.shape[0], np.nan)
    for i in range(a.shape[0]):
        if np.isnan(a[i]).all() or np.isnan(b[i]).all():
            continue
        if np.ptp(a[i]) == 0 or np.ptp(b[i]) == 0:
            continue
        out[i] = stats.spearmanr(a[i], b[i]).statistic
    return out


def ranking_table(scores: np.ndarray, classes: list[str], genes: np.ndarray,
                  n_top: int) -> pd.DataFrame:
    """Long table of the top ``n_top`` genes per class: ``class``, ``rank`` (1 = best),
    ``gene``, ``score``. Classes are values, never column names (h5ad-safe for any name)."""
    n_top = min(int(n_top), scores.shape[1])
    parts = []
    for c, name in enumerate(classes):
        if np.isnan(scores[c]).all():
            continue
        idx = top_k(scores[c], n_top)
        parts.append(pd.DataFrame({"class": name, "rank": np.arange(1, n_top + 1),
                                   "gene": genes[idx], "score": scores[c, idx]}))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"class": [], "rank": [], "gene": [], "score": []})
    table["class"] = pd.Categorical(table["class"], categories=classes)
    return table
