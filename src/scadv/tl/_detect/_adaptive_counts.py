"""``scadv.tl.adaptive_count_attack``: a count-space attacker who queries the detector."""

from __future__ import annotations

from typing import Any

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
from ..._colors import FLIPPED_COLOR, UNCHANGED_COLOR, class_colors
from ..._errors import ScadvInputError
from ..._results import write_results
from ..._store import Perturbation
from .. import _common as C
from . import _common as MC
from . import _count_search as CS


def adaptive_count_attack(
    adata: AnnData,
    *,
    detector: str | None = K.DEFAULT_DETECTOR,
    lam: float = 1.0,
    budget: int = 60,
    kappa: float = 0.0,
    cap: int = 3,
    top_k: int = 16,
    cells: C.Cells = "test",
    model: str = K.DEFAULT_MODEL,
    key_added: str | None = None,
    batch_size: int = 128,
    seed: int = 42,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    r"""Count-space attack, optionally by an attacker who queries a stored detector.

    The attacker edits the raw UMI counts of the model genes one UMI at a time (at most
    ``cap`` added to and ``cap`` removed from any gene, the library size kept within the range
    of the data's cells, counts whole and ≥ 0), each state going through the classifier's
    recipe (library size included). Each step ranks all single-UMI edits by the gradient of
    its objective and *queries* the ``top_k`` best exactly, keeping the best. It stops at the
    first success, so the UMIs it used are what that cell cost.

    Without a detector (``detector=None`` or ``lam=0``) it is the plain count-space attack:
    the objective is the classifier's margin :math:`\max_{j \ne y} z_j - z_y` away from the
    clean prediction :math:`y`, success once it exceeds ``kappa`` (0: the first flip; 2: a
    margin-pushed attack). Against a detector, the objective is
    :math:`\min(\mathrm{margin}, \kappa + 1) - \lambda \cdot \max(\ell_\mathrm{det} -
    \ell_\mathrm{thr}, -1)`, with :math:`\ell_\mathrm{det}` the detector method's logit and
    :math:`\ell_\mathrm{thr}` its threshold's, and success means flipped (by more than
    ``kappa``) *and* below the detector's threshold: the attack evades. Whole counts pass the
    realism gate by construction.

    Evaluate the result with :func:`scadv.tl.meta_evaluate`.

    Parameters
    ----------
    adata
        With raw counts (the classifier's model input comes from them) and a classifier.
    detector
        Key of a stored detector to evade (its classifier is attacked), or ``None``.
    lam
        Weight λ ≥ 0 of the detector term; 0: ignore the detector.
    budget
        Most UMIs changed per cell.
    kappa
        Margin the classifier must be wrong by (0: the first flip).
    cap
        Most UMIs added to, and removed from, any one gene.
    top_k
        Edits queried exactly per cell and step.
    cells
        ``'test'`` (default), ``'all'``, names or a mask.
    model
        Key of the classifier to attack when ``detector`` is ``None``.
    key_added
        Name of the run; default ``'counts'`` without a detector, else
        ``'adaptive_counts_lam<λ>'``.
    batch_size
        Cells per batch.
    seed
        Kept for the record (the search is deterministic).
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes (``n`` = ``scadv_<key>_umis<budget>``):

    ``adata.obsm[n]``
        The count change of each attacked cell (whole numbers, model genes; stored compactly,
        ``space='counts'``; read it with :func:`scadv.get.perturbed`).
    ``adata.obs[n + '_pred']``, ``[n + '_flipped']``, ``[n + '_flipped_to']``
        The prediction for the attacked cell, whether it changed, and to what (NaN: not
        attacked).
    ``adata.obs[n + '_umis']``
        UMIs changed in the cell's final state (NaN: not attacked).
    ``adata.uns['scadv'][key]``
        ``method='adaptive_counts'``, ``detector``, ``lam``, ``kappa``, ``budget`` (as ``eps``),
        ``flip_rate``, ``success_rate`` (the attacker's goal reached, evasion included), the
        median UMIs of the successful cells, ``layers`` and provenance.
    """
    V.options(locals())
    V.name("detector", detector, allow_none=True)
    V.real("lam", lam, low=0.0)
    V.positive_int("budget", budget)
    V.nonneg("kappa", kappa)
    V.positive_int("cap", cap)
    V.positive_int("top_k", top_k)
    V.name("model", model)
    use_det = detector is not None and lam > 0
    start = logg.info("running a count-space attack"
                      + (f" against detector {detector!r} (λ={lam:g})" if use_det else ""))
    params = P.call_params(locals(), adaptive_count_attack)
    problems = []
    if not np.isfinite(lam) or lam < 0:
        problems.append(f"lam must be a finite number ≥ 0, got {lam}")
    if int(budget) < 1 or int(cap) < 1 or int(top_k) < 1 or int(batch_size) < 1:
        problems.append(f"budget, cap, top_k and batch_size must be ≥ 1, got {budget}, {cap}, "
                        f"{top_k} and {batch_size}")
    if not np.isfinite(kappa) or kappa < 0:
        problems.append(f"kappa must be a finite number ≥ 0, got {kappa}")
    if problems:
        raise ScadvInputError("; ".join(problems) + ".")
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    det = MC.load(adata, detector, source=None, device=dev) if detector is not None else None
    if det is not None:
        model = str(det.record["model"])
    record = C.model_record(adata, model)
    recipe = record["prepare"]
    src = R.source(adata, recipe, what="adata")
    if src.kind != "counts":
        raise ScadvInputError(
            f"a count-space attack edits raw counts, but the model input of adata comes from "
            f"{src.label} ({src.kind}). Pass the AnnData with its raw counts in X or a layer.")
    key = key_added or ("counts" if not use_det else f"adaptive_counts_lam{K.format_eps(lam)}")
    name = f"{K.PREFIX}_{key}_umis{int(budget)}"
    classes = [str(c) for c in np.asarray(record["classes"])]
    mask = C.select_cells(adata, cells, split_key=C.split_column(record, model))
    idx_all = np.flatnonzero(mask)
    lib_range = None
    if K.LIBRARY_SIZE in adata.obs:
        lib = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)
        lib = lib[np.isfinite(lib)]
        lib_range = (float(lib.min()), float(lib.max())) if len(lib) else None
    net = det.freeze().net if det is not None else M.from_record(record, dev)
    net.requires_grad_(False)
    clean_pred = np.empty(len(idx_all), dtype=np.int64)
    adv_pred = np.empty(len(idx_all), dtype=np.int64)
    umis = np.full(len(idx_all), np.nan)
    success = np.zeros(len(idx_all), dtype=bool)
    parts: list[tuple[np.ndarray, sparse.csr_matrix]] = []
    queries = 0
    for lo in range(0, len(idx_all), RW.BATCH):
        idx = idx_all[lo:lo + RW.BATCH]
        counts, lib_c = src.counts(idx)
        pred = M.infer(net, src.rows(idx), device=dev)[1].argmax(axis=1)
        objective = (CS.evading_objective(net, det.torch_logit, det.threshold_logit(), pred,
                                          lam=float(lam), kappa=float(kappa), device=dev)
                     if use_det and det is not None
                     else CS.margin_objective(net, pred, kappa=float(kappa), device=dev))
        res = CS.search(objective, counts, lib_c, recipe, budget=int(budget), cap_add=int(cap),
                        cap_remove=int(cap), library_range=lib_range, top_k=int(top_k),
                        batch_size=int(batch_size), device=dev, progress=progress)
        queries += res.queries
        delta = sparse.csr_matrix(res.delta, dtype=np.float32)
        delta.eliminate_zeros()
        # what is stored is what is evaluated: the recipe in numpy, as scadv.get rebuilds it
        adv_counts = sparse.csr_matrix(counts + delta)
        adv_counts.eliminate_zeros()
        x_adv = _model_rows(src, adv_counts, lib_c + np.asarray(delta.sum(axis=1)).ravel())
        sl = slice(lo, lo + len(idx))
        clean_pred[sl] = pred
        adv_pred[sl] = M.infer(net, x_adv, device=dev)[1].argmax(axis=1)
        used = np.asarray(abs(delta).sum(axis=1)).ravel()
        umis[sl] = used
        success[sl] = res.success
        parts.append((idx, delta))
    flipped = adv_pred != clean_pred
    cells_k, rows_k = ST.collect(parts, src.n_genes)
    obs = _obs(adata.n_obs, mask, clean_pred, adv_pred, umis, classes, name)
    palette = class_colors(adata, str(record.get("label_key", "")), classes)
    won = success & flipped
    rec: dict[str, Any] = {
        "method": "adaptive_counts", "model": model,
        "detector": "None" if detector is None else str(detector), "lam": float(lam),
        "kappa": float(kappa), "eps": np.asarray([float(budget)]), "budget": int(budget),
        "cap": int(cap), "top_k": int(top_k), "library_range": np.asarray(
            lib_range if lib_range is not None else (np.nan, np.nan)),
        "classes": classes, "layers": [name], "n_cells": int(mask.sum()),
        "cells": cells if isinstance(cells, str) else "custom",
        "flip_rate": np.asarray([float(flipped.mean()) if len(flipped) else np.nan]),
        "success_rate": float(won.mean()) if len(won) else float("nan"),
        "median_umis_success": float(np.median(umis[won])) if won.any() else float("nan"),
        "queries": int(queries),
        "provenance": P.record(params, seed=seed, device=dev),
    }
    write_results(
        adata, step=f"count-space attack on {int(mask.sum())} cells (flip rate "
                    f"{rec['flip_rate'][0]:.3f}, goal reached {rec['success_rate']:.3f})",
        start=start, uns={key: rec}, obs=obs,
        perturbations=[Perturbation(name=name, cells=cells_k, rows=rows_k, space="counts",
                                    model=model, run=key)],
        colors={K.layer_pred(name): palette,
                f"{name}_flipped": [UNCHANGED_COLOR, FLIPPED_COLOR],
                f"{name}_flipped_to": [*palette, UNCHANGED_COLOR]})
    return adata if copy else None


