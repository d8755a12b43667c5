"""Shared by the meta-detector functions: the stored detector, scoring, thresholds, metrics and
the evaluation on the test split."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from ... import _detector as DT
from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _parallel as PAR
from ... import _recipe as R
from ... import _records as REC
from ... import _rows as RW
from ... import _store as ST
from ..._errors import ScadvInputError
from .. import _common as C
from . import _baselines as B
from . import _features as MF

Threshold = Literal["youden", "fpr"]
Positives = Literal["flipped", "all"]

#: The methods of the evaluation table, in display order: key → description.
METHODS = {
    "detector": "triplet + residual detector with realism gate (the flag columns)",
    "meta": "triplet + residual detector, meta-features only",
    "no_grad": "triplet + residual detector without gradient features",
    "logreg": "logistic regression on the raw meta-features",
    "mahalanobis": "Mahalanobis distance on the classifier embedding",
    "input": "input-space statistic (genes off their zero level / observed range)",
}
#: Attack methods whose layers the detector is evaluated on.
ATTACK_METHODS = ("pgd", "fgsm", "adaptive_pgd")
BENIGN_METHOD = "benign"


#: Version of :func:`fingerprint` written into new detector records
#: (``classifier_fingerprint_version``); records without it (scadv 0.1) hold
#: :func:`legacy_fingerprint`.
FINGERPRINT_VERSION = 2
#: Recipe entries that change what a classifier computes from the same cells.
_RECIPE_PARTS = ("genes", "mean", "std", "max_value", "target_sum", "input_kind", "has_stats")


def fingerprint(classifier: Mapping[str, Any]) -> str:
    """SHA-256 of everything that decides a stored classifier's outputs: the content hash of
    its weights (:func:`scadv._records.weights_sha256`, recomputed from the arrays, so a
    record without a stored hash gets the same fingerprint), its classes, genes and the
    transform of its preprocessing recipe."""
    h = hashlib.sha256()
    parts = [REC.weights_sha256(classifier["weights"]).encode(),
             "\x00".join(np.asarray(classifier["classes"]).astype(str)).encode(),
             "\x00".join(np.asarray(classifier["genes"]).astype(str)).encode()]
    recipe = classifier["prepare"]
    for name in _RECIPE_PARTS:
        value = np.asarray(recipe[name])
        parts.append(name.encode())
        parts.append(value.astype(str).tobytes() if value.dtype.kind in "UO"
                     else np.ascontiguousarray(value, dtype="<f8").tobytes())
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def legacy_fingerprint(classifier: Mapping[str, Any]) -> str:
    """The fingerprint scadv 0.1 stored: SHA-256 of the weights, classes and genes."""
    h = hashlib.sha256()
    weights = classifier["weights"]
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype=np.float32).tobytes())
    for arr in (classifier["classes"], classifier["genes"]):
        h.update("\x00".join(np.asarray(arr).astype(str)).encode())
    return h.hexdigest()


def classifier_fingerprint(record: Any) -> str:
    """:func:`fingerprint` of ``record`` if it is a valid stored classifier, else ``''``."""
    try:
        M.architecture(record)
    except ScadvInputError:
        return ""
    return fingerprint(record)


def same_classifier(record: Mapping[str, Any], classifier: Mapping[str, Any]) -> bool:
    """Whether ``classifier`` is the one the detector ``record`` was trained for (compared
    with the fingerprint version the record was written with)."""
    stored = str(record.get("classifier_fingerprint", ""))
    if "classifier_fingerprint_version" in record:
        return stored == fingerprint(classifier)
    return stored == legacy_fingerprint(classifier)


def detector_fingerprint(record: Mapping[str, Any]) -> str:
    """SHA-256 of a stored detector's weights and threshold ('' if it is not one)."""
    if str(record.get("kind", "")) != DT.DETECTOR_KIND:
        return ""
    h = hashlib.sha256()
    try:
        for part in ("triplet_weights", "detector_weights"):
            weights = record.get(part)
            if not isinstance(weights, Mapping):
                return ""
            h.update(f"{part}/{REC.weights_sha256(weights)}".encode())
        h.update(repr(float(record.get("threshold", np.nan))).encode())
    except (TypeError, ValueError):  # not numbers: not a detector this function can compare
        return ""
    return h.hexdigest()


