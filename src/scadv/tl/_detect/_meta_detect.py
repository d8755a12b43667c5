"""``scadv.tl.meta_detect``: a detector of manipulated cells, on views of the cell an attacker
cannot move together."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scanpy.logging as logg
import torch
from anndata import AnnData
from scipy import sparse

from ... import _detector as DT
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
from .._attacks import _engine as E
from .._models import _resolve as RS
from . import _baselines as B
from . import _common as MC
from . import _consistency as CO
from . import _count_search as CS
from . import _features as MF
from . import _gate as G

TrainAttack = Literal["counts", "pgd", "fgsm", "pgd_realistic"]
DEFAULT_EPS = {"pgd": (0.05, 0.1, 0.15), "fgsm": (0.05, 0.1, 0.15),
               "pgd_realistic": (0.3, 0.5, 1.0)}
#: The count-space training attack: stopped at the first flip, and pushed to a margin of 2.
COUNT_MARGINS = (0.0, 2.0)
#: Depths (fractions of the counts kept) of the down-sampled training cells that the
#: consistency detector learns not to flag.
DOWNSAMPLE = (0.5, 0.25)
#: Training cells attacked by the adaptive count attacker whose successes the consistency
#: detector's second fit adds to its positives.
ADAPTIVE_CELLS = 400
#: Default rounds of that attacker (``meta_detect(adaptive_rounds=...)``).
ADAPTIVE_ROUNDS = 1
#: Fewest successful adversarial training / validation rows the detector accepts.
MIN_TRAIN_POSITIVES = 20
#: Default cap on the training cells (and, separately, the validation cells) the detector is
#: fitted, attacked and calibrated on: an atlas's splits are subsampled to this many.
MAX_CELLS = 10_000
MIN_VAL_POSITIVES = 5


def meta_detect(
    adata: AnnData,
    *,
    method: MC.Method = "consistency",
    fusion: Literal["logistic", "or"] = "logistic",
    adaptive_rounds: int = ADAPTIVE_ROUNDS,
    attack: TrainAttack | None = None,
    eps: float | Sequence[float] | None = None,
    budget: int = 60,
    steps: int = 10,
    max_cells: int | None = MAX_CELLS,
    positives: MC.Positives = "flipped",
    features: Sequence[str] = MF.GROUPS,
    threshold: MC.Threshold = "fpr",
    target_fpr: float = 0.05,
    input_check: bool = True,
    baselines: bool = True,
    layers: Sequence[str] | None = None,
    triplet_epochs: int = 15,
    detector_epochs: int = 30,
    patience: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    triplet_margin: float = 1.0,
    model: RS.ModelSpec = K.DEFAULT_MODEL,
    key_added: str = K.DEFAULT_DETECTOR,
    seed: int = 42,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Train a detector of manipulated cells, calibrate its threshold, score and evaluate.

    Nothing the detector uses at inference depends on true labels: every signal is computed
    from the class the stored classifier *predicts*.

    1. **Training data from training cells only.** The classifier's training split is
       attacked with ``attack``; by default only successful attacks (the prediction flipped)
       are positives. ``'counts'`` (the default when ``adata`` holds raw counts) edits the raw
       UMI counts of the model genes, one UMI at a time (at most 3 per gene, library size in
       the observed range), until the prediction flips, and again until it is wrong by a logit
       margin of 2 (at most ``budget`` UMIs).
    2. **The method.** ``'consistency'`` (default, chosen on validation cells: see
       ``docs/detection.md``): does the classifier's answer hold on the cell with its z-scores
       clipped to ±5 (*squeezing*), and does a *twin* — a logistic regression on ``log1p``
       counts normalised to 1,000, without z-scores — agree? A logistic regression fuses
       these with the classifier's margin; it is fitted on clean training cells (and their
       down-sampled versions, which must not be flagged) against their attacks.
       ``'triplet'``: the seed study's triplet network + residual detector on the
       meta-features (``features``). ``'logreg'``: a logistic regression on the meta-features.
    3. **Threshold** on the classifier's *validation* cells: split-conformal at
       ``target_fpr`` (``threshold='fpr'``): the threshold lies above the
       ⌈(n + 1)(1 − α)⌉-th smallest of the n clean validation scores, so a clean cell is
       flagged with probability at most α. With too few validation cells for that to hold
       reliably (the realised rate could exceed 1.5 α with more than 5% probability; about 250
       cells are needed at α = 5%) a warning says so; ``calibration`` records n and the
       bounds. ``'youden'``: the point of the
       validation ROC maximising TPR − FPR (no guarantee).
    4. **Realism gate** (``input_check``): a cell holding values no measured cell can have —
       below a gene's zero level, or implied counts that are not whole numbers — is flagged
       whatever the method says (see :mod:`scadv.tl._detect._gate`). Every model-space edit
       of measured counts fails it; the count-space attacks pass it and meet the method.
    5. **Scoring and evaluation.** Clean cells and every perturbation of this classifier
       (:func:`scadv.tl.pgd`, :func:`scadv.tl.fgsm`, :func:`scadv.tl.adaptive_pgd`,
       :func:`scadv.tl.adaptive_count_attack`, :func:`scadv.tl.benign_perturb`) are scored;
       the evaluation uses *test-split* cells only, at the stored threshold first.

    Parameters
    ----------
    adata
        With a classifier from :func:`scadv.tl.train_classifier` and its split.
    method
        ``'consistency'`` (default), ``'triplet'`` or ``'logreg'`` (see above).
    fusion
        How the consistency detector turns its three views into one score.
        ``'logistic'`` (default): the logistic regression of step 2, fitted on attacks (and
        re-fitted once on the training cells' attacks by an attacker who queries it).
        ``'or'``: flag a cell when *any* view is out of line — each view with its own
        split-conformal threshold on the clean validation cells at a share of
        ``target_fpr`` (Bonferroni: 1/6 for the margin and the squeezed cell, 2/3 for the
        twin), so a clean cell is flagged with probability at most ``target_fpr``; no weight
        is learnt on attacks, so an attacker cannot trade one view against another. The
        stored ``threshold`` is 0.5 (a view at its own threshold); ``calibration`` sums the
        views' 95% bounds. Needs ``threshold='fpr'``. Opt-in: on PBMC3k (seeds 42, 0, 1)
        the count attacker who queries the detector pays 3.1× the UMIs it needs against the
        undefended classifier to evade half the cells (``'logistic'``: 2.45×), but 10% of
        cells down-sampled to half their depth are flagged (``'logistic'``: 4%); see
        ``docs/detection.md``, "Fusion rules", and ``benchmarks/detection_defence.py``.
        Stored in the detector (``consistency.fusion``)
        and used by :func:`scadv.tl.meta_score` and the adaptive attackers.
    adaptive_rounds
        ``fusion='logistic'`` with ``attack='counts'``: rounds of the count attacker who
        queries the detector, run on up to 400 training cells; each round attacks the last
        fit, and its successes join the positives before the fusion is fitted again (0: none).
        Default 1. On PBMC3k (seeds 42, 0, 1) three rounds raise that attacker's cost from
        2.45× to 2.73× the UMIs it needs against the undefended classifier, with every other
        target held, at about twice the training time (``benchmarks/detection_defence.py
        --variants logistic3``; ``docs/detection.md``, "Fusion rules").
    attack
        Training attack: ``'counts'`` (default when ``adata`` holds raw counts and the
        classifier was prepared from raw counts), ``'pgd_realistic'`` (PGD that keeps zeros at
        zero and every gene in its observed range; the default otherwise), ``'pgd'`` (scadv's
        default PGD) or ``'fgsm'``.
    eps
        Budgets of the z-space training attacks; default ``(0.05, 0.1, 0.15)``, or
        ``(0.3, 0.5, 1.0)`` for ``'pgd_realistic'``.
    budget
        Most UMIs the count-space training attack changes per cell.
    steps
        PGD steps.
    max_cells
        Most training cells, and separately most validation cells, the detector is fitted on,
        attacked and calibrated on (default 10,000): larger splits (atlases) are subsampled at
        random (seeded), so the detector's cost stops growing with the number of cells;
        ``None`` uses every cell. Scoring always covers every cell. The training record keeps
        how many cells each split had and how many were used.
    positives
        ``'flipped'`` (default): attacked rows whose prediction changed; ``'all'``: every
        attacked row.
    features
        Meta-feature groups of ``'triplet'`` / ``'logreg'`` (and the baselines that read
        them): any of ``'embedding'``, ``'logits'``, ``'softmax'``, ``'margin'``,
        ``'entropy'``, ``'grad'``. Default: all.
    threshold
        ``'fpr'`` (default, split-conformal at ``target_fpr``) or ``'youden'``.
    target_fpr
        False-positive rate α the threshold promises for clean cells.
    input_check
        Use the realism gate (default).
    baselines
        Also fit the other methods and the simple baselines (margin, squeeze, twin,
        Mahalanobis distance with Ledoit–Wolf shrinkage on the embedding, PCA reconstruction
        error, the gate's count alone), calibrated the same way and evaluated side by side.
    layers
        Perturbations to score; default every adversarial one of attacks on ``model`` and every
        benign one in ``adata``.
    triplet_epochs, detector_epochs, patience, batch_size, lr, triplet_margin
        Training of the triplet method's two networks.
    model
        The classifier to protect: the key of a stored classifier of any kind, or a
        :class:`scadv.models.Model` / CellTypist model object (registered in ``adata`` first,
        see :func:`scadv.tl.pgd`). The features are its own: the ``embedding`` is the last
        hidden layer of a network, the logits of a linear model. A model object needs a split
        of its own: store it with ``scadv.tl.add_model(..., split_key=...)`` first.
    key_added
        Name of the detector; decides the keys below (``'meta'`` by default).
    seed
        Seeds every fit and the sampling of triplets, batches and down-sampled counts.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show progress bars.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes (``k`` = ``key_added``):

    ``adata.obs['scadv_<k>_score']``, ``adata.obs['scadv_<k>_flag']``
        Every cell's detector score (the method's probability, 1 where the realism gate fires)
        and whether it is flagged (``score ≥ threshold``).
    ``adata.obs['<layer>_<k>_score']``, ``adata.obs['<layer>_<k>_flag']``
        The same for each scored perturbation (NaN for cells it did not change).
    ``adata.uns['scadv'][k]``
        The detector as plain arrays (``method``, its fitted parts: ``consistency``, the
        triplet networks or ``logreg_fit``; ``threshold`` and ``thresholds`` of every method;
        the realism ``gate``; fitted ``baselines``), ``calibration`` (the conformal threshold:
        ``n`` validation cells, ``expected_fpr_bound``, ``fpr_95``, ``reliable``),
        ``validation`` (per method, on validation cells: AUROC and the fraction of attacked
        cells flagged at its threshold — what the default method was chosen on), ``training``,
        ``history``, ``evaluation`` (per perturbation, test cells only, at the stored
        threshold: ``flagged`` successful attacks, ``flagged_all`` attacked cells,
        ``clean_flagged`` clean cells, benign ``flag_rate``; then AUROC and the
        test-calibrated ``test_tpr_at_1fpr`` / ``test_tpr_at_5fpr``, secondary), ``table``
        (the same as a DataFrame, one row per perturbation and method) and ``provenance``.

    Notes
    -----
    Results are reproducible for a given seed, device and CPU thread count. With several CPU
    threads the last bits of matrix products depend on the thread count, and the attacks and
    training inside can turn that into a different result for a few cells (measured on PBMC3k:
    identical at 1, 2 and 4 threads; at 8 threads 0.4% of the attacked cells moved by up to
    0.05). Fix the count (``torch.set_num_threads``) for bit-identical reruns; each step records
    it in its ``provenance`` (``cpu_threads``). See the usage page, "Safety and
    reproducibility".
    """
    V.options(locals())
    V.choice("attack", attack, (None, "counts", *DEFAULT_EPS))
    V.choice("method", method, tuple(MC.MAIN_METHODS))
    V.choice("fusion", fusion, CO.FUSIONS)
    V.nonneg_int("adaptive_rounds", adaptive_rounds)
    V.positive_int("budget", budget)
    V.positive_int("steps", steps)
    if max_cells is not None:
        V.positive_int("max_cells", max_cells)
    V.choice("positives", positives, ("flipped", "all"))
    V.names("features", features)
    V.choice("threshold", threshold, ("youden", "fpr"))
    V.fraction("target_fpr", target_fpr)
    V.flag("input_check", input_check)
    V.flag("baselines", baselines)
    V.names("layers", layers, allow_none=True, allow_empty=True)
    V.nonneg_int("triplet_epochs", triplet_epochs)
    V.positive_int("detector_epochs", detector_epochs)
    V.positive_int("patience", patience)
    V.positive("lr", lr)
    V.positive("triplet_margin", triplet_margin)
    V.model_spec("model", model)
    start = logg.info(f"training scadv meta-detector {key_added!r}")
    params = P.call_params(locals(), meta_detect)
    groups = MF.check_groups(features)
    _check_options(method=method, attack=attack, positives=positives, threshold=threshold,
                   target_fpr=target_fpr, steps=steps, budget=budget, fusion=fusion)
    options = DT.TrainOptions(triplet_epochs=int(triplet_epochs),
                              triplet_margin=float(triplet_margin),
                              detector_epochs=int(detector_epochs), patience=int(patience),
                              batch_size=int(batch_size), lr=float(lr))
    DT.check_options(options)
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    resolved = RS.resolve(adata, model, dev)
    record, net, model = resolved.record, resolved.net, resolved.key
    src = R.source(adata, record["prepare"], what="adata")
    counts_model = str(record["prepare"].get("input_kind", "")) == "counts" and bool(
        np.asarray(record["prepare"].get("has_stats", False)))
    if attack is None:
        attack = "counts" if src.kind == "counts" and counts_model else "pgd_realistic"
    elif attack == "counts" and src.kind != "counts":
        raise ScadvInputError(
            f"attack='counts' edits raw counts, but the model input of adata comes from "
            f"{src.label} ({src.kind}). Pass the AnnData with its raw counts, or "
            "attack='pgd_realistic'.")
    if attack == "counts" and eps is not None:
        A.check_budget(eps, norm="linf", loss="margin", steps=steps, n_restarts=1, alpha=None)
        logg.warning("meta_detect: eps sets the budgets of the z-space training attacks; the "
                     f"count-space attack (attack='counts') edits up to budget={budget} UMIs "
                     "and does not use it. Pass attack='pgd_realistic' to train on eps.")
    eps_t = (() if attack == "counts" else A.check_budget(
        DEFAULT_EPS[attack] if eps is None else eps, norm="linf", loss="margin", steps=steps,
        n_restarts=1, alpha=None))
    classes = [str(c) for c in np.asarray(record["classes"])]
    split = _split(adata, record, model)
    label_key = str(record.get("label_key", ""))
    y = (C.class_index(V.labels(adata, label_key), classes) if label_key in adata.obs
         else np.full(adata.n_obs, -1))
    train = (split == K.SPLIT_TRAIN) & (y >= 0)
    val = split == K.SPLIT_VAL
    available = {"n_train_cells_available": int(train.sum()),
                 "n_val_cells_available": int(val.sum())}
    train = _at_most(train, max_cells, seed, "train")
    val = _at_most(val, max_cells, seed, "val")
    score_layers = MC.find_layers(adata, model, layers)
    recipe = record["prepare"]
    want = {method} | (set(MC.MAIN_METHODS) if baselines else set())
    fits = _Fits(groups=groups if want & {"triplet", "logreg"} or baselines else ())

    # 1. what needs only clean training cells: the twin (cross-fitted), PCA, Mahalanobis
    tr_idx = np.flatnonzero(train)
    x_train = src.dense(tr_idx, what="the detector's training cells")
    if "consistency" in want:
        r = CO.twin_inputs(x_train, recipe)
        fits.twins, fold = CO.cross_fit(r, y[train], len(classes), seed)
        fits.twin = CO.fit_twin(r, y[train], len(classes), seed)
        fits.fold = np.full(adata.n_obs, -1)
        fits.fold[tr_idx] = fold
        del r
    if baselines:
        fits.pca = B.fit_pca(x_train * np.asarray(recipe["std"], np.float32)
                             + np.asarray(recipe["mean"], np.float32))
        if "embedding" in groups:
            emb = M.infer(net, x_train, device=dev)[0]
            fits.maha = B.fit_mahalanobis(emb, y[train], len(classes))
    del x_train
    gate = G.gate_arrays(recipe)

    # 2. attack training and validation cells; keep per row only what the methods read
    logg.info(f"    attacking {int(train.sum())} training and {int(val.sum())} validation "
              f"cells ({attack}" + (f", ε = {', '.join(K.format_eps(e) for e in eps_t)})"
                                    if eps_t else f", up to {int(budget)} UMIs)"))
    cells = np.flatnonzero(train | val)
    got = _collect(src, record, net, cells, train[cells], fits, gate, attack=attack,
                   eps=eps_t, budget=int(budget), steps=int(steps), seed=seed, device=dev,
                   progress=progress, downsample="consistency" in want and src.kind == "counts",
                   lib_range=_library_range(adata, cells))
    local_train = train[cells]
    take = got.flipped if positives == "flipped" else np.ones_like(got.flipped)
    tr_rows, va_rows = take & local_train[None, :], take & ~local_train[None, :]
    n_tr, n_va = int(tr_rows.sum()), int(va_rows.sum())
    if n_tr < MIN_TRAIN_POSITIVES or n_va < MIN_VAL_POSITIVES:
        raise ScadvInputError(
            f"the training attack succeeded on only {n_tr} training and {n_va} validation rows "
            f"(need {MIN_TRAIN_POSITIVES} and {MIN_VAL_POSITIVES}): raise eps or budget, or "
            "pass positives='all'.")
    source_row = np.broadcast_to(np.arange(len(cells)), take.shape)
    cls = y[cells][local_train]

    # 3. fit the methods on training rows
    det_record: dict[str, Any] = {
        "kind": DT.DETECTOR_KIND, "format_version": DT.FORMAT_VERSION, "model": model,
        "classifier_fingerprint": MC.fingerprint(record),
        "classifier_fingerprint_version": MC.FINGERPRINT_VERSION, "classes": classes,
        "method": method, "features": list(groups),
        "feature_names": MF.names(groups, classes, _embed_dim(record)) if groups else [],
    }
    history: dict[str, Any] = {}
    if "consistency" in want and fits.twin is not None:
        neg = [got.clean["views"][local_train]]
        if got.down is not None:
            neg.append(got.down.reshape(-1, got.down.shape[-1]))
        negatives, pos = np.vstack(neg), got.adv["views"][tr_rows]
        fused = CO.fit_fusion(negatives, pos, seed)
        n_adaptive = 0
        if fusion == "or":  # no weights learnt on attacks: each view's own conformal limit
            fused = {**fused, **CO.fit_or(got.clean["views"][~local_train], float(target_fpr))}
        elif attack == "counts":  # next rounds: the training cells' attacks on the last fit
            found = [pos]
            for round_ in range(int(adaptive_rounds)):
                adaptive = _adaptive_round(src, net, recipe, tr_idx, fits, fused, gate,
                                           negatives, budget=int(budget), seed=seed + round_,
                                           device=dev, lib_range=_library_range(adata, cells),
                                           progress=progress)
                if not len(adaptive):
                    break
                n_adaptive += len(adaptive)
                found.append(adaptive)
                fused = CO.fit_fusion(negatives, np.vstack(found), seed)
        det_record["consistency"] = {**CO.record(fits.twin, fused),
                                     "fusion": str(fusion),
                                     "n_adaptive_positives": n_adaptive}
    if "triplet" in want:
        to_train_row = np.full(len(cells), -1)
        to_train_row[np.flatnonzero(local_train)] = np.arange(int(local_train.sum()))
        nets, history = DT.fit(
            got.clean["f"][local_train], cls, got.adv["f"][tr_rows],
            to_train_row[source_row[tr_rows]], got.clean["f"][~local_train],
            got.adv["f"][va_rows], shape=DT.Shape(n_features=got.clean["f"].shape[1]),
            options=options, seed=seed, device=dev, progress=progress)
        det_record.update(nets.to_record())
    if "logreg" in want:
        det_record["logreg_fit"] = B.fit_logreg(got.clean["f"][local_train],
                                                got.adv["f"][tr_rows], seed)
    base: dict[str, Any] = {}
    if fits.maha is not None:
        base["mahalanobis"] = fits.maha
    if fits.pca is not None:
        base["pca"] = fits.pca
    det_record["baselines"] = base

    # 4. the realism gate, then thresholds of every method on the validation cells
    lattice_fail = float((got.clean["lattice"] > 0).mean())
    gate["check_lattice"] = bool(gate["check_lattice"]) and lattice_fail <= 1 - G.MIN_CLEAN_PASS
    viol = got.clean["zero"] + (got.clean["lattice"] if gate["check_lattice"] else 0)
    gate.update(enabled=bool(input_check), max_violations=int(viol.max(initial=0)),
                clean_lattice_failing=lattice_fail)
    det_record["gate"] = gate
    det_record["threshold"] = 0.0  # set below; Loaded needs the key
    det = MC.Loaded.build(det_record, record, dev, net)
    s_val = _val_scores(det, got, local_train, va_rows)
    calibration: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    for name, (s0, s1) in s_val.items():
        cal = MC.calibrate(s0, s1, method=threshold, target_fpr=target_fpr)
        thresholds[name] = float(cal["threshold"])
        calibration[name] = cal
        validation[name] = _val_metrics(s0, s1, float(cal["threshold"]))
    if "consistency" in calibration and fusion == "or":  # Bonferroni: flagged iff any view is
        cons = det_record["consistency"]
        fpr_95 = float(np.sum(cons["or_fpr_95"]))
        ranks_ok = bool((np.asarray(cons["or_rank"]) <= int(cons["or_n"])).all())
        thresholds["consistency"] = 0.5  # the OR's logit 0: one view at its own threshold
        calibration["consistency"] = {
            **calibration["consistency"], "threshold": 0.5, "rule": "bonferroni",
            "expected_fpr_bound": float(target_fpr), "fpr_95": fpr_95,
            "reliable": ranks_ok and fpr_95 <= MC.UNRELIABLE_FACTOR * float(target_fpr)}
        validation["consistency"] = _val_metrics(*s_val["consistency"], 0.5)
    main_cal = calibration[method]
    if det.gate is not None:  # the stored detector itself: the method, 1 where the gate fires
        s0, s1 = s_val[method]
        fires0, fires1 = _gate_fires(got, local_train, va_rows, gate)
        validation["detector"] = _val_metrics(np.where(fires0, 1.0, s0),
                                              np.where(fires1, 1.0, s1), thresholds[method])
    if not main_cal["reliable"]:
        logg.warning(
            f"only {main_cal['n']} validation cells calibrate the threshold: at "
            f"target_fpr={target_fpr:g} its false-positive rate on new clean cells may exceed "
            f"{MC.UNRELIABLE_FACTOR * target_fpr:g} (95% bound {main_cal['fpr_95']:.3f})"
            + ("; with so few cells no threshold can promise it, so nothing is flagged"
               if not np.isfinite(main_cal["threshold"]) else "")
            + ". Keep more validation cells (scadv.tl.train_classifier(val_size=...)) or raise "
              "target_fpr.")
    det_record.update(
        threshold=thresholds[method], thresholds=thresholds, threshold_method=threshold,
        target_fpr=float(target_fpr), calibration={**main_cal, "per_method": calibration},
        validation=validation)
    det_record["training"] = {
        "attack": attack, "eps": np.asarray(eps_t, dtype=float), "budget": int(budget),
        "count_margins": np.asarray(COUNT_MARGINS), "steps": int(steps),
        "positives": positives, "downsampled_negatives": np.asarray(
            DOWNSAMPLE if got.down is not None else (), dtype=float),
        "n_train_cells": int(train.sum()), "n_val_cells": int(val.sum()),
        **available, "max_cells": -1 if max_cells is None else int(max_cells),
        "adaptive_rounds": int(adaptive_rounds),
        "n_train_adversarial": n_tr, "n_val_adversarial": n_va,
        "train_flip_rate": got.flipped[:, local_train].mean(axis=1),
        "val_flip_rate": got.flipped[:, ~local_train].mean(axis=1),
        "calibrated_on": "the classifier's validation split",
    }
    det_record["history"] = history
    det_record["provenance"] = P.record(params, seed=seed, device=dev)

    # 5. score everything, evaluate on the test split
    det = MC.Loaded.build(det_record, record, dev, net)
    obs, evaluation, note = MC.score_adata(adata, det, key=key_added, layers=score_layers,
                                           src=src, test=split == K.SPLIT_TEST,
                                           progress=progress, device=device)
    det_record["evaluation"] = evaluation
    det_record["table"] = MC.table(evaluation)
    det_record["scored"] = note
    n_flag = int(np.asarray(obs[K.meta_flag(key_added)] == True).sum())  # noqa: E712
    write_results(
        adata, step=f"meta-detector {method!r} (validation AUROC "
                    f"{validation[method]['auroc']:.3f}; {n_flag} of {adata.n_obs} clean cells "
                    f"flagged; {len(score_layers)} perturbations scored)",
        start=start, uns={key_added: det_record}, obs=obs,
        colors={col: [A.UNCHANGED_COLOR, A.FLIPPED_COLOR] for col in obs
                if col.endswith("_flag")},
    )
    return adata if copy else None


