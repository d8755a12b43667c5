"""The front end shared by :func:`scadv.tl.pgd` and :func:`scadv.tl.fgsm`: checks, threat-model
constraints, metrics and writing the results. The attack itself runs in :mod:`._engine`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from torch import nn

from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _parallel as PAR
from ... import _provenance as P
from ... import _recipe as R
from ... import _rows as RW
from ... import _store as ST
from ... import _validate as V
from ..._colors import FLIPPED_COLOR, UNCHANGED_COLOR, class_colors
from ..._errors import ScadvInputError
from ..._results import write_results
from ..._store import Perturbation
from .. import _common as C
from .._models import _resolve as RS
from . import _engine as E

Norm = E.Norm
Loss = E.Loss
Budget = E.Budget
AwayFrom = Literal["prediction", "label"]
Clip = Literal["observed"] | tuple[float, float] | None


def check_budget(eps: float | Sequence[float], *, norm: str, loss: str, steps: int,
                 n_restarts: int, alpha: float | None) -> tuple[float, ...]:
    """Validate the options every attack shares; returns ε as a tuple.

    Budgets whose names would coincide (``eps=(0.1, 0.1000001)`` both write
    ``scadv_<key>_eps0.1``) are refused: one would silently overwrite the other's results.
    """
    eps_t = V.reals("eps", eps, low=0.0, low_open=True)
    V.choice("norm", norm, ("linf", "l2"))
    V.choice("loss", loss, ("ce", "margin"))
    V.positive_int("steps", steps)
    V.positive_int("n_restarts", n_restarts)
    V.optional_positive("alpha", alpha)
    if len(set(eps_t)) != len(eps_t):
        raise ScadvInputError(f"eps has repeated values {eps_t}; each budget is one layer.")
    names = [K.format_eps(e) for e in eps_t]
    alike = sorted({n for n in names if names.count(n) > 1})
    if alike:
        raise ScadvInputError(
            f"eps={eps_t} holds different budgets written alike ({alike}): their results "
            "would be stored under the same names and overwrite each other. Use budgets that "
            "differ in their first six significant digits, or run them with different "
            "key_added."
        )
    return eps_t


def constraints(src: R.Source, record: Mapping[str, Any], cells: np.ndarray, x0: np.ndarray,
                *, genes: Sequence[str] | np.ndarray | None, clip: Clip, keep_zeros: bool,
                adata: AnnData | None = None) -> tuple[E.Constraints, dict[str, Any]]:
    """Translate the user's realism options into masks and bounds (and a record of them), for
    the cells at positions ``cells`` whose model input is ``x0``."""
    recipe = record["prepare"]
    model_genes = np.asarray(record["genes"]).astype(str)
    out = E.Constraints()
    note: dict[str, Any] = {"genes": "all", "clip": "none", "keep_zeros": bool(keep_zeros)}
    if genes is not None:
        out.genes = gene_mask(genes, model_genes)
        note["genes"] = model_genes[out.genes]
    if clip is not None:
        if isinstance(clip, str):
            if clip != "observed":
                raise ScadvInputError(
                    f"clip must be None, 'observed' or (low, high), got {clip!r}.")
            out.lower = np.asarray(recipe["x_min"], dtype=np.float32)
            out.upper = np.asarray(recipe["x_max"], dtype=np.float32)
            note["clip"] = "observed"
        else:
            low, high = (float(v) for v in clip)
            if not low < high:
                raise ScadvInputError(f"clip=(low, high) needs low < high, got {clip!r}.")
            out.lower = np.full(len(model_genes), low, dtype=np.float32)
            out.upper = np.full(len(model_genes), high, dtype=np.float32)
            note["clip"] = [low, high]
    if keep_zeros:
        out.keep_zeros = zero_mask(src, recipe, cells, x0, adata=adata)
        floor = np.asarray(recipe["zero_level"], dtype=np.float32)
        out.lower = floor if out.lower is None else np.maximum(out.lower, floor)
        note["zero_fraction"] = float(out.keep_zeros.mean())
    return out, note


def gene_mask(genes: Sequence[str] | np.ndarray, model_genes: np.ndarray) -> np.ndarray:
    """Boolean mask over the model genes from names or a mask, with clear errors."""
    arr = np.asarray(genes)
    if arr.dtype == bool:
        if arr.shape != (len(model_genes),):
            raise ScadvInputError(f"a boolean genes mask needs {len(model_genes)} entries "
                                  f"(one per model gene), got {arr.shape}.")
        mask = arr.copy()
    else:
        pos = pd.Index(model_genes).get_indexer(arr.astype(str))
        if (pos < 0).any():
            raise ScadvInputError(
                f"{int((pos < 0).sum())} genes are not model genes (e.g. "
                f"{arr[pos < 0][:5].tolist()}); only the model's input genes can be attacked."
            )
        mask = np.zeros(len(model_genes), dtype=bool)
        mask[pos] = True
    if not mask.any():
        raise ScadvInputError("the genes selection is empty; allow at least one gene to move.")
    return mask


def zero_mask(src: R.Source, recipe: Mapping[str, Any], cells: np.ndarray, x0: np.ndarray, *,
              adata: AnnData | None = None) -> np.ndarray:
    """Which (cell, gene) entries of the cells at positions ``cells`` are at zero expression.

    Exact from the counts or log-normalised values the model input is computed from; for data
    whose ``X`` already holds the model input, from ``.raw`` or the ``'counts'`` layer when
    they cover the model genes, otherwise from each gene's model-space zero level.
    """
    if src.kind in ("counts", "lognorm"):
        zero = src.lognorm(cells) == 0
        zero[:, src.missing] = False
        return zero
    genes = np.asarray(recipe["genes"]).astype(str)
    if adata is not None:
        for matrix, names in ((None if adata.raw is None else adata.raw.X,
                               None if adata.raw is None else adata.raw.var_names),
                              (adata.layers.get(K.COUNTS_LAYER), adata.var_names)):
            if matrix is None:
                continue
            pos = pd.Index(names).get_indexer(genes)
            if (pos >= 0).all():
                sub = RW.read(matrix, cells)[:, pos]
                return V.dense(sub) == 0
    return np.isclose(x0, np.asarray(recipe["zero_level"], dtype=np.float32)[None, :], atol=1e-5)


def summarise(adv_pred: np.ndarray, clean_pred: np.ndarray, y_true: np.ndarray,
              group: np.ndarray, sizes: Mapping[str, np.ndarray], n_classes: int,
              target: int | None) -> dict[str, Any]:
    """Flip rate, robust accuracy (overall and per class) and perturbation sizes per ε.

    ``adv_pred`` is ``(n_eps, n_cells)``; ``sizes`` holds per-cell ``linf``, ``l2`` and
    ``genes_moved`` arrays of shape ``(n_eps, n_cells)``.
    """
    flipped = adv_pred != clean_pred[None, :]
    labelled = y_true >= 0
    per_class_flip = np.full((len(adv_pred), n_classes), np.nan)
    per_class_robust = np.full((len(adv_pred), n_classes), np.nan)
    n_group = np.bincount(group[group >= 0], minlength=n_classes)
    for c in np.flatnonzero(n_group):
        members = group == c
        per_class_flip[:, c] = flipped[:, members].mean(axis=1)
        if labelled[members].any():
            lab = members & labelled
            per_class_robust[:, c] = (adv_pred[:, lab] == y_true[None, lab]).mean(axis=1)
    out = {
        "flip_rate": flipped.mean(axis=1),
        "flip_rate_per_class": per_class_flip,
        "n_cells_per_class": n_group.astype(np.int64),
        "robust_accuracy": ((adv_pred[:, labelled] == y_true[None, labelled]).mean(axis=1)
                            if labelled.any() else np.full(len(adv_pred), np.nan)),
        "robust_accuracy_per_class": per_class_robust,
        "linf_mean": sizes["linf"].mean(axis=1),
        "l2_mean": sizes["l2"].mean(axis=1),
        "genes_moved_mean": sizes["genes_moved"].mean(axis=1),
    }
    if target is not None:
        eligible = clean_pred != target
        out["target_success_rate"] = ((adv_pred[:, eligible] == target).mean(axis=1)
                                      if eligible.any() else np.full(len(adv_pred), np.nan))
    return out


#: Cells attacked per chunk: each chunk's model input, adversarial versions and deltas are in
#: memory together (about ``chunk × genes × 4 B × (2 + 2·n_eps)``), the rest is streamed.
ATTACK_CHUNK = 8192


def attack(adata: AnnData, *, method: str, start: datetime, params: dict[str, Any],
           budget: Budget, target: str | None, away_from: AwayFrom,
           genes: Sequence[str] | np.ndarray | None, clip: Clip, keep_zeros: bool,
           cells: C.Cells, model: Any, key_added: str | None, batch_size: int, seed: int,
           device: D.Device, progress: bool, early_stop: bool = True,
           objective: Callable[[M.MLP, torch.device], E.Objective] | None = None,
           lower: np.ndarray | None = None, extra: Mapping[str, Any] | None = None) -> None:
    """Run an attack on ``adata`` (already validated and copied if asked) and write results.

    ``objective`` builds a custom attacker objective from the rebuilt classifier and device
    (e.g. an adaptive attacker's); ``lower`` raises the per-gene lower bound further;
    ``extra`` entries are added to the run's record.
    """
    dev = D.resolve(device)
    resolved = RS.resolve(adata, model, dev)
    record, model = resolved.record, resolved.key
    key = key_added or K.default_attack_key(method, model)
    if int(batch_size) < 1:
        raise ScadvInputError(f"batch_size must be ≥ 1, got {batch_size}.")
    classes = [str(c) for c in np.asarray(record["classes"])]
    if away_from not in ("prediction", "label"):
        raise ScadvInputError(f"away_from must be 'prediction' or 'label', got {away_from!r}.")
    target_idx = C.target_index(classes, target)

    mask = C.select_cells(adata, cells, split_key=C.split_column(record, model))
    src = R.source(adata, record["prepare"], what="adata")
    label_key = str(record.get("label_key", ""))
    y_all = (C.class_index(V.labels(adata, label_key), classes)
             if label_key in adata.obs else np.full(adata.n_obs, -1))
    n_eps = len(budget.eps)
    idx_all = np.flatnonzero(mask)
    chunks = list(RW.chunks(idx_all, ATTACK_CHUNK))
    on_dask = PAR.lazy(src.matrix)

    def per_chunk(n_chunk: int, idx: np.ndarray) -> tuple[Any, ...]:
        # zero masks that come from adata.raw or a counts layer (when X holds the model input)
        # are read here; from counts or log-normalised rows they are computed with the rows
        zeros = None
        if keep_zeros and on_dask and src.kind not in ("counts", "lognorm"):
            zeros = zero_mask(src, record["prepare"], idx, src.rows(idx), adata=adata)
        return n_chunk, y_all[idx], zeros

    options = _ChunkOptions(
        budget=budget, target_idx=target_idx, away_from=away_from, genes=genes, clip=clip,
        keep_zeros=keep_zeros, batch_size=int(batch_size), seed=seed, early_stop=early_stop,
        progress=progress and not on_dask, lower=None if lower is None else np.asarray(
            lower, dtype=np.float32), objective=objective)
    results = PAR.map_cells(_attack_chunk, src, chunks, per_chunk=per_chunk,
                            shared=(record, resolved.module, options, device,
                                    None if on_dask else adata),
                            progress=progress and on_dask, desc=method)
    clean_pred = np.concatenate([r.pred for r in results]) if results else np.empty(0, np.int64)
    adv_pred = (np.concatenate([r.adv_pred for r in results], axis=1) if results
                else np.empty((n_eps, 0), np.int64))
    sizes = {k: (np.concatenate([r.sizes[k] for r in results], axis=1) if results
                 else np.empty((n_eps, 0))) for k in ("linf", "l2", "genes_moved")}
    parts = [[(idx, r.blocks[i]) for idx, r in zip(chunks, results, strict=True)]
             for i in range(n_eps)]
    for r in results:  # the pieces live in ``parts`` only: collect() frees them as it copies
        r.blocks = []
    cons_note = results[-1].note if results else {}
    if keep_zeros:
        zeros = sum(r.note["zero_fraction"] * len(idx)
                    for idx, r in zip(chunks, results, strict=True))
        cons_note = {**cons_note, "zero_fraction": zeros / max(len(idx_all), 1)}

    y_sel = y_all[idx_all]
    group = np.where(y_sel >= 0, y_sel, clean_pred)
    summary = summarise(adv_pred, clean_pred, y_sel, group, sizes, len(classes), target_idx)
    clean = C.metrics(y_sel, clean_pred, len(classes))
    obs, colors = {}, {}
    palette = class_colors(adata, label_key, classes)
    perturbations = []
    for i, e in enumerate(budget.eps):
        name = K.attack_layer(key, e)
        cells_i, rows_i = ST.collect(parts[i], src.n_genes)
        perturbations.append(Perturbation(name=name, cells=cells_i, rows=rows_i, space="model",
                                          model=model, run=key))
        obs.update(_obs_columns(adata.n_obs, mask, clean_pred, adv_pred[i], classes, key, e))
        colors[K.attack_pred(key, e)] = palette
        colors[K.attack_flipped(key, e)] = [UNCHANGED_COLOR, FLIPPED_COLOR]
        colors[K.attack_flipped_to(key, e)] = [*palette, UNCHANGED_COLOR]
    rec = {
        "method": method,
        "model": model,
        "classes": classes,
        "eps": np.asarray(budget.eps),
        "norm": budget.norm,
        "alpha": np.asarray(budget.alpha),
        "steps": budget.steps,
        "random_start": budget.random_start,
        "n_restarts": budget.n_restarts,
        "loss": budget.loss,
        "early_stop": bool(early_stop),
        "target": "None" if target is None else str(target),
        "away_from": away_from,
        "constraints": cons_note,
        "n_cells": int(mask.sum()),
        "cells": cells if isinstance(cells, str) else "custom",
        "grouped_by": label_key if (y_sel >= 0).any() else "prediction",
        "layers": [K.attack_layer(key, e) for e in budget.eps],
        "clean_accuracy": clean["accuracy"],
        "clean_accuracy_per_class": clean["per_class_accuracy"],
        **summary,
        **dict(extra or {}),
        "provenance": P.record(params, seed=seed, device=dev),
    }
    rates = ", ".join(f"ε={K.format_eps(e)}: {r:.3f}"
                      for e, r in zip(budget.eps, summary["flip_rate"], strict=True))
    write_results(adata, step=f"{method} on {int(mask.sum())} cells (flip rate {rates})",
                  start=start, uns={key: rec}, obs=obs, perturbations=perturbations,
                  colors=colors)


@dataclass(frozen=True)
class _ChunkOptions:
    """What every chunk of an attack shares besides the classifier's record."""

    budget: Budget
    target_idx: int | None
    away_from: AwayFrom
    genes: Sequence[str] | np.ndarray | None
    clip: Clip
    keep_zeros: bool
    batch_size: int
    seed: int
    early_stop: bool
    progress: bool
    lower: np.ndarray | None
    objective: Callable[[M.MLP, torch.device], E.Objective] | None


@dataclass
class _ChunkResult:
    pred: np.ndarray  # (n,) clean prediction
    adv_pred: np.ndarray  # (n_eps, n)
    sizes: dict[str, np.ndarray]  # linf, l2, genes_moved: (n_eps, n)
    blocks: list[sparse.csr_matrix | np.ndarray]  # per budget: each cell's change (n × genes)
    note: dict[str, Any]  # the constraints as recorded


def _attack_chunk(src: R.Source, idx: np.ndarray, n_chunk: int, y_true: np.ndarray,
                  zeros: np.ndarray | None, record: Mapping[str, Any],
                  module: nn.Module | None, opt: _ChunkOptions, device: D.Device,
                  adata: AnnData | None) -> _ChunkResult:
    """Attack one chunk of cells (positions ``idx`` of ``src``): a task of
    :func:`scadv._parallel.map_cells`. Its random starts are seeded by the chunk's number.
    The classifier is rebuilt from ``record``, or is ``module`` (a torch module held in
    memory, see :func:`scadv._model.network`)."""
    dev = D.resolve(device)
    net = M.network(record, dev, module)
    built = None if opt.objective is None else opt.objective(
        M.require_mlp(net, action="an adaptive attack"), dev)
    x0 = src.rows(idx)
    _, clean_logits = M.infer(net, x0, device=dev)
    pred = clean_logits.argmax(axis=1)
    if opt.target_idx is not None:
        y_attack = np.full(len(x0), opt.target_idx)
    elif opt.away_from == "label":
        y_attack = np.where(y_true >= 0, y_true, pred)
    else:
        y_attack = pred
    cons, note = constraints(src, record, idx, x0, genes=opt.genes, clip=opt.clip,
                             keep_zeros=opt.keep_zeros and zeros is None, adata=adata)
    if zeros is not None:  # read where the AnnData is (see attack())
        cons.keep_zeros = zeros
        floor = np.asarray(record["prepare"]["zero_level"], dtype=np.float32)
        cons.lower = floor if cons.lower is None else np.maximum(cons.lower, floor)
        note = {**note, "keep_zeros": True, "zero_fraction": float(zeros.mean())}
    if opt.lower is not None:
        cons.lower = opt.lower if cons.lower is None else np.maximum(cons.lower, opt.lower)
    adv, _ = E.run(net, x0, y_attack, opt.budget, cons, targeted=opt.target_idx is not None,
                   device=dev, seed=opt.seed + 1_000_003 * n_chunk, batch_size=opt.batch_size,
                   progress=opt.progress, early_stop=opt.early_stop, objective=built)
    n_eps = len(opt.budget.eps)
    adv_pred = np.empty((n_eps, len(x0)), dtype=np.int64)
    sizes = {k: np.empty((n_eps, len(x0))) for k in ("linf", "l2", "genes_moved")}
    blocks = []
    for i in range(n_eps):
        delta = adv[i] - x0
        # what is stored (clean + delta) is what is evaluated, to the last bit
        _, logits = M.infer(net, x0 + delta, device=dev)
        adv_pred[i] = logits.argmax(axis=1)
        sizes["linf"][i] = np.abs(delta).max(axis=1)
        sizes["l2"][i] = np.linalg.norm(delta, axis=1)
        sizes["genes_moved"][i] = (np.abs(delta) > 1e-6).sum(axis=1)
        blocks.append(ST.compact(delta))
    return _ChunkResult(pred, adv_pred, sizes, blocks, note)


def _obs_columns(n_obs: int, mask: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray,
                 classes: list[str], key: str, eps: float) -> dict[str, Any]:
    """Per-cell columns of one budget (categoricals, so ``sc.pl.umap`` can colour them);
    NaN for cells that were not attacked."""
    codes = np.full(n_obs, -1)
    codes[mask] = adv_pred
    flip_codes = np.full(n_obs, -1)
    flip_codes[mask] = (adv_pred != clean_pred).astype(int)
    to_codes = np.full(n_obs, -1)
    to_codes[mask] = np.where(adv_pred != clean_pred, adv_pred, len(classes))
    return {
        K.attack_pred(key, eps): pd.Categorical.from_codes(codes, categories=classes),
        K.attack_flipped(key, eps): pd.Categorical.from_codes(flip_codes, categories=[False, True]),
        K.attack_flipped_to(key, eps): pd.Categorical.from_codes(
            to_codes, categories=[*classes, K.UNCHANGED]),
    }