def detector_record(adata: AnnData, key: str,
                    source: AnnData | Mapping[str, Any] | str | os.PathLike | None = None
                    ) -> Mapping[str, Any]:
    """The stored detector ``key`` of ``source`` (default ``adata``), with a clear error."""
    record = source if isinstance(source, Mapping) else C.stored_record(
        adata, key, source, kind=DT.DETECTOR_KIND, noun="meta-detector", plural="detectors",
        hint="Train one with scadv.tl.meta_detect(adata), or pass key=<key of a stored "
             "detector>.")
    if not isinstance(record, Mapping) or str(record.get("kind", "")) != DT.DETECTOR_KIND:
        raise ScadvInputError(f"this is not a scadv meta-detector record (expected kind "
                              f"{DT.DETECTOR_KIND!r}); train one with scadv.tl.meta_detect.")
    version = REC.fields(record, {"format_version": REC.Field("int", optional=True)},
                         what="meta-detector", fix=DT.DETECTOR_FIX).get("format_version", -1)
    if version > DT.FORMAT_VERSION:
        raise ScadvInputError(f"the stored detector has format version {version}, newer than "
                              f"this scadv understands ({DT.FORMAT_VERSION}). Upgrade scadv.")
    return record


_THRESHOLD = REC.Field("float", finite="inf")
_GATE = {
    "check_zero": REC.Field("bool"),
    "zero_level": REC.Field("floats", ("n_genes",)),
    "gap": REC.Field("floats", ("n_genes",)),
    "x_min": REC.Field("floats", ("n_genes",)),
    "x_max": REC.Field("floats", ("n_genes",)),
    "tol": REC.Field("float", low=0.0),
}


def _embedding_dim(classifier: Mapping[str, Any], groups: tuple[str, ...],
                   classes: list[str], n_features: int) -> int:
    """Width of the classifier's embedding feature: its last hidden layer (scadv's MLP, a
    translated scikit-learn MLP), its logits (a linear model); for a torch module held in
    memory, whose record has no architecture, what the detector's feature count leaves."""
    arch = classifier.get("arch")
    hidden = np.asarray(arch.get("hidden", ()) if isinstance(arch, Mapping) else ()).ravel()
    if len(hidden):
        return int(hidden[-1])
    if str(classifier.get("kind", "")) != M.MEMORY_KIND or "embedding" not in groups:
        return len(classes)
    return max(0, n_features - len(MF.names(groups, classes, 0)))


