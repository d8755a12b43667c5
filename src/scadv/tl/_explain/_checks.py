"""Do gene attributions hold up? Stability under perturbation, agreement across methods, and
overlap with differential-expression markers (``scadv.tl.attribution_stability``,
``scadv.tl.attribution_agreement``, ``scadv.tl.marker_overlap``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from torch import nn

from ... import _keys as K
from ... import _provenance as P
from ... import _recipe as R
from ... import _records as REC
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from .._attacks import _engine as E
from . import _attribute as AT
from . import _engine as X
from . import _rankings as RK

Perturbation = Literal["noise", "downsample", "adversarial"]
PERTURBATIONS: tuple[Perturbation, ...] = ("noise", "downsample", "adversarial")


def attribution_stability(
    adata: AnnData,
    *,
    key: str = "attr_integrated_gradients",
    perturbations: Sequence[Perturbation] = PERTURBATIONS,
    noise: float = 0.1,
    downsample: float = 0.5,
    eps: float = 0.1,
    k: int = 20,
    n_repeats: int = 3,
    model: nn.Module | Callable[[np.ndarray], np.ndarray] | None = None,
    key_added: str | None = None,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """How stable is each class's gene ranking when the cells are perturbed a little?

    The attribution run ``key`` is repeated, with the same method, model, baseline, cells and
    target classes, on perturbed versions of the cells; each class's ranking (mean attribution
    over its cells) is compared with the clean one by the Jaccard index of the top ``k`` genes
    (Jaccard@k) and Spearman's rank correlation over all genes.

    ``'noise'``
        Gaussian noise of SD ``noise`` added to every gene (z-score units of the model input).
    ``'downsample'``
        Each cell's counts binomially thinned to a fraction ``downsample`` (a shallower
        sequencing run of the same cells), then transformed with the model's recipe. Needs the
        counts (``layers['counts']`` and ``obs['scadv_library_size']``, written by
        :func:`scadv.pp.prepare` from raw counts).
    ``'adversarial'``
        :func:`scadv.tl.pgd`'s default attack (L∞, ε = ``eps``, 10 steps, margin loss, away
        from the model's prediction); the attribution still explains the clean target class.
        Needs a differentiable model.

    Parameters
    ----------
    adata
        Holds the attribution run ``key`` (and its model).
    key
        The attribution run to check (``key_added`` of :func:`scadv.tl.attribute`).
    perturbations
        Any of ``'noise'``, ``'downsample'``, ``'adversarial'``.
    noise, downsample, eps
        Strength of each perturbation.
    k
        Size of the top-gene sets compared.
    n_repeats
        Perturbed copies per perturbation (different random draws; the attack is deterministic
        and run once).
    model
        The ``nn.Module`` or callable model of a run made with a model object (those cannot be
        stored); leave ``None`` for stored scadv classifiers.
    key_added
        Name of the record; default ``'<key>_stability'``.
    seed
        Seeds the perturbations.
    progress
        Show progress bars.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]``:
    ``perturbations``, ``classes``, ``jaccard`` and ``spearman`` (perturbations × classes,
    mean over repeats), ``jaccard_mean`` and ``spearman_mean`` (per perturbation, mean over
    classes), ``table`` (a DataFrame with one row per perturbation, repeat and class), ``k``,
    the strengths, ``prediction_changed`` (fraction of cells whose predicted class changed,
    per perturbation) and provenance.
    """
    V.options(locals())
    V.name("key", key)
    V.names("perturbations", perturbations)
    V.positive("noise", noise)
    V.fraction("downsample", downsample)
    V.positive("eps", eps)
    V.positive_int("k", k)
    V.positive_int("n_repeats", n_repeats)
    if model is not None and not callable(model):
        raise ScadvInputError(f"model must be the nn.Module or callable the attributions were "
                              f"made with (or None for a stored classifier), got "
                              f"{type(model).__name__}.")
    start = logg.info(f"stability of the attributions {key!r}")
    params = P.call_params(locals(), attribution_stability)
    adata = V.start(adata, copy=copy)
    rec = RK.record(adata, key)
    perturbations = ([cast(Perturbation, perturbations)] if isinstance(perturbations, str)
                     else list(perturbations))
    bad = [p for p in perturbations if p not in PERTURBATIONS]
    if bad or not perturbations:
        raise ScadvInputError(f"perturbations must be among {list(PERTURBATIONS)}, got "
                              f"{perturbations!r}.")
    if not noise > 0 or not 0 < downsample < 1 or not eps > 0:
        raise ScadvInputError(f"noise and eps must be positive and downsample in (0, 1), got "
                              f"noise={noise}, downsample={downsample}, eps={eps}.")
    if int(n_repeats) < 1:
        raise ScadvInputError(f"n_repeats must be ≥ 1, got {n_repeats}.")
    setup, mask, targets = _rebuild(adata, rec, model)
    clean, classes, genes = RK.scores(rec)
    k = RK.check_k(k, len(genes))
    x0 = setup.x[mask]
    if "downsample" in perturbations:
        counts, library = _counts(adata, setup, mask)
    if "adversarial" in perturbations and setup.explainer.net is None:
        raise ScadvInputError("the 'adversarial' perturbation needs gradients; a black-box "
                              "model supports 'noise' and 'downsample'.")
    rng = np.random.default_rng(seed)
    clean_pred = setup.explainer.output(x0).argmax(axis=1)
    rows, jac, rho, changed = [], [], [], []
    for pert in perturbations:
        reps = 1 if pert == "adversarial" else int(n_repeats)
        j_rep, r_rep, c_rep = [], [], []
        for rep in range(reps):
            if pert == "noise":
                xp = x0 + rng.normal(0.0, noise, size=x0.shape).astype(np.float32)
            elif pert == "downsample":
                xp = _thin(counts, library, downsample, rng, _recipe(setup))
            else:
                xp = _adversarial(setup, x0, clean_pred, eps, seed=seed, progress=progress)
            attr, _ = setup.explainer(xp, targets, progress=progress)
            pert_scores, _ = X.class_scores(attr, targets, len(classes))
            jc = RK.jaccard_at_k(clean, pert_scores, k)
            rc = RK.spearman(clean, pert_scores)
            j_rep.append(jc)
            r_rep.append(rc)
            c_rep.append(float((setup.explainer.output(xp).argmax(axis=1) != clean_pred).mean()))
            rows += [{"perturbation": pert, "repeat": rep, "class": c, "jaccard": jc[i],
                      "spearman": rc[i]} for i, c in enumerate(classes) if not np.isnan(jc[i])]
        jac.append(np.nanmean(np.asarray(j_rep), axis=0) if reps > 1 else j_rep[0])
        rho.append(np.nanmean(np.asarray(r_rep), axis=0) if reps > 1 else r_rep[0])
        changed.append(float(np.mean(c_rep)))
    jac_a, rho_a = np.asarray(jac), np.asarray(rho)
    out_key = key_added or f"{key}_stability"
    table = pd.DataFrame(rows)
    table["class"] = pd.Categorical(table["class"], categories=classes)
    out = {
        "attribution_key": key,
        "method": str(rec["method"]),
        "perturbations": perturbations,
        "classes": classes,
        "k": k,
        "noise": float(noise),
        "downsample": float(downsample),
        "eps": float(eps),
        "n_repeats": int(n_repeats),
        "jaccard": jac_a,
        "spearman": rho_a,
        "jaccard_mean": np.nanmean(jac_a, axis=1),
        "spearman_mean": np.nanmean(rho_a, axis=1),
        "prediction_changed": np.asarray(changed),
        "table": table,
        "provenance": P.record(params, seed=seed),
    }
    summary = ", ".join(f"{p}: {j:.2f}"
                        for p, j in zip(perturbations, out["jaccard_mean"], strict=True))
    write_results(adata, step=f"attribution stability (Jaccard@{k} {summary})", start=start,
                  uns={out_key: out})
    return adata if copy else None


def _rebuild(adata: AnnData, rec: Mapping[str, Any], model: Any
             ) -> tuple[AT.Setup, np.ndarray, np.ndarray]:
    """The explainer, cells and targets of a stored attribution run."""
    fix = "run scadv.tl.attribute again."
    got = REC.fields(rec, {
        "model": REC.Field("str"), "method": REC.Field("str", choices=X.METHODS),
        "layer": REC.Field("str", optional=True), "baseline": REC.Field("str", optional=True),
        "baseline_values": REC.Field("floats", (None,), optional=True),
        "n_steps": REC.Field("int", low=1), "n_samples": REC.Field("int", low=1),
        "noise": REC.Field("float", low=0.0), "label_key": REC.Field("str", optional=True),
        "classes": REC.Field("strs", ("n_classes",)), "cells": REC.Field("strs", ("n_cells",)),
        "targets": REC.Field("ints", ("n_cells",), low=-1), "provenance": REC.Field("map"),
    }, what="attribution record", fix=fix)
    if got["targets"].size and got["targets"].max() >= len(got["classes"]):
        raise REC.malformed("attribution record", "'targets'", "name classes it does not have",
                            fix)
    prov = REC.fields(rec["provenance"], {"params": REC.Field("map", optional=True),
                                          "seed": REC.Field("int", optional=True, low=0)},
                      what="attribution record's provenance", fix=fix)
    params = REC.fields(prov.get("params", {}), {
        "batch_size": REC.Field("int", optional=True, low=1),
        "device": REC.Field("str", optional=True)},
        what="attribution record's provenance", fix=fix)
    stored_model = str(rec["model"])
    if stored_model == "custom":
        if model is None:
            raise ScadvInputError(
                "this attribution run explained a model object, which is not stored in the "
                "AnnData; pass it again as model=..."
            )
        model_arg = model
    else:
        model_arg = stored_model
    layer = str(rec.get("layer", "None"))
    baseline: Any = str(rec.get("baseline", "zero_expression"))
    if baseline not in ("zero_expression", "mean"):
        baseline = np.asarray(rec["baseline_values"], dtype=np.float32)
    setup = AT.prepare(
        adata, method=str(rec["method"]), model=model_arg, baseline=baseline,
        n_steps=int(rec["n_steps"]), n_samples=int(rec["n_samples"]), noise=float(rec["noise"]),
        layer=None if layer == "None" else layer, label_key=str(rec.get("label_key", "")) or None,
        classes=[str(c) for c in np.asarray(rec["classes"])],
        batch_size=int(params.get("batch_size", 4096)), seed=int(prov.get("seed", 0)),
        device=str(params.get("device", "auto")))
    names = np.asarray(rec["cells"]).astype(str)
    pos = adata.obs_names.get_indexer(names)
    if (pos < 0).any():
        raise ScadvInputError(f"{int((pos < 0).sum())} cells of the attribution run are no "
                              "longer in adata; re-run scadv.tl.attribute.")
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[pos] = True
    order = np.argsort(pos)
    targets = np.asarray(rec["targets"], dtype=np.int64)[order]
    return setup, mask, targets


def _counts(adata: AnnData, setup: AT.Setup, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the model genes and library sizes of the selected cells."""
    rec = setup.record
    if rec is None:
        raise ScadvInputError(
            "the 'downsample' perturbation thins raw counts: it needs a stored scadv classifier "
            "(model=<key>) and the raw counts of the cells.")
    src = R.source(adata, rec["prepare"], what="adata")
    idx = np.flatnonzero(mask)
    if src.kind == "counts":
        counts, library = src.counts(idx)
        return V.dense(counts).astype(np.int64), library
    if K.COUNTS_LAYER not in adata.layers or K.LIBRARY_SIZE not in adata.obs:
        raise ScadvInputError(
            "the 'downsample' perturbation thins raw counts, but adata holds none: pass the "
            "AnnData with its counts in X (as read from disk), or for data prepared in place "
            f"(subset=True) keep adata.layers[{K.COUNTS_LAYER!r}] and obs[{K.LIBRARY_SIZE!r}].")
    genes = np.asarray(rec["genes"]).astype(str)
    pos = adata.var_names.get_indexer(genes)
    if (pos < 0).any():
        raise ScadvInputError("adata.layers['counts'] does not cover the model genes; "
                              "'downsample' needs the prepared training AnnData.")
    counts = V.dense(adata.layers[K.COUNTS_LAYER][idx][:, pos])
    V.check_counts(counts, what=f"adata.layers[{K.COUNTS_LAYER!r}]")
    return counts.astype(np.int64), adata.obs[K.LIBRARY_SIZE].to_numpy()[mask].astype(float)


