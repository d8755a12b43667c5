"""``scadv.tl.benign_perturb``: realistic changes a detector must NOT flag."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from scipy import sparse

from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _provenance as P
from ... import _recipe as R
from ... import _rows as RW
from ... import _store as ST
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from ..._store import Perturbation
from .. import _common as C
from .._attacks import _attack as A
from . import _common as MC

Kind = Literal["downsample", "dropout", "noise"]
KINDS: tuple[Kind, ...] = ("downsample", "dropout", "noise")


def benign_perturb(
    adata: AnnData,
    *,
    kinds: Sequence[Kind] = KINDS,
    downsample: float = 0.5,
    dropout: float = 0.1,
    noise: float = 0.1,
    cells: C.Cells = "test",
    model: str = K.DEFAULT_MODEL,
    key_added: str = K.DEFAULT_BENIGN,
    seed: int = 0,
    device: D.Device = "auto",
    copy: bool = False,
) -> AnnData | None:
    """Benign perturbations of measured cells, re-processed with the stored preprocessing.

    Each changes the counts the way a second measurement of the same cell could, then
    applies the classifier's recipe again (normalise by the new library size, ``log1p``,
    z-score, clip), so the result is a cell that could have been measured. A detector of
    manipulated cells should flag these no more often than clean cells.

    ``'downsample'``
        Binomial thinning of every count (all genes) to a fraction ``downsample``: the same
        cell sequenced less deeply.
    ``'dropout'``
        Each expressed gene (all genes) of a cell loses all its counts with probability
        ``dropout``: extra dropout events.
    ``'noise'``
        Gaussian noise with standard deviation ``noise`` (natural-log units, about
        10% multiplicative noise for 0.1) added to the log-normalised value of every
        expressed gene, clipped at zero; unexpressed genes stay at zero.

    The full counts are rebuilt from ``.raw`` (log-normalised values of all genes) and
    ``obs['scadv_library_size']``, both written by :func:`scadv.pp.prepare` from counts.

    Parameters
    ----------
    adata
        Prepared from raw counts, with a stored classifier.
    kinds
        Which perturbations to make (one layer each).
    downsample
        Fraction of counts kept, in (0, 1).
    dropout
        Probability that an expressed gene drops to zero, in (0, 1).
    noise
        Standard deviation of the Gaussian noise on log-normalised values (> 0).
    cells
        ``'test'`` (the classifier's test split; default), ``'all'``, names or a mask.
    model
        Key of the stored classifier whose recipe and predictions are used.
    key_added
        Name of this run.
    seed
        Seeds the random draws.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (for the classifier's predictions).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes, for each kind ``t`` (``k`` = key_added):

    ``adata.obsm['scadv_<k>_<t>']``
        The model input with the selected cells replaced by their perturbed version.
    ``adata.obs['scadv_<k>_<t>_pred']``
        The classifier's prediction for the perturbed cell (NaN: not perturbed).
    ``adata.uns['scadv'][k]``
        ``method='benign'``, ``kinds``, ``layers``, the parameters, ``n_cells``,
        ``pred_changed`` (per kind, the fraction of perturbed cells whose predicted class
        changed) and provenance.
    """
    V.options(locals())
    V.names("kinds", kinds)
    V.fraction("downsample", downsample)
    V.fraction("dropout", dropout)
    V.positive("noise", noise)
    V.name("model", model)
    start = logg.info("making benign perturbations")
    params = P.call_params(locals(), benign_perturb)
    kinds_t = _check(kinds, downsample=downsample, dropout=dropout, noise=noise)
    adata = V.start(adata, copy=copy)
    record = C.model_record(adata, model)
    recipe = record["prepare"]
    mask = C.select_cells(adata, cells, split_key=C.split_column(record, model))
    idx_all = np.flatnonzero(mask)
    src = R.source(adata, recipe, what="adata")
    read = _count_reader(adata, src, recipe)
    dev = D.resolve(device)
    net = M.from_record(record, dev)
    classes = [str(c) for c in np.asarray(record["classes"])]
    palette = A.class_colors(adata, str(record.get("label_key", "")), classes)
    rng = np.random.default_rng(seed)
    clean_pred = np.concatenate([M.infer(net, src.rows(c), device=dev)[1].argmax(axis=1)
                                 for c in RW.chunks(idx_all)])
    perturbations, obs, colors, changed = [], {}, {}, {}
    names = []
    target_sum = float(recipe["target_sum"])
    for kind in kinds_t:
        parts, preds = [], []
        # cells in order, chunk by chunk: the random draws follow the cells, as in one piece
        for chunk in RW.chunks(idx_all):
            counts, gene_names, lib = read(chunk)
            if kind == "noise":
                new = sparse.csr_matrix(R.lognormalize(counts, target_sum=target_sum,
                                                       library_size=lib))
                new.data = np.maximum(new.data + rng.normal(0.0, noise, new.data.shape), 0.0
                                      ).astype(np.float32)
            else:
                new_counts = counts.copy()
                if kind == "downsample":
                    new_counts.data = rng.binomial(new_counts.data.astype(np.int64), downsample
                                                   ).astype(np.float32)
                else:
                    new_counts.data[rng.random(new_counts.nnz) < dropout] = 0
                new_counts.eliminate_zeros()
                new = R.lognormalize(new_counts, target_sum=target_sum)
            aligned, _ = R.align(new, gene_names, src.genes, missing_genes="error",
                                 what="the perturbed cells")
            xp = R.lognorm_to_model(aligned, recipe)
            x0 = src.rows(chunk)
            delta = xp - x0
            _, logits = M.infer(net, x0 + delta, device=dev)
            preds.append(logits.argmax(axis=1))
            block = sparse.csr_matrix(delta)
            block.eliminate_zeros()
            parts.append((chunk, block))
        layer = K.benign_layer(key_added, kind)
        cells_k, rows_k = ST.collect(parts, src.n_genes)
        perturbations.append(Perturbation(name=layer, cells=cells_k, rows=rows_k,
                                          space="model", model=model, run=key_added))
        pred = np.concatenate(preds) if preds else np.empty(0, np.int64)
        changed[kind] = float((pred != clean_pred).mean())
        codes = np.full(adata.n_obs, -1)
        codes[mask] = pred
        obs[K.layer_pred(layer)] = pd.Categorical.from_codes(codes, categories=classes)
        colors[K.layer_pred(layer)] = palette
        names.append(layer)
    rec: dict[str, Any] = {
        "method": MC.BENIGN_METHOD, "model": model, "kinds": list(kinds_t), "layers": names,
        "downsample": float(downsample), "dropout": float(dropout), "noise": float(noise),
        "n_cells": int(mask.sum()), "cells": cells if isinstance(cells, str) else "custom",
        "pred_changed": np.asarray([changed[k] for k in kinds_t]),
        "provenance": P.record(params, seed=seed, device=dev),
    }
    rates = ", ".join(f"{k}: {changed[k]:.3f}" for k in kinds_t)
    write_results(adata, step=f"benign perturbations of {int(mask.sum())} cells (prediction "
                              f"changed: {rates})",
                  start=start, uns={key_added: rec}, obs=obs, perturbations=perturbations,
                  colors=colors)
    return adata if copy else None


def _check(kinds: Sequence[str], *, downsample: float, dropout: float, noise: float
           ) -> tuple[str, ...]:
    chosen = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    problems = []
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        problems.append(f"kinds must be distinct values of {list(KINDS)}, got {list(chosen)}")
    if not 0 < downsample < 1:
        problems.append(f"downsample must be in (0, 1), got {downsample}")
    if not 0 < dropout < 1:
        problems.append(f"dropout must be in (0, 1), got {dropout}")
    if not noise > 0:
        problems.append(f"noise must be positive, got {noise}")
    if problems:
        raise ScadvInputError("; ".join(problems) + ".")
    return tuple(k for k in KINDS if k in chosen)


def _count_reader(adata: AnnData, src: R.Source, recipe: Mapping[str, Any]
                  ) -> Callable[[np.ndarray], tuple[sparse.csr_matrix, np.ndarray, np.ndarray]]:
    """``read(cells) -> (counts of all genes, gene names, library sizes)``: from the raw counts
    the model input is computed from, or — for data whose ``X`` holds the model input
    (``prepare(subset=True)``) — rebuilt from ``.raw`` and ``obs['scadv_library_size']``."""
    if src.kind == "counts":
        names = np.asarray(adata.var_names if not src.label.endswith(".raw")
                           else adata.raw.var_names).astype(str)

        def from_source(cells: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
            block = sparse.csr_matrix(RW.read(src.matrix, cells), dtype=np.float32)
            return block, names, np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        return from_source
    if (str(recipe.get("input_kind")) != "counts" or adata.raw is None
            or K.LIBRARY_SIZE not in adata.obs):
        raise ScadvInputError(
            "benign perturbations need the raw counts of all genes: pass the AnnData with its "
            "counts in X (as read from disk) or, for data prepared in place "
            f"(subset=True), keep adata.raw and obs[{K.LIBRARY_SIZE!r}]."
        )
    raw_names = np.asarray(adata.raw.var_names).astype(str)
    all_lib = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)

    def from_raw(cells: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
        lognorm = sparse.csr_matrix(RW.read(adata.raw.X, cells), dtype=np.float32)
        lib = all_lib[cells]
        rows = np.repeat(np.arange(lognorm.shape[0]), np.diff(lognorm.indptr))
        counts = lognorm.copy()
        counts.data = np.rint(np.expm1(lognorm.data.astype(np.float64)) * lib[rows]
                              / float(recipe["target_sum"])).astype(np.float32)
        counts.eliminate_zeros()
        return counts, raw_names, lib
    return from_raw