def check_detector(record: Mapping[str, Any], classifier: Mapping[str, Any]) -> None:
    """Validate a stored detector against its (valid) classifier before anything is built:
    every entry scoring reads (networks, features, threshold, realism gate, baselines), their
    types, shapes and finite values, and that the feature count matches the classifier."""
    what, fix = "meta-detector", DT.DETECTOR_FIX
    top = REC.fields(record, {
        "kind": REC.Field("str"), "format_version": REC.Field("int", optional=True),
        "model": REC.Field("str"), "classifier_fingerprint": REC.Field("str"),
        "classifier_fingerprint_version": REC.Field("int", optional=True),
        "classes": REC.Field("strs", (None,)), "features": REC.Field("strs", (None,)),
        "threshold": _THRESHOLD, "gate": REC.Field("map", optional=True),
        "baselines": REC.Field("map", optional=True),
    }, what=what, fix=fix)
    try:
        groups = MF.check_groups(top["features"].tolist())
    except ScadvInputError as err:
        raise REC.malformed(what, "'features'", f"is invalid ({err})", fix) from None
    classes = np.asarray(classifier["classes"]).astype(str)
    if not np.array_equal(top["classes"], classes):
        raise REC.malformed(what, "'classes'", "differ from its classifier's classes", fix)
    shape, _, _ = DT.check_record(record, what=what)
    emb_dim = _embedding_dim(classifier, groups, classes.tolist(), shape.n_features)
    n_features = len(MF.names(groups, classes.tolist(), emb_dim))
    if shape.n_features != n_features:
        raise REC.malformed(what, "arch['n_features']", f"is {shape.n_features}, but its "
                            f"features {list(groups)} give {n_features} for its classifier",
                            fix)
    dims = {"n_genes": len(np.asarray(classifier["genes"])), "n_features": n_features,
            "emb_dim": emb_dim}
    gate = top.get("gate")
    if gate is not None:
        g = REC.fields(gate, {"enabled": REC.Field("bool"),
                              "max_violations": REC.Field("float", low=0.0, finite="inf")},
                       what=f"{what} realism gate", fix=fix)
        if g["enabled"]:
            REC.fields(gate, _GATE, what=f"{what} realism gate", fix=fix, dims=dims)
    base = top.get("baselines") or {}
    parts: dict[str, dict[str, REC.Field]] = {
        "logreg": {"coef": REC.Field("floats", ("n_features",)),
                   "intercept": REC.Field("float"), "threshold": _THRESHOLD},
        "mahalanobis": {"means": REC.Field("floats", (None, "emb_dim")),
                        "precision": REC.Field("floats", ("emb_dim", "emb_dim")),
                        "threshold": _THRESHOLD},
        "no_grad": {"columns": REC.Field("ints", (None,), low=0, high=n_features - 1),
                    "threshold": _THRESHOLD},
        "input": {**_GATE, "threshold": _THRESHOLD},
    }
    for name, schema in parts.items():
        if name not in base:
            continue
        got = REC.fields(base[name], schema, what=f"{what} baseline {name!r}", fix=fix,
                         dims=dict(dims))
        if name == "no_grad":
            nog, _, _ = DT.check_record(base[name], what=f"{what} baseline 'no_grad'")
            if nog.n_features != len(got["columns"]):
                raise REC.malformed(f"{what} baseline 'no_grad'", "'columns'",
                                    f"select {len(got['columns'])} features; its networks "
                                    f"take {nog.n_features}", fix)


@dataclass
class Loaded:
    """A stored detector with its classifier, rebuilt and ready to score."""

    record: Mapping[str, Any]
    classifier: Mapping[str, Any]
    net: nn.Module
    groups: tuple[str, ...]
    nets: DT.Networks
    threshold: float
    gate: Mapping[str, Any] | None
    max_violations: float
    device: torch.device

    @classmethod
    def build(cls, record: Mapping[str, Any], classifier: Mapping[str, Any],
              device: torch.device, module: nn.Module | None = None) -> Loaded:
        M.check_record(classifier)  # the classifier is valid before it is compared or built
        check_detector(record, classifier)
        if not same_classifier(record, classifier):
            raise ScadvInputError(
                f"the detector was trained for another version of classifier "
                f"{str(record.get('model'))!r} (its weights, classes or genes differ): retrain the "
                "detector with scadv.tl.meta_detect after retraining the classifier."
            )
        groups = MF.check_groups(np.asarray(record["features"]).astype(str).tolist())
        gate = record.get("gate")
        if not (isinstance(gate, Mapping) and bool(np.asarray(gate.get("enabled", False)))):
            gate = None
        net = M.network(classifier, device, module)
        return cls(record=record, classifier=classifier, net=net,
                   groups=groups, nets=DT.from_record(record, device),
                   threshold=float(record["threshold"]), gate=gate,
                   max_violations=float(gate["max_violations"]) if gate is not None else np.inf,
                   device=device)

    def features(self, x: np.ndarray, *, progress: bool = False) -> Scored:
        f, logits, emb = MF.compute(self.net, x, self.groups, device=self.device,
                                    progress=progress)
        return Scored(features=f, logits=logits, emb=emb,
                      meta=_sigmoid(self.nets.logit(f, device=self.device)),
                      violations=(B.violations(self.gate, x) if self.gate is not None
                                  else np.zeros(len(x), dtype=np.int64)))

    def score(self, s: Scored) -> np.ndarray:
        """The detector's score: the meta-detector's probability, 1 where the gate fires."""
        return np.where(s.violations > self.max_violations, 1.0, s.meta)

    def flag(self, s: Scored) -> np.ndarray:
        return self.score(s) >= self.threshold


