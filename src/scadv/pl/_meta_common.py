"""Shared by the meta-detector plots: the detector record and the test cells of each layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from .. import _keys as K
from .. import _records as REC
from .._errors import ScadvInputError
from ..tl import _common as C
from . import _utils as U

MADE_BY = "scadv.tl.meta_detect"


def detector(adata: AnnData, key: str) -> Mapping[str, Any]:
    """The stored detector ``key`` with its evaluation, or a clear error (also for an entry
    the plots read that is malformed)."""
    rec = U.record(adata, key, needs=("threshold", "evaluation", "model"), made_by=MADE_BY,
                   schema={"threshold": REC.Field("float", finite="inf"),
                           "model": REC.Field("str"), "evaluation": REC.Field("map")})
    for name, ev in rec["evaluation"].items():
        U.check(ev, {"kind": REC.Field("str"), "label": REC.Field("str", optional=True),
                     "detector": REC.Field("map", optional=True)},
                key=f"{key}' evaluation of '{name}", made_by=MADE_BY)
        if "detector" in ev and str(ev["kind"]) != "benign":  # benign: flag rates only
            U.check(ev["detector"], {"confusion_matrix": REC.Field("ints", (2, 2), low=0)},
                    key=f"{key}' evaluation of '{name}", made_by=MADE_BY)
    return rec


@dataclass
class LayerCells:
    """Test cells of one scored layer: clean and layer scores, and which cells flipped."""

    layer: str
    label: str
    kind: str
    rows: np.ndarray  # bool over cells: test cells the layer changed
    flipped: np.ndarray  # bool over cells: ... whose predicted class changed
    score: np.ndarray  # the layer's detector score (all cells; NaN where unchanged)


def test_mask(adata: AnnData, record: Mapping[str, Any]) -> np.ndarray:
    model = str(record["model"])
    split_col = K.split(model)
    classifier = adata.uns.get(K.UNS, {}).get(model)
    if isinstance(classifier, Mapping):
        split_col = C.split_column(classifier, model)
    if split_col not in adata.obs:
        raise ScadvInputError(f"obs[{split_col!r}] (the classifier's split) is missing; the "
                              "detector plots show test-split cells.")
    return (adata.obs[split_col].astype(str) == K.SPLIT_TEST).to_numpy()


def clean_scores(adata: AnnData, key: str) -> np.ndarray:
    col = K.meta_score(key)
    if col not in adata.obs:
        raise ScadvInputError(f"obs[{col!r}] is missing; run {MADE_BY} or "
                              f"scadv.tl.meta_evaluate(adata, key={key!r}) first.")
    return adata.obs[col].to_numpy(dtype=np.float64)


def layers(adata: AnnData, key: str, record: Mapping[str, Any], chosen: Sequence[str] | None,
           *, kinds: tuple[str, ...] = ("adversarial",)) -> list[LayerCells]:
    """The evaluated layers (default: those of the given kinds), with their test cells."""
    evaluation = record["evaluation"]
    names = (list(chosen) if chosen is not None
             else [n for n, ev in evaluation.items() if str(ev.get("kind")) in kinds])
    test = test_mask(adata, record)
    clean_pred = adata.obs[K.pred(str(record["model"]))].astype(str).to_numpy()
    out = []
    for name in names:
        score_col, pred_col = K.meta_score(key, name), K.layer_pred(name)
        if score_col not in adata.obs or pred_col not in adata.obs:
            raise ScadvInputError(
                f"layer {name!r} has not been scored by detector {key!r}; run "
                f"scadv.tl.meta_evaluate(adata, key={key!r}) after making it."
            )
        pred = adata.obs[pred_col]
        rows = test & pred.notna().to_numpy()
        flipped = rows & (pred.astype(str).to_numpy() != clean_pred)
        ev = evaluation.get(name, {})
        out.append(LayerCells(name, str(ev.get("label", name)), str(ev.get("kind", "")), rows,
                              flipped, adata.obs[score_col].to_numpy(dtype=np.float64)))
    if not out:
        raise ScadvInputError(f"detector {key!r} has no evaluated layers to plot; make some "
                              "with scadv.tl.pgd and run scadv.tl.meta_evaluate.")
    return out
