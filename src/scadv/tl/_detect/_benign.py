"""``scadv.tl.benign_perturb``: realistic changes a detector must NOT flag."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
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

    ``adata.layers['scadv_<k>_<t>']``
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
    C.check_model_space(adata, record, action="scadv.tl.benign_perturb")
    recipe = record["prepare"]
    mask = C.select_cells(adata, cells, split_key=C.split_column(record, model))
    counts, genes_all, lognorm = _full_counts(adata, recipe, mask)
    x = R.model_input(adata, recipe).x
    dev = D.resolve(device)
    net = M.from_record(record, dev)
    _, clean_logits = M.infer(net, x[mask], device=dev)
    clean_pred = clean_logits.argmax(axis=1)
    classes = [str(c) for c in np.asarray(record["classes"])]
    palette = A.class_colors(adata, str(record.get("label_key", "")), classes)
    rng = np.random.default_rng(seed)
    layers, obs, colors, changed = {}, {}, {}, {}
    names = []
    for kind in kinds_t:
        if kind == "noise":
            new = lognorm.copy()
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
            new = R.lognormalize(new_counts, target_sum=float(recipe["target_sum"]))
        aligned, _ = R.align(new, genes_all, np.asarray(recipe["genes"]).astype(str),
                             missing_genes="error", what="adata.raw")
        xp = R.lognorm_to_model(aligned, recipe)
        layer = K.benign_layer(key_added, kind)
        full = x.copy()
        full[mask] = xp
        layers[layer] = full
        _, logits = M.infer(net, xp, device=dev)
        pred = logits.argmax(axis=1)
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
                  start=start, uns={key_added: rec}, obs=obs, layers=layers, colors=colors)
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


def _full_counts(adata: AnnData, recipe: Mapping[str, Any], mask: np.ndarray
                 ) -> tuple[sparse.csr_matrix, np.ndarray, sparse.csr_matrix]:
    """Counts of all genes of the selected cells, rebuilt from ``.raw`` and library sizes;
    returns ``(counts, gene names, log-normalised values)``."""
    if (str(recipe.get("input_kind")) != "counts" or adata.raw is None
            or K.LIBRARY_SIZE not in adata.obs):
        raise ScadvInputError(
            "benign perturbations need the counts of all genes, which scadv rebuilds from "
            f"adata.raw and obs[{K.LIBRARY_SIZE!r}]: run scadv.pp.prepare on raw counts (the "
            "AnnData as read from disk) to get them."
        )
    lognorm = sparse.csr_matrix(adata.raw.X[np.flatnonzero(mask)], dtype=np.float32)
    lib = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)[mask]
    rows = np.repeat(np.arange(lognorm.shape[0]), np.diff(lognorm.indptr))
    counts = lognorm.copy()
    counts.data = np.rint(np.expm1(lognorm.data.astype(np.float64)) * lib[rows]
                          / float(recipe["target_sum"])).astype(np.float32)
    counts.eliminate_zeros()
    return counts, np.asarray(adata.raw.var_names).astype(str), lognorm