@dataclass
class Scored:
    """Everything computed for a set of cells."""

    features: np.ndarray
    logits: np.ndarray
    emb: np.ndarray
    meta: np.ndarray  # meta-detector probability (float64)
    violations: np.ndarray  # realism-gate count per cell


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def load(adata: AnnData, key: str, *, source: AnnData | str | os.PathLike | None,
         device: torch.device, model: Any = None) -> Loaded:
    """The stored detector and its classifier (both from ``source`` when given).

    ``model``: the classifier object (a :class:`scadv.models.Model`) when the detector's
    classifier is a torch module held in memory (a ``'scadv.torch'`` record has no network);
    its weights must be the ones the detector was trained for.
    """
    from .._models import _resolve as RS

    record = detector_record(adata, key, source)
    model_key = REC.fields(record, {"model": REC.Field("str")}, what="meta-detector",
                           fix=DT.DETECTOR_FIX)["model"]
    classifier = C.model_record(adata, model_key, source)
    module = None
    if model is not None:
        obj = RS.as_model_object(model)
        if obj is None:
            raise ScadvInputError("model= of a detector must be the classifier object (a "
                                  "scadv.models.Model); its key is read from the detector.")
        mine = RS.memory_record(obj) if not obj.storable else obj.to_record()
        if fingerprint(mine) != fingerprint(classifier):
            raise ScadvInputError(
                f"model= is not the classifier {model_key!r} the detector was "
                "trained for (its weights, classes or genes differ).")
        module = obj.module
    return Loaded.build(record, classifier, device, module)


# ---- thresholds and metrics -------------------------------------------------------------------


def threshold_at_fpr(clean: np.ndarray, fpr: float) -> float:
    """Smallest threshold (flag: score ≥ threshold) whose false-positive rate on ``clean`` is at
    most ``fpr``."""
    s = np.sort(np.asarray(clean, dtype=np.float64))[::-1]
    k = int(np.floor(fpr * len(s) + 1e-9))  # false positives allowed
    if k >= len(s):
        return float(-np.inf)
    return float(np.nextafter(s[k], np.inf))


def calibrate(clean: np.ndarray, adv: np.ndarray, *, method: Threshold, target_fpr: float
              ) -> float:
    """Threshold from a validation ROC: Youden's J, or the given false-positive rate."""
    if method == "fpr":
        return threshold_at_fpr(clean, target_fpr)
    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    fpr, tpr, thr = roc_curve(y, np.r_[clean, adv])
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], np.nextafter(np.max(np.r_[clean, adv]), np.inf)))


def tpr_at_fpr(clean: np.ndarray, adv: np.ndarray, fpr: float) -> float:
    if len(adv) == 0:
        return float("nan")
    return float((adv >= threshold_at_fpr(clean, fpr)).mean())


def auroc(clean: np.ndarray, adv: np.ndarray) -> float:
    if len(adv) == 0 or len(clean) == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(adv))], np.r_[clean, adv]))


def detection_metrics(clean: np.ndarray, adv: np.ndarray, adv_all: np.ndarray,
                      threshold: float) -> dict[str, Any]:
    """Threshold-free and thresholded metrics; positives are the ``adv`` rows (successful
    attacks), ``adv_all`` every attacked cell."""
    tn = int((clean < threshold).sum())
    fp = int((clean >= threshold).sum())
    tp = int((adv >= threshold).sum())
    fn = int((adv < threshold).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if tp and np.isfinite(precision) and np.isfinite(recall) else 0.0)
    return {
        "auroc": auroc(clean, adv),
        "auroc_all": auroc(clean, adv_all),
        "tpr_at_1fpr": tpr_at_fpr(clean, adv, 0.01),
        "tpr_at_5fpr": tpr_at_fpr(clean, adv, 0.05),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "clean_detection_rate": tn / max(tn + fp, 1),
        "adv_detection_rate": float(recall),
        "adv_detection_rate_all": float((adv_all >= threshold).mean()) if len(adv_all)
        else float("nan"),
        "confusion_matrix": np.array([[tn, fp], [fn, tp]], dtype=np.int64),
    }


# ---- which layers to score --------------------------------------------------------------------