def _thin(counts: np.ndarray, library: np.ndarray, keep: float, rng: np.random.Generator,
          recipe: Mapping[str, Any]) -> np.ndarray:
    """Binomial thinning to a fraction ``keep`` of the counts, then the model's recipe.

    The model genes are thinned exactly; the other genes (not stored) are assumed thinned in
    expectation, so the new library size is ``keep × (L − m) + m'`` (``m``, ``m'``: model-gene
    totals before and after)."""
    thinned = rng.binomial(counts, keep)
    library = keep * (library - counts.sum(axis=1)) + thinned.sum(axis=1)
    library = np.maximum(library, 1.0)
    lognorm = R.lognormalize(thinned, target_sum=float(recipe["target_sum"]),
                             library_size=library)
    return R.lognorm_to_model(lognorm, recipe)


def _adversarial(setup: AT.Setup, x0: np.ndarray, pred: np.ndarray, eps: float, *, seed: int,
                 progress: bool) -> np.ndarray:
    """:func:`scadv.tl.pgd`'s default attack, away from the model's prediction."""
    budget = E.Budget(eps=(float(eps),), norm="linf", alpha=(0.25 * eps,), steps=10,
                      random_start=False, n_restarts=1, loss="margin")
    if setup.explainer.net is None:
        raise ScadvInputError("the 'adversarial' perturbation needs a differentiable model.")
    adv, _ = E.run(setup.explainer.net, x0, pred, budget, E.Constraints(), targeted=False,
                   device=setup.explainer.device, seed=seed, batch_size=256, progress=progress)
    return adv[0]