def _at_most(mask: np.ndarray, n: int | None, seed: int, name: str) -> np.ndarray:
    """``mask`` with at most ``n`` cells left, drawn at random (seeded by ``seed`` and
    ``name``)."""
    idx = np.flatnonzero(mask)
    if n is None or len(idx) <= n:
        return mask
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    out = np.zeros_like(mask)
    out[np.sort(rng.choice(idx, size=int(n), replace=False))] = True
    return out


def _check_options(*, method: str, attack: str | None, positives: str, threshold: str,
                   target_fpr: float, steps: int, budget: int, fusion: str = "logistic"
                   ) -> None:
    problems = []
    if method not in MC.MAIN_METHODS:
        problems.append(f"method must be one of {list(MC.MAIN_METHODS)}, got {method!r}")
    if attack is not None and attack not in (*DEFAULT_EPS, "counts"):
        problems.append(f"attack must be one of {['counts', *DEFAULT_EPS]} or None, got "
                        f"{attack!r}")
    if positives not in ("flipped", "all"):
        problems.append(f"positives must be 'flipped' or 'all', got {positives!r}")
    if threshold not in ("youden", "fpr"):
        problems.append(f"threshold must be 'fpr' or 'youden', got {threshold!r}")
    if not 0 < float(target_fpr) < 1:
        problems.append(f"target_fpr must be in (0, 1), got {target_fpr}")
    if int(steps) < 1:
        problems.append(f"steps must be ≥ 1, got {steps}")
    if int(budget) < 1:
        problems.append(f"budget must be ≥ 1 UMI, got {budget}")
    if fusion == "or" and threshold != "fpr":
        problems.append("fusion='or' sets its threshold from target_fpr (a conformal "
                        "threshold per view); pass threshold='fpr'")
    if problems:
        raise ScadvInputError("; ".join(problems) + ".")