@dataclass
class LayerInfo:
    """An adversarial or benign layer of ``adata`` and the cells it changed."""

    layer: str
    run: str  # uns['scadv'] key of the run that wrote it
    method: str
    kind: str  # 'adversarial' or 'benign'
    label: str  # e.g. 'pgd ε=0.1'
    eps: float  # NaN for benign layers
    changed: np.ndarray  # bool mask of cells the run perturbed


def find_layers(adata: AnnData, model: str, layers: Sequence[str] | None = None
                ) -> list[LayerInfo]:
    """Adversarial layers of attacks on ``model`` and benign layers present in ``adata``.

    With ``layers`` given, exactly those (each must be one of them, or any model-space layer,
    scored for every cell). Each layer is labelled by what its run really did (the record's
    ``method``, norm and budget, e.g. ``'pgd ε=0.1'``), followed by the run's key when that is
    not the method's own name (``'pgd ε=0.5 (realistic)'``). A run record that does not hold
    what its layers need is an error, not skipped.
    """
    ns = adata.uns.get(K.UNS)
    found: dict[str, LayerInfo] = {}
    for run, rec in (ns.items() if isinstance(ns, Mapping) else ()):
        if not isinstance(rec, Mapping) or "layers" not in rec or "method" not in rec:
            continue
        method = str(rec["method"])
        is_attack = method in ATTACK_METHODS and str(rec.get("model", K.DEFAULT_MODEL)) == model
        if not (is_attack or method == BENIGN_METHOD):
            continue
        what, fix = (f"{method} run {run!r}",
                     f"run {'the attack' if is_attack else 'scadv.tl.benign_perturb'} again.")
        schema = {"layers": REC.Field("strs", ("n_layers",)),
                  **({"eps": REC.Field("floats", ("n_layers",), low=0.0),
                      "norm": REC.Field("str", optional=True)} if is_attack
                     else {"kinds": REC.Field("strs", ("n_layers",))})}
        got = REC.fields({k: (np.atleast_1d(np.asarray(v)) if k in ("layers", "eps", "kinds")
                              and isinstance(v, (list, tuple, np.ndarray, float, int, str))
                              and not isinstance(v, bool) else v)
                          for k, v in rec.items() if k in schema}, schema, what=what, fix=fix)
        names = got["layers"]
        for i, name in enumerate(names):
            pred_col = K.layer_pred(name)
            if not ST.exists(adata, name) or pred_col not in adata.obs:
                continue
            changed = adata.obs[pred_col].notna().to_numpy()
            if is_attack:
                eps = float(got["eps"][i])
                norm = " L2" if got.get("norm") == "l2" else ""
                label = f"{method}{norm} ε={K.format_eps(eps)}"
                own = K.default_attack_key(method, model)
            else:
                eps = float("nan")
                label = f"{method} {got['kinds'][i]}"
                own = K.DEFAULT_BENIGN
            if str(run) != own:
                label += f" ({run})"
            found[name] = LayerInfo(name, str(run), method,
                                    "adversarial" if is_attack else "benign", label, eps,
                                    changed)
    if layers is None:
        return sorted(found.values(), key=lambda i: _order(
            {"kind": i.kind, "run": i.run, "eps": i.eps, "layer": i.layer}))
    out = []
    for name in layers:
        if not ST.exists(adata, name):
            raise ScadvInputError(f"perturbation or layer {name!r} not found; adata holds "
                                  f"{ST.names(adata)}.")
        out.append(found.get(name) or LayerInfo(name, "", "custom", "adversarial", name,
                                                float("nan"), np.ones(adata.n_obs, dtype=bool)))
    return out


# ---- the evaluation ---------------------------------------------------------------------------


@dataclass
class MethodScores:
    """Per-cell scores of every compared method for one set of cells."""

    scores: dict[str, np.ndarray]
    pred: np.ndarray