def attribution_agreement(
    adata: AnnData,
    *,
    keys: Sequence[str],
    k: int = 20,
    key_added: str = "attr_agreement",
    copy: bool = False,
) -> AnnData | None:
    """Do different attribution methods (or models) rank the same genes on top?

    For every pair of attribution runs and every class both explain, the Jaccard index of the
    top ``k`` genes and Spearman's rank correlation over the genes both rank.

    Parameters
    ----------
    adata
        Holds the attribution runs.
    keys
        Two or more attribution runs (``key_added`` of :func:`scadv.tl.attribute`), e.g. the
        same method on a plain and a robust model, or several methods on one model.
    k
        Size of the top-gene sets compared.
    key_added
        Name of the record.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]``:
    ``keys``, ``classes`` (explained by every run), ``jaccard`` and ``spearman``
    (runs × runs × classes), ``jaccard_mean`` and ``spearman_mean`` (runs × runs, mean over
    classes), ``k`` and provenance.
    """
    V.options(locals())
    V.names("keys", keys)
    V.positive_int("k", k)
    start = logg.info(f"agreement of attributions {list(keys)}")
    params = P.call_params(locals(), attribution_agreement)
    adata = V.start(adata, copy=copy)
    keys = [str(key) for key in ([keys] if isinstance(keys, str) else keys)]
    if len(keys) < 2 or len(set(keys)) != len(keys):
        raise ScadvInputError(f"keys must name at least two different attribution runs, got "
                              f"{keys}.")
    recs = [RK.record(adata, key) for key in keys]
    mats = [RK.scores(r) for r in recs]
    classes = [c for c in mats[0][1] if all(c in m[1] for m in mats[1:])]
    genes = [g for g in mats[0][2] if all(g in set(m[2]) for m in mats[1:])]
    if not classes or not genes:
        raise ScadvInputError("the attribution runs share no class or no gene; compare runs "
                              "of models with the same classes and genes.")
    k = RK.check_k(k, len(genes))
    aligned = []
    for scores, cls, gns in mats:
        ci = [cls.index(c) for c in classes]
        gi = pd.Index(gns).get_indexer(genes)
        aligned.append(scores[np.ix_(ci, gi)])
    n = len(keys)
    jac = np.full((n, n, len(classes)), np.nan)
    rho = np.full((n, n, len(classes)), np.nan)
    for i in range(n):
        for j in range(n):
            if j < i:
                jac[i, j], rho[i, j] = jac[j, i], rho[j, i]
                continue
            jac[i, j] = RK.jaccard_at_k(aligned[i], aligned[j], k)
            rho[i, j] = RK.spearman(aligned[i], aligned[j])
    rec = {
        "keys": keys,
        "methods": [str(r["method"]) for r in recs],
        "models": [str(r.get("model", "")) for r in recs],  # optional in old records
        "classes": classes,
        "k": k,
        "jaccard": jac,
        "spearman": rho,
        "jaccard_mean": np.nanmean(jac, axis=2),
        "spearman_mean": np.nanmean(rho, axis=2),
        "provenance": P.record(params),
    }
    off = ~np.eye(n, dtype=bool)
    write_results(adata, step=f"attribution agreement (mean pairwise Jaccard@{k} "
                              f"{np.nanmean(rec['jaccard_mean'][off]):.2f})",
                  start=start, uns={key_added: rec})
    return adata if copy else None