def _split(adata: AnnData, record: Mapping[str, Any], model: str) -> np.ndarray:
    col = C.split_column(record, model)
    if col not in adata.obs:
        raise ScadvInputError(
            f"scadv.tl.meta_detect needs the classifier's split obs[{col!r}] (train / val / "
            "test), written by scadv.tl.train_classifier: the detector is trained on training "
            "cells, calibrated on validation cells and evaluated on test cells."
        )
    split = adata.obs[col].astype(str).to_numpy()
    for name in (K.SPLIT_TRAIN, K.SPLIT_VAL):
        if not (split == name).any():
            raise ScadvInputError(f"no cell has obs[{col!r}] == {name!r}; the detector needs "
                                  "training and validation cells.")
    return split


def _embed_dim(record: Mapping[str, Any]) -> int:
    arch = record.get("arch", {})
    hidden = np.atleast_1d(np.asarray(arch.get("hidden", [64]))) if isinstance(arch, Mapping) \
        else np.asarray([64])
    return int(hidden[-1])


def _library_range(adata: AnnData, cells: np.ndarray) -> tuple[float, float] | None:
    if K.LIBRARY_SIZE not in adata.obs:
        return None
    lib = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)[cells]
    lib = lib[np.isfinite(lib)]
    return (float(lib.min()), float(lib.max())) if len(lib) else None


