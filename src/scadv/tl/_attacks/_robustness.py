"""Robust accuracy of stored classifiers, in the standard sense: accuracy against the TRUE
labels under an L∞ PGD attack that pushes each cell away from its true label.

:func:`evaluate` is the one place that measures it, for :func:`scadv.tl.adversarial_train`'s
metrics and for :func:`scadv.tl.robust_accuracy` (behind :func:`scadv.pl.robustness_curve`).
The attack is :func:`scadv.tl.pgd`'s default (margin loss, α = 2.5·ε/steps, each cell stopped
at its first success) with ``away_from='label'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
import torch
from anndata import AnnData
from torch import nn

from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _provenance as P
from ... import _recipe as R
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from .. import _common as C
from . import _engine as E


def check_eps_grid(eps: float | Sequence[float], *, what: str = "eps") -> tuple[float, ...]:
    """Sorted unique non-negative budgets (0 means the clean accuracy)."""
    vals = np.atleast_1d(np.asarray(eps, dtype=float))
    if vals.size == 0 or not np.isfinite(vals).all() or (vals < 0).any():
        raise ScadvInputError(f"{what} must be non-negative numbers, got {eps!r}.")
    return tuple(float(v) for v in np.unique(vals))


def evaluate(net: nn.Module, x: np.ndarray, y: np.ndarray, eps: Sequence[float], *,
             n_classes: int, steps: int, device: torch.device, seed: int, batch_size: int,
             progress: bool) -> dict[str, np.ndarray]:
    """Accuracy against ``y`` (all ≥ 0) under PGD away from ``y`` at each budget (0: clean).

    Returns ``eps``, ``accuracy`` (per budget) and ``accuracy_per_class`` (budgets × classes,
    NaN for a class without cells).
    """
    eps = tuple(float(e) for e in eps)
    _, clean_logits = M.infer(net, x, device=device)
    preds = np.empty((len(eps), len(y)), dtype=np.int64)
    positive = [i for i, e in enumerate(eps) if e > 0]
    for i, e in enumerate(eps):
        if e == 0:
            preds[i] = clean_logits.argmax(axis=1)
    if positive:
        budget = E.Budget(eps=tuple(eps[i] for i in positive), norm="linf",
                          alpha=tuple(2.5 * eps[i] / int(steps) for i in positive),
                          steps=int(steps), random_start=False, n_restarts=1, loss="margin")
        _, adv_logits = E.run(net, x, y, budget, E.Constraints(), targeted=False, device=device,
                              seed=seed, batch_size=batch_size, progress=progress)
        preds[positive] = adv_logits.argmax(axis=-1)
    correct = preds == y[None, :]
    per_class = np.full((len(eps), n_classes), np.nan)
    for c in np.unique(y):
        per_class[:, c] = correct[:, y == c].mean(axis=1)
    return {"eps": np.asarray(eps), "accuracy": correct.mean(axis=1),
            "accuracy_per_class": per_class}


def robust_accuracy(
    adata: AnnData,
    *,
    models: Sequence[str] = (K.DEFAULT_MODEL,),
    eps: float | Sequence[float] = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2),
    steps: int = 10,
    cells: C.Cells = "test",
    key_added: str = "robustness",
    batch_size: int = 256,
    seed: int = 42,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Accuracy against the true labels under PGD, for several stored classifiers and budgets.

    "Robust accuracy" in the standard sense: each labelled cell is attacked with L∞ PGD away
    from its TRUE label (:func:`scadv.tl.pgd` with ``away_from='label'``: margin loss,
    α = 2.5·ε/steps, ``steps`` steps, each cell stopped at its first success) and counts as
    correct if the model still predicts that label. ε = 0 gives the clean accuracy; a cell the
    model already gets wrong counts as wrong at every budget. Plot with
    :func:`scadv.pl.robustness_curve`.

    Compare models on the same cells: train them on one split (``split_key=`` of
    :func:`scadv.tl.train_classifier` / :func:`scadv.tl.adversarial_train`). With
    ``cells='test'`` each model is evaluated on its own test split, and a warning is logged
    when those differ.

    Parameters
    ----------
    adata
        In the models' input space (prepared), with the models' label column.
    models
        Keys of stored classifiers (``uns['scadv'][model]``); they must share the input genes.
    eps
        Budgets in z-score units (L∞); 0 is the clean accuracy.
    steps
        PGD steps per budget.
    cells
        ``'test'`` (each model's test split; default), ``'all'``, cell names or a boolean mask.
        Unlabelled cells are left out.
    key_added
        Name of the record.
    batch_size, seed, device, progress
        As for :func:`scadv.tl.pgd`.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]``:
    ``table`` (a DataFrame with one row per model and budget: ``model``, ``eps``,
    ``accuracy``, ``n_cells``), ``models``, ``eps``, ``accuracy`` (models × budgets),
    ``accuracy_per_class`` (models × budgets × classes, classes of the first model),
    ``classes``, the attack's parameters and provenance.
    """
    V.options(locals())
    V.names("models", models)
    V.reals("eps", eps, low=0.0)
    V.positive_int("steps", steps)
    start = logg.info(f"robust accuracy of {list(models)}")
    params = P.call_params(locals(), robust_accuracy)
    adata = V.start(adata, copy=copy)
    if isinstance(models, str):
        models = [models]
    models = [str(m) for m in models]
    if not models:
        raise ScadvInputError("models is empty; name at least one stored classifier.")
    eps_t = check_eps_grid(eps)
    if int(steps) < 1:
        raise ScadvInputError(f"steps must be ≥ 1, got {steps}.")
    dev = D.resolve(device)
    records = [C.model_record(adata, m) for m in models]
    classes = [str(c) for c in np.asarray(records[0]["classes"])]
    rows, acc, per_class, masks = [], [], [], []
    for name, record in zip(models, records, strict=True):
        label_key = str(record.get("label_key", ""))
        model_classes = [str(c) for c in np.asarray(record["classes"])]
        if label_key not in adata.obs:
            raise ScadvInputError(f"model {name!r} was trained on obs[{label_key!r}], which adata "
                                  "lacks; robust accuracy needs the true labels.")
        mask = C.select_cells(adata, cells, split_key=C.split_column(record, name))
        y = C.class_index(V.labels(adata, label_key), model_classes)
        mask &= y >= 0
        if not mask.any():
            raise ScadvInputError(f"no labelled cells selected for model {name!r}.")
        masks.append(mask)
        x = R.source(adata, record["prepare"]).dense(np.flatnonzero(mask),
                                                     what="the evaluated cells' model input")
        net = M.from_record(record, dev)
        res = evaluate(net, x, y[mask], eps_t, n_classes=len(model_classes), steps=int(steps),
                       device=dev, seed=seed, batch_size=int(batch_size), progress=progress)
        acc.append(res["accuracy"])
        aligned = np.full((len(eps_t), len(classes)), np.nan)
        for j, c in enumerate(model_classes):
            if c in classes:
                aligned[:, classes.index(c)] = res["accuracy_per_class"][:, j]
        per_class.append(aligned)
        rows += [{"model": name, "eps": e, "accuracy": float(a), "n_cells": int(mask.sum())}
                 for e, a in zip(eps_t, res["accuracy"], strict=True)]
    if any(not np.array_equal(masks[0], m) for m in masks[1:]):
        logg.warning("the models are evaluated on different cells (different test splits); "
                     "train them with one split (split_key=...) to compare them cell for cell.")
    rec: dict[str, Any] = {
        "table": pd.DataFrame(rows),
        "models": models,
        "eps": np.asarray(eps_t),
        "accuracy": np.asarray(acc),
        "accuracy_per_class": np.asarray(per_class),
        "classes": classes,
        "attack": {"norm": "linf", "loss": "margin", "steps": int(steps),
                   "alpha": "2.5 * eps / steps", "away_from": "label", "early_stop": True},
        "same_cells": bool(all(np.array_equal(masks[0], m) for m in masks[1:])),
        "provenance": P.record(params, seed=seed, device=dev),
    }
    summary = "; ".join(f"{m}: " + ", ".join(f"{a:.3f}" for a in row)
                        for m, row in zip(models, acc, strict=True))
    write_results(adata, step=f"robust accuracy at ε={list(eps_t)} ({summary})", start=start,
                  uns={key_added: rec})
    return adata if copy else None