def _model_rows(src: R.Source, counts: sparse.csr_matrix, lib: np.ndarray) -> np.ndarray:
    lognorm = R.lognormalize(counts, target_sum=float(src.recipe["target_sum"]),
                             library_size=lib)
    dense = V.dense(lognorm)
    if src.missing.any():
        dense[:, src.missing] = np.asarray(src.recipe["mean"], np.float32)[src.missing]
    return R.lognorm_to_model(dense, src.recipe)


def _obs(n_obs: int, mask: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray,
         umis: np.ndarray, classes: list[str], name: str) -> dict[str, Any]:
    codes = np.full(n_obs, -1)
    codes[mask] = adv_pred
    flip = np.full(n_obs, -1)
    flip[mask] = (adv_pred != clean_pred).astype(int)
    to = np.full(n_obs, -1)
    to[mask] = np.where(adv_pred != clean_pred, adv_pred, len(classes))
    used = np.full(n_obs, np.nan)
    used[mask] = umis
    return {
        K.layer_pred(name): pd.Categorical.from_codes(codes, categories=classes),
        f"{name}_flipped": pd.Categorical.from_codes(flip, categories=[False, True]),
        f"{name}_flipped_to": pd.Categorical.from_codes(to, categories=[*classes, K.UNCHANGED]),
        f"{name}_umis": used,
    }