@dataclass
class _Fits:
    """What is fitted on clean training cells before the attack pass."""

    groups: tuple[str, ...]
    twins: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    twin: tuple[np.ndarray, np.ndarray] | None = None
    fold: np.ndarray | None = None
    pca: dict[str, Any] | None = None
    maha: dict[str, Any] | None = None


@dataclass
class _Collected:
    """Per attacked cell (``n``) and attacked version (``v``): what the methods read."""

    clean: dict[str, np.ndarray]  # per key: (n, ...)
    adv: dict[str, np.ndarray]  # per key: (v, n, ...)
    flipped: np.ndarray  # (v, n)
    down: np.ndarray | None  # (len(DOWNSAMPLE), n_train, 3): views of down-sampled cells


def _rows_of(src: R.Source, counts: sparse.spmatrix, lib: np.ndarray) -> np.ndarray:
    """Model input of model-gene counts with library sizes ``lib`` (missing genes at their
    training mean), exactly as the source computes it."""
    lognorm = R.lognormalize(counts, target_sum=float(src.recipe["target_sum"]),
                             library_size=lib)
    dense = V.dense(lognorm)
    if src.missing.any():
        dense[:, src.missing] = np.asarray(src.recipe["mean"], np.float32)[src.missing]
    return R.lognorm_to_model(dense, src.recipe)