def method_scores(det: Loaded, s: Scored, x: np.ndarray) -> MethodScores:
    """Scores of the detector and of every stored baseline on the same cells."""
    base = det.record.get("baselines") or {}
    mean, scale = det.nets.mean, det.nets.scale
    out = {"detector": det.score(s), "meta": s.meta}
    if isinstance(base.get("no_grad"), Mapping):
        nog = base["no_grad"]
        cols = np.asarray(nog["columns"], dtype=np.int64)
        nets = DT.from_record(nog, det.device)
        out["no_grad"] = _sigmoid(nets.logit(s.features[:, cols], device=det.device))
    if isinstance(base.get("logreg"), Mapping):
        out["logreg"] = B.score_logreg(base["logreg"], s.features, mean, scale)
    if isinstance(base.get("mahalanobis"), Mapping):
        out["mahalanobis"] = B.score_mahalanobis(base["mahalanobis"], s.emb)
    if isinstance(base.get("input"), Mapping):
        out["input"] = B.violations(base["input"], x).astype(np.float64)
    return MethodScores(out, s.logits.argmax(axis=1))


def thresholds(det: Loaded) -> dict[str, float]:
    """Calibrated threshold of each method (``detector`` and ``meta`` share one)."""
    base = det.record.get("baselines") or {}
    out = {"detector": det.threshold, "meta": det.threshold}
    for name in ("no_grad", "logreg", "mahalanobis", "input"):
        if isinstance(base.get(name), Mapping):
            out[name] = float(base[name]["threshold"])
    return out


def evaluate_layer(info: LayerInfo, idx: np.ndarray, test: np.ndarray, clean: MethodScores,
                   adv: MethodScores, thr: Mapping[str, float]) -> dict[str, Any]:
    """Metrics of every method for one layer, on the test cells the layer changed.

    ``clean`` holds the scores of every cell of ``adata``; ``adv`` those of the layer's
    versions of cells ``idx``. Adversarial layers: positives are the test cells whose prediction
    the attack flipped (``auroc``, TPR, precision / recall / F1, ``adv_detection_rate``) or
    all attacked test cells (``auroc_all``, ``adv_detection_rate_all``); negatives are all clean
    test cells. Benign layers: ``flag_rate`` is the fraction of perturbed test cells flagged.
    """
    rows = test[idx]
    flipped = rows & (adv.pred != clean.pred[idx])
    out: dict[str, Any] = {
        "layer": info.layer, "run": info.run, "method": info.method, "kind": info.kind,
        "label": info.label, "eps": info.eps,
        "n_clean": int(test.sum()), "n_changed": int(rows.sum()),
        "n_flipped": int(flipped.sum()),
        "flip_rate": float(flipped.sum() / max(rows.sum(), 1)),
    }
    for name, thresh in thr.items():
        if name not in adv.scores:
            continue
        s0, s1 = clean.scores[name][test], adv.scores[name]
        if info.kind == "benign":
            out[name] = {"flag_rate": float((s1[rows] >= thresh).mean()) if rows.any()
                         else float("nan"),
                         "clean_flag_rate": float((s0 >= thresh).mean()),
                         "auroc": auroc(s0, s1[rows])}
        else:
            out[name] = detection_metrics(s0, s1[flipped], s1[rows], thresh)
    return out


def _order(ev: Mapping[str, Any]) -> tuple:
    """Adversarial layers first, by run and budget; then benign layers."""
    eps = float(ev.get("eps", np.nan))
    return (str(ev["kind"]) != "adversarial", str(ev["run"]), np.isnan(eps),
            0.0 if np.isnan(eps) else eps, str(ev["layer"]))


TABLE_COLUMNS = ("auroc", "tpr_at_1fpr", "tpr_at_5fpr", "adv_detection_rate",
                 "clean_detection_rate", "precision", "recall", "f1", "auroc_all",
                 "flag_rate")


