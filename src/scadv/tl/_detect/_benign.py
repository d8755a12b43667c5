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

Kind = Literal["downsample", "deeper", "dropout", "noise", "batch", "ambient", "doublet",
               "missing"]
KINDS: tuple[Kind, ...] = ("downsample", "deeper", "dropout", "noise", "batch", "ambient",
                           "doublet", "missing")


def benign_perturb(
    adata: AnnData,
    *,
    kinds: Sequence[Kind] = KINDS,
    downsample: float = 0.5,
    depth: float = 4.0,
    dropout: float = 0.1,
    noise: float = 0.1,
    batch: float = 0.3,
    ambient: float = 0.05,
    missing: int | None = None,
    cells: C.Cells = "test",
    model: str = K.DEFAULT_MODEL,
    key_added: str = K.DEFAULT_BENIGN,
    seed: int = 0,
    device: D.Device = "auto",
    copy: bool = False,
) -> AnnData | None:
    """Benign perturbations of measured cells, re-processed with the stored preprocessing.

    Each changes the whole counts of all genes the way another measurement of the same cell —
    another depth, another batch, another lab — could, then applies the classifier's recipe
    again (normalise by the new library size, ``log1p``, z-score, clip), so the result is a
    cell that could have been measured. A detector of manipulated cells should flag these no
    more often than clean cells.

    ``'downsample'``
        Binomial thinning of every count to a fraction ``downsample``: the same cell sequenced
        less deeply.
    ``'deeper'``
        Every count resampled as Poisson(``depth`` · count): the same cell sequenced about
        ``depth`` times more deeply (libraries beyond the reference's).
    ``'dropout'``
        Each expressed gene of a cell loses all its counts with probability ``dropout``.
    ``'noise'``
        Every count resampled as Poisson(count · e^ε), ε ~ N(0, σ²) with σ = ``noise``, per gene
        and cell: a re-measurement with extra multiplicative noise; unexpressed genes stay at
        zero.
    ``'batch'``
        A batch effect: one factor e^ε per gene, ε ~ N(0, σ²) with σ = ``batch``, shared by all the
        cells; counts thinned binomially where it is below 1, raised by Poisson draws where
        it is above.
    ``'ambient'``
        Ambient RNA: Poisson counts from the soup (the average expression profile of all
        cells of ``adata``) added to each cell, a fraction ``ambient`` of its new library.
    ``'doublet'``
        A same-type doublet: each cell's counts plus those of another selected cell of the
        same predicted class (its own when it is the only one).
    ``'missing'``
        ``missing`` model genes, drawn at random, absent from the data: set to their training
        mean, as ``missing_genes='mean'`` does for data that lacks them.

    The full counts are rebuilt from ``.raw`` (log-normalised values of all genes) and
    ``obs['scadv_library_size']``, both written by :func:`scadv.pp.prepare` from counts.

    Parameters
    ----------
    adata
        Prepared from raw counts, with a stored classifier.
    kinds
        Which perturbations to make (one each); default all.
    downsample
        Fraction of counts kept, in (0, 1).
    depth
        Factor of the deeper libraries (> 1).
    dropout
        Probability that an expressed gene drops to zero, in (0, 1).
    noise
        Standard deviation of the per-count log-normal factor (> 0).
    batch
        Standard deviation of the per-gene log batch factor (> 0).
    ambient
        Fraction of each new library that is ambient RNA, in (0, 1).
    missing
        Number of model genes made absent (≥ 1, fewer than the model genes); default 100, or a
        tenth of the model genes for models with fewer than 1,000.
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
        The change of the selected cells' model input (compact; read the perturbed cells with
        :func:`scadv.get.perturbed`).
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
    kinds_t = _check(kinds, downsample=downsample, depth=depth, dropout=dropout, noise=noise,
                     batch=batch, ambient=ambient, missing=missing)
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
    if missing is None:
        missing = max(1, min(100, src.n_genes // 10))
    if "missing" in kinds_t and int(missing) >= src.n_genes:
        raise ScadvInputError(f"missing must be fewer than the model's {src.n_genes} genes, got "
                              f"{missing}.")
    rng = np.random.default_rng(seed)
    clean_pred = np.concatenate([M.infer(net, src.rows(c), device=dev)[1].argmax(axis=1)
                                 for c in RW.chunks(idx_all)])
    perturbations, obs, colors, changed = [], {}, {}, {}
    names = []
    target_sum = float(recipe["target_sum"])
    n_all = adata.n_obs
    factors = soup = partner = None
    for kind in kinds_t:
        if kind == "missing":
            gone = np.zeros(src.n_genes, dtype=bool)
            gone[rng.choice(src.n_genes, size=int(missing), replace=False)] = True
        elif kind == "batch":
            factors = np.exp(rng.normal(0.0, batch, read(idx_all[:1])[0].shape[1]))
        elif kind == "ambient" and soup is None:
            soup = _soup(read, n_all)
        elif kind == "doublet" and partner is None:
            partner = _partners(clean_pred, idx_all, rng)
        parts, preds = [], []
        # cells in order, chunk by chunk: the random draws follow the cells, as in one piece
        for pos in RW.chunks(np.arange(len(idx_all))):
            chunk = idx_all[pos]
            x0 = src.rows(chunk)
            if kind == "missing":
                xp = x0.copy()
                xp[:, gone] = 0.0  # the training mean, as missing_genes='mean' fills it
            else:
                counts, gene_names, _ = read(chunk)
                if kind == "doublet" and partner is not None:
                    new_counts = sparse.csr_matrix(counts + read(partner[pos])[0])
                else:
                    new_counts = _shift(kind, counts, rng, downsample=downsample, depth=depth,
                                        dropout=dropout, noise=noise, factors=factors,
                                        soup=soup, ambient=ambient)
                new_counts.eliminate_zeros()
                new = R.lognormalize(new_counts, target_sum=target_sum)
                aligned, _ = R.align(new, gene_names, src.genes, missing_genes="error",
                                     what="the perturbed cells")
                xp = R.lognorm_to_model(aligned, recipe)
                if src.missing.any():
                    xp[:, src.missing] = x0[:, src.missing]
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
        "downsample": float(downsample), "depth": float(depth), "dropout": float(dropout),
        "noise": float(noise), "batch": float(batch), "ambient": float(ambient),
        "missing": int(missing),
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


def _check(kinds: Sequence[str], *, downsample: float, depth: float, dropout: float,
           noise: float, batch: float, ambient: float, missing: int | None
           ) -> tuple[str, ...]:
    chosen = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    problems = []
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        problems.append(f"kinds must be distinct values of {list(KINDS)}, got {list(chosen)}")
    for name, value in (("downsample", downsample), ("dropout", dropout),
                        ("ambient", ambient)):
        if not 0 < value < 1:
            problems.append(f"{name} must be in (0, 1), got {value}")
    if not depth > 1:
        problems.append(f"depth must be > 1, got {depth}")
    for name, value in (("noise", noise), ("batch", batch)):
        if not value > 0:
            problems.append(f"{name} must be positive, got {value}")
    if missing is not None and int(missing) < 1:
        problems.append(f"missing must be ≥ 1 gene, got {missing}")
    if problems:
        raise ScadvInputError("; ".join(problems) + ".")
    return tuple(k for k in KINDS if k in chosen)


def _shift(kind: str, counts: sparse.csr_matrix, rng: np.random.Generator, *,
           downsample: float, depth: float, dropout: float, noise: float,
           factors: np.ndarray | None, soup: np.ndarray | None, ambient: float
           ) -> sparse.csr_matrix:
    """The counts of all genes of a chunk of cells after one benign change (whole numbers)."""
    new = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
    data = new.data.astype(np.int64)
    if kind == "downsample":
        new.data = rng.binomial(data, downsample).astype(np.float32)
    elif kind == "deeper":
        new.data = rng.poisson(new.data.astype(np.float64) * depth).astype(np.float32)
    elif kind == "dropout":
        new.data[rng.random(new.nnz) < dropout] = 0
    elif kind == "noise":
        level = new.data.astype(np.float64) * np.exp(rng.normal(0.0, noise, new.nnz))
        new.data = rng.poisson(level).astype(np.float32)
    elif kind == "batch" and factors is not None:
        f = factors[new.indices]
        thinned = rng.binomial(data, np.minimum(f, 1.0))
        raised = data + rng.poisson(data * np.maximum(f - 1.0, 0.0))
        new.data = np.where(f < 1.0, thinned, raised).astype(np.float32)
    elif kind == "ambient" and soup is not None:
        # Poisson(rate · soup_g) per gene = Poisson(rate) UMIs, each on a gene drawn from the
        # soup (Poisson splitting): never a dense cells × all-genes matrix
        lib = np.asarray(new.sum(axis=1), dtype=np.float64).ravel()
        n_amb = rng.poisson((ambient / (1.0 - ambient)) * lib)
        genes = rng.choice(len(soup), size=int(n_amb.sum()), p=soup)
        rows = np.repeat(np.arange(new.shape[0]), n_amb)
        amb = sparse.csr_matrix((np.ones(len(genes), np.float32), (rows, genes)),
                                shape=new.shape)
        amb.sum_duplicates()
        new = sparse.csr_matrix(new + amb)
    return new


def _soup(read: Callable[[np.ndarray], tuple[sparse.csr_matrix, np.ndarray, np.ndarray]],
          n_obs: int) -> np.ndarray:
    """The average expression profile of all cells (fractions of counts per gene)."""
    total = None
    for chunk in RW.chunks(np.arange(n_obs)):
        part = np.asarray(read(chunk)[0].sum(axis=0), dtype=np.float64).ravel()
        total = part if total is None else total + part
    if total is None or total.sum() <= 0:
        raise ScadvInputError("the ambient profile needs cells with counts.")
    return total / total.sum()


def _partners(pred: np.ndarray, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each selected cell, another selected cell of its predicted class (cell positions)."""
    out = np.empty(len(cells), dtype=np.int64)
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        shift = rng.integers(1, len(members)) if len(members) > 1 else 0
        out[members] = cells[np.roll(members, -shift)]
    return out


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