def _features(x: np.ndarray, fold: np.ndarray, net: torch.nn.Module, recipe: Mapping[str, Any],
              fits: _Fits, gate: Mapping[str, Any], *, device: torch.device
              ) -> dict[str, np.ndarray]:
    """Everything the methods read of rows ``x`` (``fold``: each row's twin fold, -1: the
    twin fitted on all training cells)."""
    out: dict[str, np.ndarray] = {}
    if fits.twin is not None:
        module = CO.Consistency(net, recipe, CO.record(fits.twin, _NO_FUSION))
        views = np.empty((len(x), len(CO.VIEWS)))
        for k in np.unique(fold):
            rows = fold == k
            twin = fits.twin if k < 0 else fits.twins[int(k)]
            views[rows] = CO.views_np(module, x[rows], twin=twin, device=device)
        out["views"] = views
    if fits.groups:
        f, _, emb = MF.compute(net, x, fits.groups, device=device)
        out["f"] = f
        if fits.maha is not None:
            out["mahalanobis"] = B.score_mahalanobis(fits.maha, emb)
    if fits.pca is not None:
        out["pca"] = B.score_pca(fits.pca, x * np.asarray(recipe["std"], np.float32)
                                 + np.asarray(recipe["mean"], np.float32))
    out["zero"] = G.violations({**gate, "check_lattice": False}, x)
    out["lattice"] = G.violations({**gate, "check_zero": False}, x)
    return out