def marker_overlap(
    adata: AnnData,
    *,
    keys: str | Sequence[str],
    de_key: str = "rank_genes_groups",
    k: int = 20,
    key_added: str = "marker_overlap",
    copy: bool = False,
) -> AnnData | None:
    """How many of a class's top attributed genes are its differential-expression markers?

    Compares each class's top ``k`` genes by attribution with its top ``k`` genes of
    :func:`scanpy.tl.rank_genes_groups` (run it first with ``groupby=`` the classifier's label
    column). Only the model's genes can be attributed, so the DE ranking is restricted to
    them before its top ``k`` is taken; only up-regulated genes (positive score) count as
    markers.

    Parameters
    ----------
    adata
        Holds the attribution runs and the ``rank_genes_groups`` result.
    keys
        One or more attribution runs.
    de_key
        Key of the :func:`scanpy.tl.rank_genes_groups` result in ``adata.uns``.
    k
        Size of the top-gene sets.
    key_added
        Name of the record.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]``: ``keys``,
    ``classes`` (the DE groups), ``overlap`` (runs × classes: fraction of the top ``k``
    attributed genes among the top ``k`` DE markers; NaN where a run does not explain the
    class), ``overlap_mean`` (per run), ``table`` (a DataFrame: ``key``, ``class``,
    ``overlap``, ``shared_genes``), ``k``, ``groupby`` and provenance.
    """
    V.options(locals())
    V.names("keys", keys)
    V.name("de_key", de_key)
    V.positive_int("k", k)
    start = logg.info("overlap of attributions with DE markers")
    params = P.call_params(locals(), marker_overlap)
    adata = V.start(adata, copy=copy)
    keys = [keys] if isinstance(keys, str) else [str(key) for key in keys]
    if not keys:
        raise ScadvInputError("keys is empty; name at least one attribution run.")
    de = adata.uns.get(de_key)
    if not isinstance(de, Mapping) or "names" not in de or "scores" not in de:
        raise ScadvInputError(
            f"no scanpy rank_genes_groups result in adata.uns[{de_key!r}]. Run "
            "sc.tl.rank_genes_groups(adata, groupby=<the classifier's label column>) first "
            "(it uses adata.raw, the log-normalised genes, by default), or pass de_key=..."
        )
    names, de_scores = de["names"], de["scores"]
    groups = list(names.dtype.names)
    recs = [RK.record(adata, key) for key in keys]
    overlap = np.full((len(keys), len(groups)), np.nan)
    rows = []
    for i, rec in enumerate(recs):
        scores, classes, genes = RK.scores(rec)
        k = RK.check_k(k, len(genes))
        gene_set = set(genes)
        for j, group in enumerate(groups):
            if group not in classes or np.isnan(scores[classes.index(group)]).all():
                continue
            up = np.asarray(de_scores[group], dtype=float) > 0
            ranked = [g for g, u in zip(np.asarray(names[group]).astype(str), up, strict=True)
                      if u and g in gene_set][:k]
            top = genes[RK.top_k(scores[classes.index(group)], k)]
            shared = [g for g in top if g in set(ranked)]
            overlap[i, j] = len(shared) / k
            rows.append({"key": keys[i], "class": group, "overlap": overlap[i, j],
                         "shared_genes": ", ".join(shared)})
    if np.isnan(overlap).all():
        raise ScadvInputError(
            f"none of the DE groups {groups} is a class of the attribution runs; run "
            "rank_genes_groups with groupby= the classifier's label column."
        )
    rec = {
        "keys": keys,
        "classes": groups,
        "groupby": str(de.get("params", {}).get("groupby", "")),
        "k": int(k),
        "overlap": overlap,
        "overlap_mean": np.nanmean(overlap, axis=1),
        "table": pd.DataFrame(rows),
        "provenance": P.record(params),
    }
    write_results(adata, step="marker overlap (" + ", ".join(
        f"{key}: {v:.2f}" for key, v in zip(keys, rec["overlap_mean"], strict=True)) + ")",
        start=start, uns={key_added: rec})
    return adata if copy else None



def _recipe(setup: AT.Setup) -> Mapping[str, Any]:
    """The preprocessing recipe of the stored classifier behind ``setup``."""
    if setup.record is None:
        raise ScadvInputError("the 'downsample' perturbation needs a stored scadv classifier "
                              "(its preprocessing recipe re-processes the thinned counts).")
    return setup.record["prepare"]
