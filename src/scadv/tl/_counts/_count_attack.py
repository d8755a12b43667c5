"""``scadv.tl.count_attack``: how many UMIs change a cell's predicted type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
import torch
from anndata import AnnData
from scipy import sparse

from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _provenance as P
from ... import _recipe as R
from ... import _store as ST
from ... import _validate as V
from ..._colors import FLIPPED_COLOR, UNCHANGED_COLOR, class_colors, fragility_colors
from ..._errors import ScadvInputError
from ..._results import write_results
from .. import _common as C
from .._attacks import _attack as A
from . import _engine as CE
from . import _transform as T

#: Cells read and attacked per chunk (their counts, states and results are in memory together).
CHUNK = 8192

Library = str | tuple[float, float] | None


def count_attack(
    adata: AnnData,
    *,
    budgets: Sequence[int] = (1, 2, 5, 10, 20, 50),
    target: str | None = None,
    beam: int = 4,
    top_k: int = 16,
    cap_add: int = 3,
    cap_remove: int = 3,
    library: Library = "observed",
    detected_only: bool = False,
    genes: Sequence[str] | np.ndarray | None = None,
    cells: C.Cells = "test",
    model: str = K.DEFAULT_MODEL,
    layer: str | None = None,
    key_added: str | None = None,
    seed: int = 0,
    device: D.Device = "auto",
    batch_size: int = 256,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """The fewest UMIs that change each cell's predicted type: an attack on the raw counts.

    Every scadv gradient attack moves the model input (z-scores) by ε standard deviations,
    which no sequencer produces. This attack edits the cell's raw counts instead, one UMI at a
    time (+1 or −1 on one model gene), and pushes every edited cell through the classifier's
    stored recipe (normalise by the library size, which changes with the edit, ``log1p``,
    z-score, clip) and the classifier. Counts stay whole numbers ≥ 0, each gene gains at most
    ``cap_add`` and loses at most ``cap_remove`` UMIs, and the library size stays in a range.

    The search runs level by level (one UMI per level) on all cells at once: the input
    gradient ranks all ``2 × genes`` single-UMI edits of each state with their exact discrete
    change, the ``top_k`` best are re-scored exactly, and the ``beam`` best distinct states of
    each cell go on to the next level. ``beam=1, top_k=1`` is the plain gradient-guided greedy
    search; the default (4, 16) found the same median on PBMC3k and slightly more flips at 10
    UMIs. With a beam at least the number of states and ``top_k ≥ 2 × genes`` the search is
    exhaustive and the UMI count is the true minimum (checked against brute force).

    Parameters
    ----------
    adata
        Holds a classifier trained on data prepared from raw counts (:func:`scadv.pp.prepare`),
        and the raw counts of the cells to attack: in ``X`` (the default after
        ``prepare``), in a layer (``layer=``) or in ``.raw``. Backed and dask-backed
        AnnData work: the counts are read batch by batch.
    budgets
        UMI budgets (whole numbers ≥ 1); one stored perturbation per budget. The search runs to
        the largest (its time grows with it).
    target
        Reach this class instead of leaving the clean prediction.
    beam
        States kept per cell and UMI level.
    top_k
        Candidate edits of each state re-scored exactly (``beam=1, top_k=1``: plain greedy).
    cap_add, cap_remove
        Most UMIs added to / removed from any one gene (0: never add / remove).
    library
        Library-size range the attacked cell must stay in: ``'observed'`` (default) is the
        range over the cells the classifier's recipe was prepared from (stored by
        :func:`scadv.pp.prepare`; for recipes without it, the range of
        ``obs['scadv_library_size']`` over the model's training cells), ``(low, high)`` a
        range of your own, ``None`` no limit. Each cell's range is widened to include its own
        library size.
    detected_only
        Only edit genes the cell already expresses (count > 0): the attacker cannot switch on
        a silent gene.
    genes
        Only these model genes (names or a boolean mask over model genes) may be edited.
    cells
        ``'test'`` (the model's test split; default), ``'all'``, cell names or a boolean mask.
    model
        Key of the stored classifier to attack.
    layer
        Read the raw counts from ``adata.layers[layer]``.
    key_added
        Name of the run; default ``'count_attack'`` (``'count_attack_<model>'`` for other
        models).
    seed
        Seeds the hashing that recognises repeated states (results do not depend on it).
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    batch_size
        Cells searched together (each holds ``beam × top_k`` candidate rows per level).
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes (``k`` = key_added, ``b`` each budget):

    ``adata.obsm['scadv_<k>_umis<b>']``
        The attacked cells' count changes at budget ``b``: integer changes of the raw counts
        of the model genes (CSR float32, empty rows for cells not attacked), registered as a
        count-space perturbation in ``adata.uns['scadv']['perturbations']``.
        :func:`scadv.get.perturbed` returns the adversarial counts (``space='counts'``) or
        the model input they give (default), rebuilt exactly as evaluated here.
    ``adata.obs['scadv_<k>_umis<b>_pred']``, ``_flipped``, ``_flipped_to``
        Class predicted for the attacked counts, whether it changed, and (for colouring a
        UMAP) the new class or ``'unchanged'``; NaN for cells not attacked.
    ``adata.obs['scadv_min_umis']`` (``'scadv_<k>_min_umis'`` for another key)
        The fewest UMIs found that flip the cell (that reach ``target``): NaN for cells not
        attacked, ``inf`` for cells not flipped within the largest budget (``sc.pl.umap`` draws
        NaN and ``inf`` in its grey for missing values; colour by the next column instead to
        tell them apart), 0 for cells already at ``target``. An upper bound on the true
        minimum, which it equals when the search is exhaustive.
    ``adata.obs['scadv_min_umis_bin']``
        The same in bins of the budgets (``'1'``, ``'2'``, ``'3–5'``, …, ``'> 50'``),
        categorical with colours from fragile (red) to robust (blue): ``sc.pl.umap(adata,
        color='scadv_min_umis_bin')``.
    ``adata.uns['scadv'][k]``
        Parameters and results: ``flip_rate`` per budget, ``flip_rate_per_class`` (budgets ×
        classes, grouped by true label where known), ``n_cells_per_class``,
        ``robust_accuracy``, ``clean_accuracy`` (overall and per class),
        ``median_min_umis`` (overall and ``_per_class``), ``umis_used_mean`` per budget,
        ``genes`` (a table of the genes edited in the flipped cells at the largest budget:
        UMIs added / removed, cells, UMIs that switched on a gene the cell did not express, and
        the gene's detection rate), ``switched_on_fraction``, ``edited_detection_median``,
        ``detection_median`` (all model genes), the library range used, search statistics and
        provenance.
    """
    V.options(locals())
    V.name("target", target, allow_none=True)
    V.name("model", model)
    for name, value in (("beam", beam), ("top_k", top_k)):
        V.positive_int(name, value)
    for name, value in (("cap_add", cap_add), ("cap_remove", cap_remove)):
        V.nonneg_int(name, value)
    V.flag("detected_only", detected_only)
    start = logg.info("running count-space attack")
    params = P.call_params(locals(), count_attack)
    budgets_t = _check_options(budgets=budgets, beam=beam, top_k=top_k, cap_add=cap_add,
                               cap_remove=cap_remove, batch_size=batch_size)
    adata = V.start(adata, copy=copy)
    record = C.model_record(adata, model)
    recipe = record["prepare"]
    T.check_recipe(recipe)
    key = key_added or K.default_attack_key(K.COUNT_ATTACK, model)
    classes = [str(c) for c in np.asarray(record["classes"])]
    target_idx = C.target_index(classes, target)
    mask = C.select_cells(adata, cells, split_key=C.split_column(record, model))
    src = counts_source(adata, recipe, layer=layer)
    model_genes = np.asarray(record["genes"]).astype(str)
    gene_ok = None if genes is None else A.gene_mask(genes, model_genes)
    lib_range, lib_from = library_range(adata, library, recipe, record, model)
    limits = CE.Limits(cap_add=int(cap_add), cap_remove=int(cap_remove), library=lib_range,
                       detected_only=bool(detected_only), genes=gene_ok)
    search = CE.Search(budgets=budgets_t, beam=int(beam), top_k=int(top_k))

    dev = D.resolve(device)
    net = M.from_record(record, dev)
    transform = T.CountTransform.from_recipe(recipe, dev)
    label_key = str(record.get("label_key", ""))
    y_all = (C.class_index(V.labels(adata, label_key), classes)
             if label_key in adata.obs else np.full(adata.n_obs, -1))
    idx_all = np.flatnonzero(mask)
    run = _Run(len(idx_all), len(budgets_t), src.n_genes)
    for lo in range(0, len(idx_all), CHUNK):
        idx = idx_all[lo:lo + CHUNK]
        run.chunk(slice(lo, lo + len(idx)), idx, src, net, transform, search, limits,
                  target_idx=target_idx, device=dev, seed=seed, batch_size=int(batch_size),
                  progress=progress)

    y_sel = y_all[idx_all]
    group = np.where(y_sel >= 0, y_sel, run.clean_pred)
    summary = A.summarise(run.adv_pred, run.clean_pred, y_sel, group,
                          {k: np.zeros((len(budgets_t), len(idx_all)))
                           for k in ("linf", "l2", "genes_moved")}, len(classes), target_idx)
    for k in ("linf_mean", "l2_mean", "genes_moved_mean"):
        summary.pop(k)
    clean = C.metrics(y_sel, run.clean_pred, len(classes))
    detection, detection_from = _detection(recipe, run)
    genes_table = run.gene_table(model_genes, detection)
    umis = run.min_umis()
    per_class_median = np.full(len(classes), np.nan)
    for c in np.unique(group):
        per_class_median[c] = float(np.median(umis[group == c]))
    names = [K.count_layer(key, b) for b in budgets_t]
    perturbations = [ST.Perturbation(name=name, cells=cells_i, rows=rows_i, space="counts",
                                     model=model, run=key, matrix="X" if layer is None else layer)
                     for name, (cells_i, rows_i) in zip(names, run.stored(), strict=True)]
    palette = class_colors(adata, label_key, classes)
    obs, colors = _obs_columns(adata.n_obs, idx_all, run, classes, key, budgets_t, palette,
                               targeted=target_idx is not None)
    switched = genes_table["switched_on"].sum()
    total = genes_table["umis"].sum()
    rec = {
        "method": "count_attack",
        "space": "counts",
        "model": model,
        "classes": classes,
        "budgets": np.asarray(budgets_t, dtype=np.int64),
        "search": {"beam": int(beam), "top_k": int(top_k)},
        "limits": {"cap_add": int(cap_add), "cap_remove": int(cap_remove),
                   "library": "None" if lib_range is None else np.asarray(lib_range),
                   "library_from": lib_from, "detected_only": bool(detected_only),
                   "genes": "all" if gene_ok is None else model_genes[gene_ok]},
        "target": "None" if target is None else str(target),
        "counts_from": src.label,
        "n_cells": len(idx_all),
        "cells": cells if isinstance(cells, str) else "custom",
        "grouped_by": label_key if (y_sel >= 0).any() else "prediction",
        "layers": names,
        "clean_accuracy": clean["accuracy"],
        "clean_accuracy_per_class": clean["per_class_accuracy"],
        **summary,
        "median_min_umis": float(np.median(umis)) if len(umis) else float("nan"),
        "median_min_umis_per_class": per_class_median,
        "flipped_within": np.asarray([float((umis <= b).mean()) for b in budgets_t]),
        "umis_used_mean": run.umis_used.mean(axis=1),
        "genes": genes_table,
        "switched_on_fraction": float(switched / total) if total else float("nan"),
        "edited_detection_median": _weighted_median(genes_table["detection"].to_numpy(),
                                                    genes_table["umis"].to_numpy()),
        "detection_median": float(np.median(detection)),
        "detection_from": detection_from,
        "engine": {**run.stats, "disagreements": int(run.disagreements)},
        "provenance": P.record(params, seed=seed, device=dev),
    }
    if run.disagreements:
        logg.warning(f"{run.disagreements} cells flipped by the search did not flip when their "
                     "stored counts were re-evaluated (a margin within float rounding); they "
                     "count as not flipped")
    rates = ", ".join(f"{b} UMIs: {r:.3f}"
                      for b, r in zip(budgets_t, summary["flip_rate"], strict=True))
    write_results(adata, step=f"count attack on {len(idx_all)} cells (flip rate {rates}; "
                               f"median {rec['median_min_umis']:g} UMIs)",
                  start=start, uns={key: rec}, obs=obs, perturbations=perturbations,
                  colors=colors)
    return adata if copy else None


# ---- inputs ----------------------------------------------------------------------------------


def counts_source(adata: AnnData, recipe: Mapping[str, Any], *, layer: str | None
                  ) -> R.Source:
    """The raw counts of ``adata`` for the recipe, or an error that says where to find them."""
    src = R.source(adata, recipe, layer=layer, what="adata")
    if src.kind != "counts":
        what = {"model": "the model input (z-scores)", "scaled": "scaled values",
                "lognorm": "log-normalised values"}[src.kind]
        raise ScadvInputError(
            f"a count-space attack edits raw UMI counts, but {src.label} holds {what} and no "
            "raw counts of the model genes were found. Fix: keep the counts with the cells — "
            "attack the AnnData as read from disk (scadv.pp.prepare leaves the counts in X), "
            "pass layer='counts' if they are in a layer, or put them in .raw.")
    return src


def library_range(adata: AnnData, library: Library, recipe: Mapping[str, Any],
                  record: Mapping[str, Any], model: str
                  ) -> tuple[tuple[float, float] | None, str]:
    """The library-size range of the threat model and where it came from."""
    if library is None:
        return None, "none"
    if isinstance(library, str):
        if library != "observed":
            raise ScadvInputError(
                f"library must be 'observed', (low, high) or None, got {library!r}.")
        if "library_min" in recipe and "library_max" in recipe:
            return ((float(np.asarray(recipe["library_min"])),
                     float(np.asarray(recipe["library_max"]))), "reference cells (recipe)")
        if K.LIBRARY_SIZE in adata.obs:  # recipes written before scadv stored the range
            lib = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)
            split = C.split_column(record, model)
            where = "all cells of adata"
            if split in adata.obs:
                train = (adata.obs[split] == K.SPLIT_TRAIN).to_numpy()
                if train.any():
                    lib, where = lib[train], "the model's training cells"
            lib = lib[np.isfinite(lib)]
            if len(lib):
                logg.info(f"    library-size range from obs[{K.LIBRARY_SIZE!r}] of {where} "
                          "(the recipe predates stored ranges)")
                return (float(lib.min()), float(lib.max())), f"obs[{K.LIBRARY_SIZE}], {where}"
        logg.warning("no reference library sizes are known for this model (an old recipe "
                     "and no obs['scadv_library_size']); the library size is not limited")
        return None, "unknown (not limited)"
    try:
        low, high = (float(v) for v in library)
    except (TypeError, ValueError) as err:
        raise ScadvInputError(
            f"library must be 'observed', (low, high) or None, got {library!r}.") from err
    if not (np.isfinite(low) and np.isfinite(high) and 1 <= low < high):
        raise ScadvInputError(f"library=(low, high) needs 1 ≤ low < high, got {library!r}.")
    return (low, high), "given"


def _check_options(*, budgets: Sequence[int], beam: int, top_k: int, cap_add: int,
                   cap_remove: int, batch_size: int) -> tuple[int, ...]:
    arr = np.atleast_1d(np.asarray(budgets))
    if (arr.size == 0 or arr.dtype.kind not in "iuf" or not np.isfinite(arr).all()
            or (arr != np.round(arr)).any() or (arr < 1).any()):
        raise ScadvInputError(
            f"budgets must be whole numbers of UMIs ≥ 1, got {budgets!r}.")
    out = tuple(sorted({int(b) for b in arr}))
    if len(out) != arr.size:
        raise ScadvInputError(f"budgets has repeated values {budgets!r}; each is one result.")
    for name, value, low in (("beam", beam, 1), ("top_k", top_k, 1), ("batch_size", batch_size, 1),
                             ("cap_add", cap_add, 0), ("cap_remove", cap_remove, 0)):
        if int(value) != value or int(value) < low:
            raise ScadvInputError(f"{name} must be a whole number ≥ {low}, got {value!r}.")
    if int(cap_add) + int(cap_remove) == 0:
        raise ScadvInputError("cap_add and cap_remove are both 0: no edit is allowed.")
    return out


# ---- the run, chunk by chunk -----------------------------------------------------------------


class _Run:
    """What the chunks accumulate, in the order of the attacked cells."""

    def __init__(self, n: int, n_budgets: int, n_genes: int) -> None:
        self.n, self.g = n, n_genes
        self.clean_pred = np.empty(n, dtype=np.int64)
        self.adv_pred = np.empty((n_budgets, n), dtype=np.int64)
        self.success = np.zeros((n_budgets, n), dtype=bool)
        self.engine_min = np.full(n, -1, dtype=np.int64)
        self.umis_used = np.zeros((n_budgets, n))
        self.parts: list[list[tuple[np.ndarray, sparse.csr_matrix]]] = [
            [] for _ in range(n_budgets)]
        self.gene_umis = {k: np.zeros(n_genes) for k in
                          ("added", "removed", "cells", "switched_on")}
        self.detected = np.zeros(n_genes)
        self.stats: dict[str, int] = {}
        self.disagreements = 0

    def chunk(self, sl: slice, idx: np.ndarray, src: R.Source, net: torch.nn.Module,
              transform: T.CountTransform, search: CE.Search, limits: CE.Limits, *,
              target_idx: int | None, device: torch.device, seed: int, batch_size: int,
              progress: bool) -> None:
        counts, lib = src.counts(idx)
        rest = T.rest_of_library(counts, lib)
        _, logits = M.infer(net, ST.counts_model_input(counts, lib, src), device=device)
        pred = logits.argmax(axis=1)
        self.clean_pred[sl] = pred
        y = pred if target_idx is None else np.full(len(idx), target_idx)
        res = CE.run(net, counts, rest, y, transform, search=search, limits=limits,
                     targeted=target_idx is not None, device=device, seed=seed,
                     batch_size=batch_size, progress=progress)
        for k, v in res.stats.items():
            self.stats[k] = self.stats.get(k, 0) + int(v)
        self.detected += np.bincount(counts.indices, minlength=self.g)
        for i, delta in enumerate(res.deltas):
            d = delta.astype(np.float32)
            adv, adv_lib = ST.add_counts(counts, lib, d.toarray())
            # evaluated exactly as scadv.get.perturbed rebuilds it from what is stored
            _, adv_logits = M.infer(net, ST.counts_model_input(adv, adv_lib, src),
                                    device=device)
            p = adv_logits.argmax(axis=1)
            self.adv_pred[i, sl] = p
            self.success[i, sl] = p == target_idx if target_idx is not None else p != pred
            self.umis_used[i, sl] = np.asarray(abs(d).sum(axis=1)).ravel()
            d.eliminate_zeros()
            self.parts[i].append((idx, sparse.csr_matrix(d)))
        # the minimal count is the search's, where the stored state re-evaluates as a success;
        # a state whose margin the two evaluations see on different sides of zero (float
        # rounding) is counted and settled by the re-evaluation
        found = res.min_umis >= 0
        last = self.success[-1, sl]
        self.disagreements += int((found != last).sum())
        self.engine_min[sl] = np.where(found & last, res.min_umis,
                                       np.where(last, self.umis_used[-1, sl], -1))
        # genes edited in the cells flipped at the largest budget
        flipped = np.flatnonzero(last)
        coo = res.deltas[-1][flipped].tocoo()
        c0 = (np.asarray(counts[flipped][coo.row, coo.col], dtype=np.float64).ravel()
              if coo.nnz else np.empty(0))
        col, val = coo.col, coo.data.astype(np.float64)
        self.gene_umis["added"] += np.bincount(col, weights=np.maximum(val, 0), minlength=self.g)
        self.gene_umis["removed"] += np.bincount(col, weights=np.maximum(-val, 0),
                                                 minlength=self.g)
        self.gene_umis["cells"] += np.bincount(col, minlength=self.g)
        self.gene_umis["switched_on"] += np.bincount(
            col, weights=np.where((c0 == 0) & (val > 0), val, 0.0), minlength=self.g)

    def min_umis(self) -> np.ndarray:
        """Fewest UMIs per attacked cell (``inf``: not flipped within the largest budget)."""
        out = self.engine_min.astype(np.float64)
        out[out < 0] = np.inf
        return out

    def stored(self) -> list[tuple[np.ndarray, sparse.csr_matrix]]:
        return [ST.collect(parts, self.g) for parts in self.parts]

    def gene_table(self, genes: np.ndarray, detection: np.ndarray) -> pd.DataFrame:
        u = self.gene_umis
        total = u["added"] + u["removed"]
        keep = np.flatnonzero(total > 0)
        df = pd.DataFrame({
            "gene": genes[keep].astype(str),
            "umis": total[keep].astype(np.int64),
            "added": u["added"][keep].astype(np.int64),
            "removed": u["removed"][keep].astype(np.int64),
            "cells": u["cells"][keep].astype(np.int64),
            "switched_on": u["switched_on"][keep].astype(np.int64),
            "detection": detection[keep].astype(np.float64),
        })
        df = df.sort_values(["umis", "gene"], ascending=[False, True], kind="stable")
        return df.reset_index(drop=True)


def _detection(recipe: Mapping[str, Any], run: _Run) -> tuple[np.ndarray, str]:
    if "detection" in recipe:
        return np.asarray(recipe["detection"], dtype=np.float64), "reference cells (recipe)"
    return run.detected / max(run.n, 1), "attacked cells"


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    if not len(values) or weights.sum() <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def bins(budgets: Sequence[int], *, targeted: bool) -> list[str]:
    """Labels of the :func:`scadv._keys.min_umis_bin` categories for these budgets."""
    labels = ["0"] if targeted else []
    prev = 0
    for b in budgets:
        labels.append(str(b) if b == prev + 1 else f"{prev + 1}–{b}")
        prev = b
    return [*labels, f"> {budgets[-1]}"]


def bin_codes(umis: np.ndarray, budgets: Sequence[int], *, targeted: bool) -> np.ndarray:
    """Category code of each minimal UMI count (``inf``: the last bin)."""
    edges = np.asarray(budgets, dtype=np.float64)
    codes = np.searchsorted(edges, umis, side="left")  # ≤ budgets[i] → i; inf → len
    if targeted:
        codes = np.where(umis == 0, 0, codes + 1)
    return codes.astype(np.int64)


def _obs_columns(n_obs: int, idx: np.ndarray, run: _Run, classes: list[str], key: str,
                 budgets: tuple[int, ...], palette: list[str], *, targeted: bool
                 ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    obs: dict[str, Any] = {}
    colors: dict[str, list[str]] = {}
    for i, b in enumerate(budgets):
        adv = run.adv_pred[i]
        codes = np.full(n_obs, -1)
        codes[idx] = adv
        flip = np.full(n_obs, -1)
        flip[idx] = (adv != run.clean_pred).astype(int)
        to = np.full(n_obs, -1)
        to[idx] = np.where(adv != run.clean_pred, adv, len(classes))
        obs[K.count_pred(key, b)] = pd.Categorical.from_codes(codes, categories=classes)
        obs[K.count_flipped(key, b)] = pd.Categorical.from_codes(flip, categories=[False, True])
        obs[K.count_flipped_to(key, b)] = pd.Categorical.from_codes(
            to, categories=[*classes, K.UNCHANGED])
        colors[K.count_pred(key, b)] = palette
        colors[K.count_flipped(key, b)] = [UNCHANGED_COLOR, FLIPPED_COLOR]
        colors[K.count_flipped_to(key, b)] = [*palette, UNCHANGED_COLOR]
    umis = np.full(n_obs, np.nan)
    umis[idx] = run.min_umis()
    obs[K.min_umis(key)] = umis
    labels = bins(budgets, targeted=targeted)
    codes = np.full(n_obs, -1)
    codes[idx] = bin_codes(run.min_umis(), budgets, targeted=targeted)
    obs[K.min_umis_bin(key)] = pd.Categorical.from_codes(codes, categories=labels,
                                                         ordered=True)
    colors[K.min_umis_bin(key)] = fragility_colors(len(labels))
    return obs, colors