_NO_FUSION = {"feature_mean": np.zeros(len(CO.VIEWS), np.float32),
              "feature_scale": np.ones(len(CO.VIEWS), np.float32),
              "coef": np.zeros(len(CO.VIEWS), np.float32), "intercept": 0.0}


def _collect(src: R.Source, record: Mapping[str, Any], net: torch.nn.Module, cells: np.ndarray,
             is_train: np.ndarray, fits: _Fits, gate: Mapping[str, Any], *, attack: str,
             eps: tuple[float, ...], budget: int, steps: int, seed: int, device: torch.device,
             progress: bool, downsample: bool, lib_range: tuple[float, float] | None
             ) -> _Collected:
    """Attack the cells at positions ``cells`` and keep, per cell and version, only what the
    methods read (never the attacked matrices of all cells at once)."""
    recipe = record["prepare"]
    budget_z = None
    if attack == "fgsm":
        budget_z = A.Budget(eps=eps, norm="linf", alpha=eps, steps=1, random_start=False,
                            n_restarts=1, loss="ce")
    elif attack != "counts":
        budget_z = A.Budget(eps=eps, norm="linf", alpha=tuple(2.5 * e / steps for e in eps),
                            steps=steps, random_start=False, n_restarts=1, loss="margin")
    realistic = attack == "pgd_realistic"
    rng = np.random.default_rng(seed)
    clean_parts: list[dict[str, np.ndarray]] = []
    adv_parts: list[list[dict[str, np.ndarray]]] = []
    flip_parts, down_parts = [], []
    fold_all = fits.fold if fits.fold is not None else np.full(int(cells.max(initial=0)) + 1, -1)
    for n_chunk, lo in enumerate(range(0, len(cells), A.ATTACK_CHUNK)):
        idx = cells[lo:lo + A.ATTACK_CHUNK]
        fold = fold_all[idx]
        x0 = src.rows(idx)
        pred = M.infer(net, x0, device=device)[1].argmax(axis=1)
        clean_parts.append(_features(x0, fold, net, recipe, fits, gate, device=device))
        versions: list[np.ndarray] = []
        if attack == "counts":
            counts, lib = src.counts(idx)
            for kappa in COUNT_MARGINS:
                res = CS.search(CS.margin_objective(net, pred, kappa=kappa, device=device),
                                counts, lib, recipe, budget=budget, library_range=lib_range,
                                device=device, progress=progress)
                versions.append(res.x)
            if downsample:
                t = is_train[lo:lo + len(idx)]
                kept = sparse.csr_matrix(counts[t])
                rest = lib[t] - np.asarray(kept.sum(axis=1), dtype=np.float64).ravel()
                views = []
                for frac in DOWNSAMPLE:
                    thin = kept.copy()
                    thin.data = rng.binomial(thin.data.astype(np.int64), frac).astype(np.float32)
                    lib_thin = (np.asarray(thin.sum(axis=1), dtype=np.float64).ravel()
                                + rng.binomial(np.rint(rest).astype(np.int64), frac))
                    ok = lib_thin > 0
                    xt = _rows_of(src, thin[ok], lib_thin[ok])
                    v = _features(xt, fold[t][ok], net, recipe,
                                  _Fits(groups=(), twins=fits.twins, twin=fits.twin), gate,
                                  device=device)["views"]
                    full = np.full((len(ok), len(CO.VIEWS)), np.nan)
                    full[ok] = v
                    views.append(full)
                down_parts.append(np.stack(views))
        elif budget_z is not None:
            cons, _ = A.constraints(src, record, idx, x0, genes=None,
                                    clip="observed" if realistic else None,
                                    keep_zeros=realistic)
            adv, _ = E.run(net, x0, pred, budget_z, cons, targeted=False, device=device,
                           seed=seed + 1_000_003 * n_chunk, batch_size=256, progress=progress)
            versions = list(adv)
        adv_parts.append([_features(xa, fold, net, recipe, fits, gate, device=device)
                          for xa in versions])
        flip_parts.append(np.stack([M.infer(net, xa, device=device)[1].argmax(axis=1) != pred
                                    for xa in versions]))
        del versions, x0
    keys = clean_parts[0].keys()
    clean = {k: np.concatenate([p[k] for p in clean_parts]) for k in keys}
    adv_rows = {k: np.stack([np.concatenate([p[v][k] for p in adv_parts])
                             for v in range(len(adv_parts[0]))]) for k in keys}
    down = None
    if down_parts:
        down = np.concatenate(down_parts, axis=1)
        down = down[:, np.isfinite(down).all(axis=(0, 2))]
    return _Collected(clean=clean, adv=adv_rows, flipped=np.concatenate(flip_parts, axis=1),
                      down=down)


