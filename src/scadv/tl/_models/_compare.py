"""``scadv.tl.compare_models``: several classifiers audited on the same cells and budgets."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
import torch
from anndata import AnnData

from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _progress as PB
from ... import _provenance as P
from ... import _recipe as R
from ... import _rows as RW
from ... import _validate as V
from ... import classifiers as CL
from ... import models as MD
from ..._errors import ScadvInputError
from ..._results import write_results
from .. import _common as C
from .._attacks import _engine as E
from . import _resolve as RS

#: Columns of the table, in order.
COLUMNS = ("model", "access", "metric", "eps", "group", "value", "ci_low", "ci_high", "k", "n",
           "note")
METRICS = ("clean_accuracy", "flip_rate", "single_gene_flip_fraction", "detector_auroc",
           "umi_flip_rate", "median_min_umis")
#: Two-sided 95% normal quantile (Wilson intervals).
Z95 = 1.959963984540054
CHUNK = 8192


def wilson(k: np.ndarray | float, n: np.ndarray | float, z: float = Z95
           ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion ``k / n`` (NaN where ``n = 0``)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    low = np.where(k == 0, 0.0, low)  # exact ends (no rounding residue)
    high = np.where(k == n, 1.0, high)
    bad = n <= 0
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def bootstrap_auroc(clean: np.ndarray, adv: np.ndarray, *, n_boot: int, seed: int
                    ) -> tuple[float, float, float]:
    """AUROC (adversarial rows score higher) with a percentile bootstrap 95% interval,
    resampling clean and adversarial rows separately."""
    from sklearn.metrics import roc_auc_score

    if len(clean) == 0 or len(adv) == 0:
        return float("nan"), float("nan"), float("nan")
    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    auc = float(roc_auc_score(y, np.r_[clean, adv]))
    rng = np.random.default_rng(seed)
    boots = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        c = clean[rng.integers(0, len(clean), len(clean))]
        a = adv[rng.integers(0, len(adv), len(adv))]
        boots[b] = roc_auc_score(y, np.r_[c, a])
    low, high = np.percentile(boots, [2.5, 97.5]) if n_boot > 0 else (np.nan, np.nan)
    return auc, float(low), float(high)


@dataclass
class _Entry:
    name: str
    spec: Any  # what the gene-level attacks get as classifier=
    white: RS.Resolved | None
    black: CL.Classifier | None
    classes: list[str]
    note: str


def _name_of(spec: Any, used: set[str]) -> str:
    if isinstance(spec, str):
        base = spec
    elif isinstance(spec, MD.Model):
        base = spec.default_key
    elif isinstance(spec, CL.Classifier):
        base = re.sub(r"\W+", "_", spec.describe()).strip("_").lower()
    else:
        base = MD._snake(type(spec).__name__)
    name, i = base, 2
    while name in used:
        name, i = f"{base}_{i}", i + 1
    return name


def _entries(adata: AnnData, models: Any, dev: torch.device, layer: str | None) -> list[_Entry]:
    if isinstance(models, Mapping):
        items = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, (str, MD.Model)) or not isinstance(models, Sequence):
        raise ScadvInputError("models must be a list of models or a dict name → model (e.g. "
                              "{'scadv': 'classifier', 'celltypist': ct_model, 'forest': rf}).")
    else:
        used: set[str] = set()
        items = []
        for spec in models:
            name = _name_of(spec, used)
            used.add(name)
            items.append((name, spec))
    if not items:
        raise ScadvInputError("models is empty: pass at least one model.")
    if len({n for n, _ in items}) != len(items):
        raise ScadvInputError("two models have the same name; pass a dict name → model.")
    out = []
    for name, spec in items:
        white = black = None
        note = ""
        if isinstance(spec, str) or MD.as_model(spec) is not None:
            white = RS.resolve(adata, spec, dev)
            classes = [str(c) for c in np.asarray(white.record["classes"])]
            gene_spec = white.key if isinstance(spec, str) else spec
        else:
            if isinstance(spec, torch.nn.Module):
                RS.as_model_object(spec)  # raises: wrap it with from_torch
            clf = CL.resolve(spec, adata, device=dev)
            black = clf.bind(adata.var_names, adata=adata, layer=layer)
            classes = list(black.classes)
            gene_spec = spec
            note = "black-box: n/a"
        out.append(_Entry(name, gene_spec, white, black, classes, note))
    return out


def _cells(adata: AnnData, cells: C.Cells, n_cells: int | None, seed: int) -> np.ndarray:
    if isinstance(cells, str) and cells == "test":
        raise ScadvInputError("compare_models audits every model on the same cells: pass "
                              "cells='all', cell names or a boolean mask (different models "
                              "may have different test splits).")
    mask = C.select_cells(adata, cells, split_key="")
    idx = np.flatnonzero(mask)
    if n_cells is not None:
        if int(n_cells) < 1:
            raise ScadvInputError(f"n_cells must be ≥ 1 (or None), got {n_cells}.")
        if int(n_cells) < len(idx):
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(idx, int(n_cells), replace=False))
    if len(idx) == 0:
        raise ScadvInputError("no cells selected.")
    return idx


def _rows(rows: list[dict[str, Any]], *, model: str, access: str, metric: str, eps: float,
          groups: np.ndarray, k_all: np.ndarray, ok: np.ndarray, note: str = "") -> None:
    """Per-group and overall proportion rows (Wilson intervals): ``k_all`` successes among
    the cells where ``ok``."""
    names = ["all", *sorted(set(groups[ok].tolist()) - {""})]
    for g in names:
        sel = ok if g == "all" else ok & (groups == g)
        n = int(sel.sum())
        k = int(k_all[sel].sum())
        low, high = wilson(k, n)
        rows.append({"model": model, "access": access, "metric": metric, "eps": eps,
                     "group": g, "value": k / n if n else np.nan, "ci_low": float(low),
                     "ci_high": float(high), "k": k, "n": n, "note": note})


def compare_models(
    adata: AnnData,
    models: Sequence[Any] | Mapping[str, Any],
    *,
    label_key: str | None = None,
    eps: float | Sequence[float] = (0.05, 0.1, 0.2),
    steps: int = 10,
    loss: E.Loss = "margin",
    cells: C.Cells = "all",
    n_cells: int | None = None,
    single_gene: bool = True,
    cluster_key: str | None = None,
    modification: Any = ("perc1", "perc99"),
    genes: Sequence[str] | np.ndarray | None = None,
    detectors: Mapping[str, str] | None = None,
    umis: Sequence[int] | None = None,
    counts_layer: str | None = None,
    layer: str | None = None,
    n_boot: int = 200,
    key_added: str = "compare_models",
    batch_size: int = 256,
    seed: int = 0,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> pd.DataFrame:
    """Audit several classifiers on the same cells and budgets, in one table.

    For each model: its clean accuracy; the PGD flip rate at each ε (white-box, on every
    differentiable model, in THAT model's own input space through its own preprocessing;
    ``'black-box: n/a'`` for forests, k-nearest neighbours, kernel SVMs, marker scorers and
    callables); the fraction of (gene, modification) pairs that alone flip a cluster's label
    (:func:`scadv.tl.single_gene`, any model, black-box); and, where a meta-detector of the
    model is stored, its AUROC at telling the model's clean cells from their successful PGD
    versions. Every proportion comes with a 95% Wilson interval, per class (the true label;
    the model's clean prediction for unlabelled cells) and overall; AUROCs with a 95%
    percentile-bootstrap interval.

    ε is in each model's own input units: z-scores for scadv's MLP and CellTypist-style
    models, log1p units for a ``'lognorm'`` model without a scaler. Compare flip rates across
    models at the same ε only when their input spaces match (the ``input`` column of the
    summary line tells), e.g. models fitted on the same prepared matrix.

    With ``umis``, each stored white-box model is also attacked on the raw counts
    (:func:`scadv.tl.count_attack`: the fewest UMIs, added or removed, that flip a cell).

    Parameters
    ----------
    adata
        The cells: raw counts or log-normalised values (each differentiable model applies its
        own preprocessing), or prepared data. Black-box models read ``adata.X`` (or
        ``layers[layer]``) by gene name, as the gene-level attacks do.
    models
        A list of models, or a dict name → model. A model is the key of a stored classifier
        (any kind), a :class:`scadv.models.Model` or CellTypist model object (white-box), or
        anything the gene-level attacks take (a fitted scikit-learn estimator with
        ``predict_proba``, a :class:`scadv.classifiers.MarkerClassifier`, a callable returning
        probabilities: black-box). Names default to the key, ``model.default_key`` or the
        estimator's class name.
    label_key
        ``obs`` column of true labels; default the ``label_key`` stored with the first
        white-box model that has one. Without labels, accuracy rows are NaN and classes are
        the clean predictions.
    eps, steps, loss
        PGD budgets (L∞, α = 2.5·ε/steps, no random start, early stop), as :func:`scadv.tl.pgd`.
    cells
        ``'all'`` (default), cell names or a boolean mask: the same cells for every model.
    n_cells
        Audit a random subset of that many of them (seeded); ``None``: all.
    single_gene
        Run :func:`scadv.tl.single_gene` on every model, each class of ``cluster_key`` a
        cluster (all its cells, not only the subset). Its results are also written under
        ``uns['scadv'][f'{key_added}_{name}_single_gene']`` (characters other than letters and
        digits in the name replaced by ``_``).
    cluster_key
        Clusters of the single-gene scan; default ``label_key``.
    modification, genes
        Of the single-gene scan (default ``('perc1', 'perc99')``, every gene of ``adata``):
        pass a gene list to keep it quick on large data and comparable across models.
    detectors
        Model name → key of a stored meta-detector (:func:`scadv.tl.meta_detect`) of that model;
        default: every stored detector whose classifier is one of the models.
    umis
        UMI budgets of the count-space attack (e.g. ``(1, 2, 5, 10, 20)``); ``None`` (default):
        not run. Needs raw counts (``X`` or ``layers[counts_layer]``) and a stored model (a
        key, or a CellTypist / scikit-learn object, which is registered); a torch module held
        in memory gets ``'n/a'``. Its results are also written under
        ``uns['scadv'][f'{key_added}_{name}_counts']``.
    counts_layer
        Where the raw counts are for ``umis`` (default ``X``).
    layer
        The matrix the black-box models and the single-gene scan read (default ``X``).
    n_boot
        Bootstrap resamples of the AUROC intervals.
    key_added
        Where the table is written.
    batch_size, seed, device, progress
        As for :func:`scadv.tl.pgd` (the seed also draws ``n_cells`` and the bootstrap).
    copy
        Leave ``adata`` untouched: work on a copy and return only the table.

    Returns
    -------
    The table (a tidy DataFrame, one row per model × metric × ε × group) with columns
    ``model``, ``access`` (``'white-box'`` / ``'black-box'``), ``metric``
    (``'clean_accuracy'``, ``'flip_rate'``, ``'single_gene_flip_fraction'``,
    ``'detector_auroc'``, and with ``umis`` ``'umi_flip_rate'``: the fraction of cells flipped
    by at most ``eps`` UMIs, and ``'median_min_umis'``: the median fewest UMIs, ``inf`` when
    most cells resist the largest budget, with a bootstrap interval), ``eps`` (the budget: ε,
    or UMIs for the two count metrics; NaN where it does not apply), ``group`` (``'all'`` or a
    class), ``value``, ``ci_low``, ``ci_high`` (95%), ``k`` and ``n`` (successes and trials of a
    proportion; clean and adversarial cells of an AUROC) and ``note``. Also writes
    ``adata.uns['scadv'][key_added]``: ``table`` (its columns as plain arrays, so it survives
    ``write_h5ad`` / ``read_h5ad``; rebuild it with ``pd.DataFrame(dict(rec['table']))``),
    ``models``, ``inputs`` (each model's input space), ``eps``, ``n_cells``, parameters and
    provenance. White-box model objects are registered in ``uns['scadv']`` first (see
    :func:`scadv.tl.pgd`).
    """
    V.options(locals())
    eps_t = V.reals("eps", eps, low=0.0, low_open=True)
    V.positive_int("steps", steps)
    V.choice("loss", loss, ("ce", "margin"))
    V.nonneg_int("n_boot", n_boot)
    V.optional_int("n_cells", n_cells)
    V.flag("single_gene", single_gene)
    V.name("label_key", label_key, allow_none=True)
    V.name("cluster_key", cluster_key, allow_none=True)
    V.name("counts_layer", counts_layer, allow_none=True)
    if umis is not None:
        V.ints("umis", umis)
    if isinstance(models, (str, bytes)) or not isinstance(models, (Sequence, Mapping)) or \
            not len(models):
        raise ScadvInputError(
            "models must be a non-empty list of classifiers (stored keys or model objects) or "
            f"a dict name → classifier, got {models!r}.")
    start = logg.info("comparing classifiers")
    params = P.call_params(locals(), compare_models)
    params["models"] = repr(models)
    params.pop("copy", None)
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    entries = _entries(adata, models, dev, layer)
    if label_key is None:
        label_key = next((str(e.white.record["label_key"]) for e in entries
                          if e.white is not None and "label_key" in e.white.record), None)
    idx = _cells(adata, cells, n_cells, seed)
    truth = (V.labels(adata, label_key).to_numpy()[idx] if label_key is not None
             else np.full(len(idx), np.nan, dtype=object))
    labelled = np.asarray([isinstance(t, str) for t in truth])
    truth_s = np.where(labelled, truth, "").astype(str)
    cluster_key = cluster_key or label_key
    if single_gene and cluster_key is None:
        raise ScadvInputError("the single-gene scan needs clusters: pass label_key or "
                              "cluster_key (or single_gene=False).")
    budget = E.Budget(eps=eps_t, norm="linf", alpha=tuple(2.5 * e / int(steps) for e in eps_t),
                      steps=int(steps), random_start=False, n_restarts=1, loss=loss)
    detectors = dict(detectors) if detectors is not None else _find_detectors(adata, entries)

    rows: list[dict[str, Any]] = []
    inputs: dict[str, str] = {}
    for entry in PB.bar(entries, desc="models", unit="model", progress=progress):
        access = "black-box" if entry.white is None else "white-box"
        if entry.white is not None:
            pred, adv_pred, det = _white(adata, entry, idx, budget, layer=layer, dev=dev,
                                         batch_size=batch_size, seed=seed,
                                         detector=detectors.get(entry.name))
            inputs[entry.name] = _describe_input(entry.white.record["prepare"])
        else:
            pred, adv_pred, det = _black(adata, entry, idx, layer), None, None
            inputs[entry.name] = "the AnnData's matrix" + (f" (layer {layer!r})" if layer else "")
        names = np.asarray(entry.classes, dtype=object)[pred].astype(str)
        groups = np.where(labelled, truth_s, names)
        _rows(rows, model=entry.name, access=access, metric="clean_accuracy", eps=np.nan,
              groups=truth_s, k_all=names == truth_s, ok=labelled,
              note="" if labelled.any() else "no labels")
        for i, e in enumerate(eps_t):
            if adv_pred is None:
                rows.append({"model": entry.name, "access": access, "metric": "flip_rate",
                             "eps": e, "group": "all", "value": np.nan, "ci_low": np.nan,
                             "ci_high": np.nan, "k": 0, "n": 0, "note": "black-box: n/a"})
                continue
            _rows(rows, model=entry.name, access=access, metric="flip_rate", eps=e,
                  groups=groups, k_all=adv_pred[i] != pred, ok=np.ones(len(idx), bool))
            if det is not None:
                clean_s, adv_s, flipped = det[0], det[1][i], adv_pred[i] != pred
                auc, low, high = bootstrap_auroc(clean_s, adv_s[flipped], n_boot=n_boot,
                                                 seed=seed)
                rows.append({"model": entry.name, "access": access, "metric": "detector_auroc",
                             "eps": e, "group": "all", "value": auc, "ci_low": low,
                             "ci_high": high, "k": int(flipped.sum()), "n": len(clean_s),
                             "note": f"detector {detectors[entry.name]!r}"})
        if umis is not None:
            _count_rows(adata, entry, rows, access=access, idx=idx, groups=truth_s,
                        labelled=labelled, umis=umis, layer=counts_layer, n_boot=n_boot,
                        key=f"{key_added}_{re.sub(r'[^0-9A-Za-z]+', '_', entry.name)}_counts",
                        seed=seed, device=device)
        if single_gene:
            _single_gene(adata, entry, rows, access=access, cluster_key=str(cluster_key),
                         modification=modification, genes=genes, layer=layer,
                         key=f"{key_added}_{re.sub(r'[^0-9A-Za-z]+', '_', entry.name)}"
                             "_single_gene", seed=seed, device=device)

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["eps"] = table["eps"].astype(np.float64)
    rec = {
        "kind": "scadv.compare_models",
        "table": {c: _plain(table[c]) for c in COLUMNS},
        "models": np.asarray([e.name for e in entries], dtype=str),
        "access": np.asarray(["black-box" if e.white is None else "white-box" for e in entries],
                             dtype=str),
        "inputs": np.asarray([inputs[e.name] for e in entries], dtype=str),
        "eps": np.asarray(eps_t),
        "n_cells": len(idx),
        "label_key": "" if label_key is None else str(label_key),
        "detectors": {k: str(v) for k, v in detectors.items()},
        "provenance": P.record(params, seed=seed, device=dev),
    }
    flips = table[(table["metric"] == "flip_rate") & (table["group"] == "all")]
    summary = "; ".join(
        f"{m}: " + ", ".join("n/a" if np.isnan(v) else f"{v:.2f}" for v in g["value"])
        for m, g in flips.groupby("model", sort=False))
    write_results(adata, step=f"compared {len(entries)} models on {len(idx)} cells (flip rate "
                  f"per ε — {summary})", start=start, uns={key_added: rec})
    return table


def table(adata: AnnData, key: str = "compare_models") -> pd.DataFrame:
    """The table :func:`compare_models` wrote to ``adata.uns['scadv'][key]`` (also after
    ``write_h5ad`` / ``read_h5ad``)."""
    ns = adata.uns.get(K.UNS)
    rec = ns.get(key) if isinstance(ns, Mapping) else None
    if not isinstance(rec, Mapping) or "table" not in rec:
        raise ScadvInputError(f"no scadv.tl.compare_models result {key!r} in "
                              "adata.uns['scadv']; run scadv.tl.compare_models first.")
    cols = rec["table"]
    out = pd.DataFrame({c: np.asarray(cols[c]) for c in COLUMNS})
    for c in ("model", "access", "metric", "group", "note"):
        out[c] = out[c].astype(str)
    return out


def _plain(col: pd.Series) -> np.ndarray:
    if col.dtype.kind in "fiub":
        return col.to_numpy()
    return col.astype(str).to_numpy().astype(str)


def _describe_input(recipe: Mapping[str, Any]) -> str:
    n = len(np.asarray(recipe["genes"]))
    scaled = bool(recipe.get("has_stats", True)) and not (
        np.allclose(np.asarray(recipe.get("mean", 0.0)), 0)
        and np.allclose(np.asarray(recipe.get("std", 1.0)), 1))
    space = "z-scores" if scaled else "log1p units"
    clip = float(recipe.get("max_value", 0) or 0)
    return (f"{n} genes, {space} of log1p(counts per {float(recipe.get('target_sum', 1e4)):g})"
            + (f", clipped at {clip:g}" if clip > 0 else ""))


def _find_detectors(adata: AnnData, entries: list[_Entry]) -> dict[str, str]:
    from ... import _detector as DT

    ns = adata.uns.get(K.UNS)
    if not isinstance(ns, Mapping):
        return {}
    out: dict[str, str] = {}
    for e in entries:
        if e.white is None:
            continue
        for key, rec in ns.items():
            if (isinstance(rec, Mapping) and str(rec.get("kind", "")) == DT.DETECTOR_KIND
                    and str(rec.get("model", "")) == e.white.key):
                out.setdefault(e.name, str(key))
    return out


def _white(adata: AnnData, entry: _Entry, idx: np.ndarray, budget: E.Budget, *,
           layer: str | None, dev: torch.device, batch_size: int, seed: int,
           detector: str | None
           ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Clean and adversarial predictions (and detector scores) of a differentiable model,
    attacked in its own input space, a chunk of cells at a time."""
    res = entry.white
    if res is None:  # the caller sends white-box models only
        raise RuntimeError(f"model {entry.name!r} has no differentiable network")
    loaded = None
    if detector is not None:
        from .._detect import _common as MC

        loaded = MC.load(adata, detector, source=None, device=dev,
                         model=None if isinstance(entry.spec, str) else entry.spec)
    src = R.source(adata, res.record["prepare"], layer=layer, what="adata")
    n_eps = len(budget.eps)
    pred = np.empty(len(idx), dtype=np.int64)
    adv_pred = np.empty((n_eps, len(idx)), dtype=np.int64)
    s_clean = np.empty(len(idx))
    s_adv = np.empty((n_eps, len(idx)))
    for n_chunk, lo in enumerate(range(0, len(idx), CHUNK)):
        sub = idx[lo:lo + CHUNK]
        sl = slice(lo, lo + len(sub))
        x0 = src.rows(sub)
        _, logits = M.infer(res.net, x0, device=dev)
        pred[sl] = logits.argmax(axis=1)
        adv, adv_logits = E.run(res.net, x0, pred[sl], budget, E.Constraints(), targeted=False,
                                device=dev, seed=seed + 1_000_003 * n_chunk,
                                batch_size=int(batch_size), progress=False)
        adv_pred[:, sl] = adv_logits.argmax(axis=-1)
        if loaded is not None:
            s_clean[sl] = loaded.scores(x0).scores["detector"]
            for i in range(n_eps):
                s_adv[i, sl] = loaded.scores(adv[i]).scores["detector"]
        del adv, x0
    return pred, adv_pred, (None if loaded is None else (s_clean, s_adv))


def _black(adata: AnnData, entry: _Entry, idx: np.ndarray, layer: str | None) -> np.ndarray:
    """Clean predictions of a black-box model on the cells ``idx``."""
    clf = entry.black
    if clf is None or clf.cols is None:  # the caller sends black-box models only
        raise RuntimeError(f"model {entry.name!r} has no black-box classifier")
    matrix = V.matrix(adata, layer)
    preds = []
    for lo in range(0, len(idx), CHUNK):
        rows = V.dense(RW.read(matrix, idx[lo:lo + CHUNK]))[:, clf.cols]
        preds.append(np.asarray(clf.predict_proba(rows)).argmax(axis=1))
    return np.concatenate(preds)


def _single_gene(adata: AnnData, entry: _Entry, rows: list[dict[str, Any]], *, access: str,
                 cluster_key: str, modification: Any, genes: Any, layer: str | None, key: str,
                 seed: int, device: D.Device) -> None:
    from .._genes._single_gene import single_gene

    clusters = V.labels(adata, cluster_key)
    present = sorted(set(clusters.dropna().astype(str)))
    single_gene(adata, cluster_key=cluster_key, target=present, classifier=entry.spec,
                modification=modification, genes=genes, layer=layer, key_added=key, seed=seed,
                device=device, progress=False)
    summary = adata.uns[K.UNS][key]["summary"]
    per = summary.groupby("cluster", sort=True).agg(k=("n_flip_genes", "sum"),
                                                    n=("n_genes", "sum"))
    for g, r in [("all", per.sum()), *per.iterrows()]:
        k, n = int(r["k"]), int(r["n"])
        low, high = wilson(k, n)
        rows.append({"model": entry.name, "access": access,
                     "metric": "single_gene_flip_fraction", "eps": np.nan, "group": str(g),
                     "value": k / n if n else np.nan, "ci_low": float(low),
                     "ci_high": float(high), "k": k, "n": n,
                     "note": "(gene, modification) pairs that alone flip the cluster"})


def _count_rows(adata: AnnData, entry: _Entry, rows: list[dict[str, Any]], *, access: str,
                idx: np.ndarray, groups: np.ndarray, labelled: np.ndarray, umis: Sequence[int],
                layer: str | None, n_boot: int, key: str, seed: int, device: D.Device) -> None:
    """The count-space attack's rows: fraction flipped within each UMI budget (Wilson) and
    the median fewest UMIs (bootstrap)."""
    budgets = tuple(int(b) for b in umis)
    if entry.white is None or str(entry.white.record["kind"]) not in M.NETWORK_KINDS:
        why = "black-box: n/a" if entry.white is None else "n/a: torch module not stored"
        rows.append({"model": entry.name, "access": access, "metric": "umi_flip_rate",
                     "eps": float(max(budgets)), "group": "all", "value": np.nan,
                     "ci_low": np.nan, "ci_high": np.nan, "k": 0, "n": 0, "note": why})
        return
    from .._counts._count_attack import count_attack

    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[idx] = True
    count_attack(adata, budgets=budgets, cells=mask, model=entry.white.key, layer=layer,
                 key_added=key, seed=seed, device=device, progress=False)
    found = np.asarray(adata.obs[K.min_umis(key)], dtype=np.float64)[idx]
    names = ["all", *sorted(set(groups[labelled].tolist()) - {""})]
    for b in budgets:
        _rows(rows, model=entry.name, access=access, metric="umi_flip_rate", eps=float(b),
              groups=groups, k_all=found <= b, ok=np.ones(len(idx), bool),
              note="eps = UMIs added or removed")
    rng = np.random.default_rng(seed)
    for g in names:
        sel = found if g == "all" else found[groups == g]
        if not len(sel):
            continue
        med = float(np.median(sel))
        boots = [float(np.median(sel[rng.integers(0, len(sel), len(sel))]))
                 for _ in range(int(n_boot))]
        # order statistics, no interpolation: medians may be inf
        low, high = ((np.percentile(boots, 2.5, method="lower"),
                      np.percentile(boots, 97.5, method="higher")) if boots
                     else (np.nan, np.nan))
        rows.append({"model": entry.name, "access": access, "metric": "median_min_umis",
                     "eps": float(max(budgets)), "group": g, "value": med,
                     "ci_low": float(low), "ci_high": float(high), "k": 0, "n": len(sel),
                     "note": "inf: not flipped within the largest budget"})