def table(evaluation: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The evaluation as one DataFrame: a row per (layer, method)."""
    rows = []
    for ev in sorted(evaluation.values(), key=_order):
        for name in METHODS:
            m = ev.get(name)
            if not isinstance(m, Mapping):
                continue
            row = {"attack": str(ev["label"]), "kind": str(ev["kind"]),
                   "flip_rate": float(ev["flip_rate"]), "n_positive": int(ev["n_flipped"]),
                   "method": name}
            row.update({c: float(m[c]) if c in m else np.nan for c in TABLE_COLUMNS})
            rows.append(row)
    df = pd.DataFrame(rows, columns=["attack", "kind", "flip_rate", "n_positive", "method",
                                     *TABLE_COLUMNS])
    return df.round(4)


# ---- scoring an AnnData -----------------------------------------------------------------------


def flag_column(flag: np.ndarray, where: np.ndarray | None = None) -> pd.Categorical:
    """Categorical ``False`` / ``True`` (NaN outside ``where``)."""
    codes = np.asarray(flag, dtype=np.int64)
    if where is not None:
        codes = np.where(where, codes, -1)
    return pd.Categorical.from_codes(codes, categories=[False, True])


def score_adata(adata: AnnData, det: Loaded, *, key: str, layers: Sequence[LayerInfo],
                src: R.Source, test: np.ndarray | None, progress: bool,
                device: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score every cell of ``adata`` (model input from ``src``) and every perturbation's cells;
    evaluate on ``test`` cells. Cells are read and scored a batch at a time, one task per batch
    (in this process, or on Dask when the cells' matrix is a dask array: see
    :mod:`scadv._parallel`; tasks there resolve ``device``, default the detector's).

    Returns the ``obs`` columns to write and the evaluation per layer (empty without ``test``).
    """
    # a torch module held in memory travels with the tasks; other classifiers are rebuilt
    # from their plain arrays there
    module = None if str(det.classifier["kind"]) in M.NETWORK_KINDS else det.net
    spec = (det.record, det.classifier, module, det.device if device is None else device)
    clean = _score(src, lambda idx: None, np.arange(src.n_obs), spec, progress=progress,
                   desc="meta-scores")
    score = clean.scores["detector"]
    obs: dict[str, Any] = {K.meta_score(key): score,
                           K.meta_flag(key): flag_column(score >= det.threshold)}
    thr = thresholds(det)
    evaluation: dict[str, Any] = {}
    for info in layers:
        idx = np.flatnonzero(info.changed)
        layer_src, change = ST.plan(adata, info.layer, src)
        adv = _score(layer_src, change, idx, spec, progress=progress,
                     desc=f"meta-scores of {info.layer}")
        layer_score = np.full(adata.n_obs, np.nan)
        flag = np.zeros(adata.n_obs, dtype=bool)
        if len(idx):
            layer_score[idx] = adv.scores["detector"]
            flag[idx] = adv.scores["detector"] >= det.threshold
        obs[K.meta_score(key, info.layer)] = layer_score
        obs[K.meta_flag(key, info.layer)] = flag_column(flag, info.changed)
        if test is not None and test[idx].any():
            evaluation[info.layer] = evaluate_layer(info, idx, test, clean, adv, thr)
    return obs, evaluation


def _score(src: R.Source, change: Callable[[np.ndarray], ST.Change], idx: np.ndarray,
           spec: tuple[Mapping[str, Any], Mapping[str, Any], nn.Module | None, Any], *,
           progress: bool,
           desc: str) -> MethodScores:
    """Scores of the cells ``idx`` of ``src`` (with a perturbation's ``change``), a task per
    batch of :data:`scadv._rows.BATCH` cells."""
    chunks = list(RW.chunks(idx, RW.BATCH))
    on_dask = PAR.lazy(src.matrix)
    parts = PAR.map_cells(_score_chunk, src, chunks, per_chunk=lambda i, c: (change(c),),
                          shared=(*spec, progress and not on_dask),
                          progress=progress and on_dask, desc=desc)
    if not parts:
        return MethodScores({}, np.empty(0, dtype=np.int64))
    return MethodScores({k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores},
                        np.concatenate([p.pred for p in parts]))


def _score_chunk(src: R.Source, cells: np.ndarray, change: ST.Change,
                 record: Mapping[str, Any], classifier: Mapping[str, Any],
                 module: nn.Module | None, device: Any, progress: bool) -> MethodScores:
    """One task of :func:`score_adata`: the detector (rebuilt from its records) and every
    baseline on one batch of cells."""
    det = Loaded.build(record, classifier, D.resolve(device), module)
    xb = ST.rows_of(src, cells, change)
    return method_scores(det, det.features(xb, progress=progress), xb)