def _adaptive_round(src: R.Source, net: torch.nn.Module, recipe: Mapping[str, Any],
                    tr_idx: np.ndarray,
                    fits: _Fits, fusion: Mapping[str, Any], gate: Mapping[str, Any],
                    negatives: np.ndarray, *, budget: int, seed: int, device: torch.device,
                    lib_range: tuple[float, float] | None, progress: bool) -> np.ndarray:
    """Views of training cells attacked in count space by an attacker who queries the first
    fused detector (λ = 1): the positives of its second fit. At most ``ADAPTIVE_CELLS`` cells;
    the attacker's threshold is the detector's 95% quantile on the clean training rows."""
    if fits.twin is None or fits.fold is None:
        return np.empty((0, len(CO.VIEWS)))
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(tr_idx, size=min(ADAPTIVE_CELLS, len(tr_idx)), replace=False))
    module = CO.Consistency(net, recipe, CO.record(fits.twin, fusion)).to(device).eval()
    module.requires_grad_(False)
    mean, scale = np.asarray(fusion["feature_mean"]), np.asarray(fusion["feature_scale"])
    logits = ((negatives - mean) / scale) @ np.asarray(fusion["coef"]) + fusion["intercept"]
    threshold = float(np.quantile(logits, 0.95))
    counts, lib = src.counts(cells)
    pred = M.infer(net, src.rows(cells), device=device)[1].argmax(axis=1)
    res = CS.search(CS.evading_objective(net, module, threshold, pred, lam=1.0,
                                         device=device),
                    counts, lib, recipe, budget=budget, library_range=lib_range, device=device,
                    progress=progress)
    won = res.success
    if not won.any():
        return np.empty((0, len(CO.VIEWS)))
    return _features(res.x[won], fits.fold[cells][won], net, recipe,
                     _Fits(groups=(), twins=fits.twins, twin=fits.twin), gate,
                     device=device)["views"]


