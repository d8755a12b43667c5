"""``scadv.tl.meta_detect``: a detector of manipulated cells, on the classifier's own signals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scanpy.logging as logg
import torch
from anndata import AnnData
from torch import nn

from ... import _detector as DT
from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _parallel as PAR
from ... import _provenance as P
from ... import _recipe as R
from ... import _rows as RW
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from .. import _common as C
from .._attacks import _attack as A
from .._attacks import _engine as E
from .._models import _resolve as RS
from . import _baselines as B
from . import _common as MC
from . import _features as MF

TrainAttack = Literal["pgd", "fgsm", "pgd_realistic"]
DEFAULT_EPS = {"pgd": (0.05, 0.1, 0.15), "fgsm": (0.05, 0.1, 0.15),
               "pgd_realistic": (0.3, 0.5, 1.0)}
#: Fewest successful adversarial training / validation rows the detector accepts.
MIN_TRAIN_POSITIVES = 20
MIN_VAL_POSITIVES = 5


def meta_detect(
    adata: AnnData,
    *,
    attack: TrainAttack = "pgd",
    eps: float | Sequence[float] | None = None,
    steps: int = 10,
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
    """Train a meta-detector that flags manipulated cells, calibrate it, score and evaluate.

    The detector never sees expression directly: it reads the stored classifier's own signals
    per cell (see ``features``), computed from the class the model *predicts*, so true labels
    are never used at inference. Training follows the brief's recipe:

    1. **Adversarial training data from training cells only.** The classifier's training
       split (``obs['scadv_split'] == 'train'``) is attacked with ``attack`` at every budget
       in ``eps``. By default only successful attacks (the prediction flipped) are positives.
    2. **Triplet network** (meta-features → 256 → ReLU → 64, L2-normalised), triplet margin
       loss: anchor and positive are clean training cells of one class, the negative is an
       adversarial version of the anchor (else of a cell of its class).
    3. **Detector** (64 → 128, two residual blocks, → 1 logit) on the frozen triplet
       embedding, BCE on balanced clean / adversarial rows, early-stopped on the validation
       split.
    4. **Threshold** from the ROC on the classifier's *validation* cells (clean, and attacked
       the same way): Youden's J or a target false-positive rate.
    5. **Realism gate** (``input_check``): a cell holding values no measured cell can have
       (below a gene's zero level, between zero and one count, outside the observed range) is
       flagged whatever the detector says. Unconstrained attacks move every gene and are all
       caught by it; attacks that respect the data pass it and meet the detector.
    6. **Scoring and evaluation.** Clean cells and every adversarial layer of this classifier
       (from :func:`scadv.tl.pgd`, :func:`scadv.tl.fgsm`, :func:`scadv.tl.adaptive_pgd`) and
       every benign layer (:func:`scadv.tl.benign_perturb`) present are scored; the
       evaluation uses *test-split* cells only, per attack and budget, for the detector and
       the baselines side by side.

    Parameters
    ----------
    adata
        Prepared, with a stored classifier (:func:`scadv.tl.train_classifier`), in the
        model's input space.
    attack
        Attack that makes the training (and calibration) adversarial examples: ``'pgd'``
        (L∞, margin loss, α = 2.5·ε/steps, early stop: :func:`scadv.tl.pgd`'s defaults),
        ``'fgsm'``, or ``'pgd_realistic'`` (PGD that keeps zeros at zero and every gene in its
        observed range).
    eps
        Training budgets; default ``(0.05, 0.1, 0.15)``, or ``(0.3, 0.5, 1.0)`` for
        ``'pgd_realistic'``.
    steps
        PGD steps.
    positives
        ``'flipped'`` (default): adversarial rows whose prediction the attack changed;
        ``'all'``: every attacked row.
    features
        Meta-feature groups: any of ``'embedding'`` (64-d last hidden layer), ``'logits'``,
        ``'softmax'``, ``'margin'`` (top-1 − top-2 logit), ``'entropy'``, ``'grad'`` (mean,
        variance and L2 norm over genes of the absolute input gradient of the cross-entropy
        of the predicted class). Default: all.
    threshold
        ``'fpr'`` (default): the threshold whose false-positive rate on clean validation cells
        is at most ``target_fpr``; ``'youden'``: the point of the validation ROC maximising
        TPR − FPR.
    target_fpr
        False-positive rate for ``threshold='fpr'``.
    input_check
        Use the realism gate (default). Its limit (the most impossible values a cell may
        hold) is the largest count among clean training and validation cells plus
        ``max(3, 0.5%`` of the genes``)``.
    baselines
        Also fit and evaluate the comparisons: logistic regression on the raw meta-features,
        the detector without gradient features, Mahalanobis distance on the embedding, and
        the input-space statistic alone.
    layers
        Layers to score; default every adversarial layer of attacks on ``model`` and every
        benign layer in ``adata``.
    triplet_epochs, detector_epochs, patience, batch_size, lr, triplet_margin
        Training of the two networks (AdamW; early stopping of the detector after
        ``patience`` epochs without a lower validation loss).
    model
        The classifier to protect: the key of a stored classifier of any kind, or a
        :class:`scadv.models.Model` / CellTypist model object (registered in ``adata`` first,
        see :func:`scadv.tl.pgd`). The features are its own: the ``embedding`` is the last
        hidden layer of a network, the logits of a linear model. A model object needs a split
        of its own: store it with ``scadv.tl.add_model(..., split_key=...)`` first.
    key_added
        Name of the detector; decides the keys below (``'meta'`` by default).
    seed
        Seeds the networks and the sampling of triplets and batches.
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
        Every cell's detector score (the meta-detector's probability, 1 where the realism
        gate fires) and whether it is flagged (``score ≥ threshold``).
    ``adata.obs['<layer>_<k>_score']``, ``adata.obs['<layer>_<k>_flag']``
        The same for each scored layer, e.g. ``scadv_pgd_eps0.1_meta_score`` (NaN for cells
        the layer did not change).
    ``adata.uns['scadv'][k]``
        The detector as plain arrays (both networks, feature standardisation, ``features``,
        ``threshold``, the realism ``gate``, fitted ``baselines``), ``training`` (attack,
        budgets, rows used, flip rates), ``history``, ``calibration`` (validation metrics),
        ``evaluation`` (per layer, test cells only: AUROC, TPR at 1% and 5% FPR,
        precision / recall / F1, clean and adversarial detection rates, confusion matrix
        ``[[TN, FP], [FN, TP]]``, for the detector and every baseline; benign layers: flag
        rate), ``table`` (the same as a printable DataFrame, one row per layer and method)
        and ``provenance``.

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
    V.choice("attack", attack, tuple(DEFAULT_EPS))
    V.positive_int("steps", steps)
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
    _check_options(attack=attack, positives=positives, threshold=threshold,
                   target_fpr=target_fpr, steps=steps)
    eps_t = A.check_budget(DEFAULT_EPS[attack] if eps is None else eps, norm="linf",
                           loss="margin", steps=steps, n_restarts=1, alpha=None)
    options = DT.TrainOptions(triplet_epochs=int(triplet_epochs),
                              triplet_margin=float(triplet_margin),
                              detector_epochs=int(detector_epochs), patience=int(patience),
                              batch_size=int(batch_size), lr=float(lr))
    DT.check_options(options)
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    resolved = RS.resolve(adata, model, dev)
    record, net, model = resolved.record, resolved.net, resolved.key
    classes = [str(c) for c in np.asarray(record["classes"])]
    split = _split(adata, record, model)
    label_key = str(record.get("label_key", ""))
    y = (C.class_index(V.labels(adata, label_key), classes) if label_key in adata.obs
         else np.full(adata.n_obs, -1))
    train = (split == K.SPLIT_TRAIN) & (y >= 0)
    val = split == K.SPLIT_VAL
    score_layers = MC.find_layers(adata, model, layers)

    src = R.source(adata, record["prepare"], what="adata")
    gate = B.gate_arrays(adata, record["prepare"])

    # 1. adversarial examples of training and validation cells, reduced to what the detector
    #    needs (meta-features, realism-gate counts) a chunk of cells at a time
    logg.info(f"    attacking {int(train.sum())} training and {int(val.sum())} validation "
              f"cells ({attack}, ε = {', '.join(K.format_eps(e) for e in eps_t)})")
    cells = train | val
    got = _collect(src, record, resolved.module, np.flatnonzero(cells), groups, gate,
                   attack=attack,
                   eps=eps_t, steps=int(steps), seed=seed, device=device, progress=progress)
    flipped = got.flipped
    local_train = train[cells]
    take = flipped if positives == "flipped" else np.ones_like(flipped)
    f_cells, emb_cells, f_adv = got.f_clean, got.emb, got.f_adv
    source = np.broadcast_to(np.arange(cells.sum()), take.shape)
    tr_rows = take & local_train[None, :]
    va_rows = take & ~local_train[None, :]
    n_tr, n_va = int(tr_rows.sum()), int(va_rows.sum())
    if n_tr < MIN_TRAIN_POSITIVES or n_va < MIN_VAL_POSITIVES:
        raise ScadvInputError(
            f"the training attack succeeded on only {n_tr} training and {n_va} validation rows "
            f"(need {MIN_TRAIN_POSITIVES} and {MIN_VAL_POSITIVES}): raise eps, or pass "
            "positives='all'."
        )
    train_pos = np.flatnonzero(local_train)  # row of f_cells → row among training cells
    to_train_row = np.full(int(cells.sum()), -1)
    to_train_row[train_pos] = np.arange(len(train_pos))
    fc, fv = f_cells[local_train], f_cells[~local_train]
    fa, fa_src = f_adv[tr_rows], to_train_row[source[tr_rows]]
    fva = f_adv[va_rows]
    cls = y[cells][local_train]

    # 2-3. the two networks
    shape = DT.Shape(n_features=fc.shape[1])
    nets, history = DT.fit(fc, cls, fa, fa_src, fv, fva, shape=shape, options=options,
                           seed=seed, device=dev, progress=progress)

    # 4. threshold on the validation cells (meta-detector probabilities)
    p_val = MC._sigmoid(nets.logit(fv, device=dev))
    p_val_adv = MC._sigmoid(nets.logit(fva, device=dev))
    thr = MC.calibrate(p_val, p_val_adv, method=threshold, target_fpr=target_fpr)

    # 5. realism gate
    clean_viol = got.viol_clean
    slack = max(3, int(np.ceil(0.005 * src.n_genes)))
    gate.update(enabled=bool(input_check), max_violations=int(clean_viol.max()) + slack)

    det_record: dict[str, Any] = {
        "kind": DT.DETECTOR_KIND,
        "format_version": DT.FORMAT_VERSION,
        "model": model,
        "classifier_fingerprint": MC.fingerprint(record),
        "classifier_fingerprint_version": MC.FINGERPRINT_VERSION,
        "classes": classes,
        "features": list(groups),
        "feature_names": MF.names(groups, classes, emb_cells.shape[1]),
        **nets.to_record(),
        "threshold": thr,
        "threshold_method": threshold,
        "target_fpr": float(target_fpr),
        "gate": gate,
        "training": {
            "attack": attack, "eps": np.asarray(eps_t), "steps": int(steps),
            "positives": positives,
            "n_train_cells": int(train.sum()), "n_val_cells": int(val.sum()),
            "n_train_adversarial": n_tr, "n_val_adversarial": n_va,
            "train_flip_rate": flipped[:, local_train].mean(axis=1),
            "val_flip_rate": flipped[:, ~local_train].mean(axis=1),
            "calibrated_on": "the classifier's validation split",
        },
        "history": history,
        "calibration": {
            "auroc": MC.auroc(p_val, p_val_adv),
            "fpr": float((p_val >= thr).mean()),
            "tpr": float((p_val_adv >= thr).mean()),
            "n_clean": len(p_val), "n_adversarial": len(p_val_adv),
        },
    }
    if baselines:
        det_record["baselines"] = _fit_baselines(
            groups, fc, cls, fa, fa_src, fv, fva, emb_train=emb_cells[local_train],
            viol_val=got.viol_clean[~local_train],
            viol_adv_val=got.viol_adv[:, ~local_train][va_rows[:, ~local_train]], gate=gate,
            n_classes=len(classes), shape_options=options, nets=nets, threshold=threshold,
            target_fpr=target_fpr, seed=seed, device=dev, progress=progress)
    det_record["provenance"] = P.record(params, seed=seed, device=dev)

    # 6. score everything, evaluate on the test split
    det = MC.Loaded.build(det_record, record, dev, net)
    obs, evaluation = MC.score_adata(adata, det, key=key_added, layers=score_layers, src=src,
                                     test=split == K.SPLIT_TEST, progress=progress,
                                     device=device)
    det_record["evaluation"] = evaluation
    det_record["table"] = MC.table(evaluation)
    n_flag = int(np.asarray(obs[K.meta_flag(key_added)] == True).sum())  # noqa: E712
    write_results(
        adata, step=f"meta-detector (validation AUROC {det_record['calibration']['auroc']:.3f}; "
                    f"{n_flag} of {adata.n_obs} clean cells flagged; {len(score_layers)} layers "
                    "scored)",
        start=start, uns={key_added: det_record}, obs=obs,
        colors={col: [A.UNCHANGED_COLOR, A.FLIPPED_COLOR] for col in obs
                if col.endswith("_flag")},
    )
    return adata if copy else None


def _check_options(*, attack: str, positives: str, threshold: str, target_fpr: float,
                   steps: int) -> None:
    problems = []
    if attack not in DEFAULT_EPS:
        problems.append(f"attack must be one of {list(DEFAULT_EPS)}, got {attack!r}")
    if positives not in ("flipped", "all"):
        problems.append(f"positives must be 'flipped' or 'all', got {positives!r}")
    if threshold not in ("youden", "fpr"):
        problems.append(f"threshold must be 'youden' or 'fpr', got {threshold!r}")
    if not 0 < float(target_fpr) < 1:
        problems.append(f"target_fpr must be in (0, 1), got {target_fpr}")
    if int(steps) < 1:
        problems.append(f"steps must be ≥ 1, got {steps}")
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


@dataclass
class _Collected:
    """What the detector is trained and calibrated on, per cell of the attacked set."""

    f_clean: np.ndarray  # (n, M) meta-features of the clean cells
    emb: np.ndarray  # (n, embedding) the classifier's embedding of the clean cells
    f_adv: np.ndarray  # (n_eps, n, M) meta-features of the adversarial versions
    flipped: np.ndarray  # (n_eps, n) whether the attack changed the prediction
    viol_clean: np.ndarray  # (n,) realism-gate violations of the clean cells
    viol_adv: np.ndarray  # (n_eps, n) and of the adversarial versions


def _collect(src: R.Source, record: Mapping[str, Any], module: nn.Module | None,
             cells: np.ndarray,
             groups: tuple[str, ...], gate: Mapping[str, Any], *, attack: str,
             eps: tuple[float, ...], steps: int, seed: int, device: D.Device, progress: bool
             ) -> _Collected:
    """Attack the cells at positions ``cells`` at every budget and keep, per cell and version,
    only the meta-features and realism-gate counts (never the adversarial matrices of all
    cells at once)."""
    if attack == "fgsm":
        budget = A.Budget(eps=eps, norm="linf", alpha=eps, steps=1, random_start=False,
                          n_restarts=1, loss="ce")
    else:
        budget = A.Budget(eps=eps, norm="linf", alpha=tuple(2.5 * e / steps for e in eps),
                          steps=steps, random_start=False, n_restarts=1, loss="margin")
    chunks = list(RW.chunks(cells, A.ATTACK_CHUNK))
    on_dask = PAR.lazy(src.matrix)
    parts = PAR.map_cells(
        _collect_chunk, src, chunks, per_chunk=lambda n_chunk, idx: (n_chunk,),
        shared=(record, module, groups, gate, budget, attack == "pgd_realistic", seed, device,
                progress and not on_dask),
        progress=progress and on_dask, desc="attacking")
    return _Collected(
        f_clean=np.concatenate([p[0] for p in parts]), emb=np.concatenate([p[1] for p in parts]),
        f_adv=np.concatenate([p[2] for p in parts], axis=1),
        flipped=np.concatenate([p[3] for p in parts], axis=1),
        viol_clean=np.concatenate([p[4] for p in parts]),
        viol_adv=np.concatenate([p[5] for p in parts], axis=1))


def _collect_chunk(src: R.Source, idx: np.ndarray, n_chunk: int, record: Mapping[str, Any],
                   module: nn.Module | None, groups: tuple[str, ...],
                   gate: Mapping[str, Any], budget: A.Budget,
                   realistic: bool, seed: int, device: D.Device, progress: bool
                   ) -> tuple[np.ndarray, ...]:
    """One task of :func:`_collect`: attack a chunk of cells, keep meta-features and gate
    counts (a task of :func:`scadv._parallel.map_cells`)."""
    dev = D.resolve(device)
    net = M.network(record, dev, module)
    x0 = src.rows(idx)
    f_clean, logits, emb = MF.compute(net, x0, groups, device=dev, progress=progress)
    pred = logits.argmax(axis=1)
    cons, _ = A.constraints(src, record, idx, x0, genes=None,
                            clip="observed" if realistic else None, keep_zeros=realistic)
    adv, adv_logits = E.run(net, x0, pred, budget, cons, targeted=False, device=dev,
                            seed=seed + 1_000_003 * n_chunk, batch_size=256, progress=progress)
    f_adv = np.stack([MF.compute(net, a, groups, device=dev)[0] for a in adv])
    return (f_clean, emb, f_adv, adv_logits.argmax(axis=-1) != pred[None, :],
            B.violations(gate, x0), np.stack([B.violations(gate, a) for a in adv]))


def _fit_baselines(groups: tuple[str, ...], fc: np.ndarray, cls: np.ndarray, fa: np.ndarray,
                   fa_src: np.ndarray, fv: np.ndarray, fva: np.ndarray, *,
                   emb_train: np.ndarray, viol_val: np.ndarray, viol_adv_val: np.ndarray,
                   gate: Mapping[str, Any], n_classes: int,
                   shape_options: DT.TrainOptions, nets: DT.Networks, threshold: MC.Threshold,
                   target_fpr: float, seed: int, device: torch.device, progress: bool
                   ) -> dict[str, Any]:
    """Fit the compared methods on the same training rows; calibrate each on validation."""
    def cal(s0: np.ndarray, s1: np.ndarray) -> float:
        return MC.calibrate(s0, s1, method=threshold, target_fpr=target_fpr)

    out: dict[str, Any] = {}
    lr = B.fit_logreg(fc, fa, nets.mean, nets.scale, seed)
    lr["threshold"] = cal(B.score_logreg(lr, fv, nets.mean, nets.scale),
                          B.score_logreg(lr, fva, nets.mean, nets.scale))
    out["logreg"] = lr

    if "grad" in groups:
        names = MF.names(groups, [str(i) for i in range(n_classes)], emb_train.shape[1])
        cols = np.asarray([i for i, n in enumerate(names) if n not in MF.GRAD_STATS])
        shape = DT.Shape(n_features=len(cols))
        nog, _ = DT.fit(fc[:, cols], cls, fa[:, cols], fa_src, fv[:, cols], fva[:, cols],
                        shape=shape, options=shape_options, seed=seed, device=device,
                        progress=progress)
        rec = nog.to_record()
        rec["columns"] = cols
        rec["threshold"] = cal(MC._sigmoid(nog.logit(fv[:, cols], device=device)),
                               MC._sigmoid(nog.logit(fva[:, cols], device=device)))
        out["no_grad"] = rec

    if "embedding" in groups:
        maha = B.fit_mahalanobis(emb_train, cls, n_classes)
        emb_cols = slice(0, emb_train.shape[1])  # the embedding is the first group
        maha["threshold"] = cal(B.score_mahalanobis(maha, fv[:, emb_cols]),
                                B.score_mahalanobis(maha, fva[:, emb_cols]))
        out["mahalanobis"] = maha

    # the input statistic is the realism gate's violation count, scored as a continuous score
    inp = {k: v for k, v in gate.items() if k not in ("enabled", "max_violations")}
    inp["threshold"] = cal(viol_val.astype(np.float64), viol_adv_val.astype(np.float64))
    out["input"] = inp
    return out