def _val_metrics(s0: np.ndarray, s1: np.ndarray, thr: float) -> dict[str, float]:
    return {"auroc": MC.auroc(s0, s1), "flagged": float((s1 >= thr).mean()) if len(s1)
            else float("nan"), "clean_flagged": float((s0 >= thr).mean())}


def _gate_fires(got: _Collected, local_train: np.ndarray, va_rows: np.ndarray,
                gate: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    lattice = bool(np.asarray(gate["check_lattice"]))
    limit = int(np.asarray(gate["max_violations"]))

    def count(d: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        return d["zero"][rows] + (d["lattice"][rows] if lattice else 0)
    return count(got.clean, ~local_train) > limit, count(got.adv, va_rows) > limit


def _val_scores(det: MC.Loaded, got: _Collected, local_train: np.ndarray, va_rows: np.ndarray
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, the scores of the clean validation cells and of their successful attacks
    (the same convention as :meth:`MC.Loaded.scores`: higher is more suspicious)."""
    val = ~local_train
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def both(get: Any) -> tuple[np.ndarray, np.ndarray]:
        return get(got.clean, val), get(got.adv, va_rows)

    if det.consistency is not None:
        mod = det.consistency

        def fused(d: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
            return MC._sigmoid(mod.fuse_np(d["views"][rows]))
        out["consistency"] = both(fused)
        out["margin"] = both(lambda d, rows: -d["views"][rows][:, 0])
        out["squeeze"] = both(lambda d, rows: d["views"][rows][:, 1])
        out["twin"] = both(lambda d, rows: d["views"][rows][:, 2])
    if det.nets is not None:
        nets = det.nets
        out["triplet"] = both(lambda d, rows: MC._sigmoid(nets.logit(d["f"][rows],
                                                                     device=det.device)))
    if isinstance(det.record.get("logreg_fit"), Mapping):
        lr = det.record["logreg_fit"]
        out["logreg"] = both(lambda d, rows: B.score_logreg(lr, d["f"][rows]))
    for name in ("mahalanobis", "pca"):
        if name in got.clean:
            out[name] = both(lambda d, rows, n=name: d[n][rows])
    gate = det.gate
    if gate is not None:
        lattice = bool(np.asarray(gate["check_lattice"]))
        out["input"] = both(lambda d, rows: (d["zero"][rows] + (d["lattice"][rows] if lattice
                                                                 else 0)).astype(np.float64))
    return out
