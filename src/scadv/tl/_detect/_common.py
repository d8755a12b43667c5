"""Shared by the meta-detector functions: the stored detector, scoring, thresholds, metrics and
the evaluation on the test split."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
import torch
from anndata import AnnData
from scipy import stats
from sklearn.metrics import roc_auc_score
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
from . import _consistency as CO
from . import _features as MF
from . import _gate as G

Threshold = Literal["fpr", "youden"]
Positives = Literal["flipped", "all"]
Method = Literal["consistency", "triplet", "logreg"]
MAIN_METHODS: tuple[str, ...] = ("consistency", "triplet", "logreg")

#: The methods of the evaluation table, in display order: key → description.
METHODS = {
    "detector": "the stored detector: its method's score, 1 where the realism gate fires "
                "(the flag columns)",
    "consistency": "consistency of the classifier with a squeezed cell and a twin on another "
                   "view (fused by logistic regression)",
    "triplet": "the seed study's triplet + residual networks on the meta-features",
    "logreg": "logistic regression on the raw meta-features",
    "margin": "the classifier's top-1 minus top-2 logit alone (low: flagged)",
    "squeeze": "the classifier's probability of its answer on the cell clipped to ±5 z",
    "twin": "the twin's probability of the classifier's answer",
    "mahalanobis": "Mahalanobis distance (Ledoit–Wolf) on the classifier embedding",
    "pca": "PCA reconstruction error of the log-normalised counts",
    "input": "the realism gate's count of impossible values alone",
}
#: Attack methods whose perturbations the detector is evaluated on ('count_attack': issue 9's
#: count-space attack, when present).
ATTACK_METHODS = ("pgd", "fgsm", "adaptive_pgd", "adaptive_counts", "count_attack")
BENIGN_METHOD = "benign"
#: Gene-level attacks whose modified cells (``add_layer=True``) are evaluated too.
GENE_METHODS = ("cgd", "single_gene", "max_change", "grid", "random_walk")
#: Calibration is called unreliable when the realised false-positive rate may exceed 1.5 times
#: the target with more than 5% probability (conformal: Beta-distributed given the cells); at
#: a 5% target that takes about 250 validation cells.
UNRELIABLE_FACTOR = 1.5


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
        M.check_record(record)
        return fingerprint(record)
    except (ScadvInputError, KeyError, TypeError, ValueError):
        return ""


def same_classifier(record: Mapping[str, Any], classifier: Mapping[str, Any]) -> bool:
    """Whether ``classifier`` is the one the detector ``record`` was trained for (compared
    with the fingerprint version the record was written with)."""
    stored = str(record.get("classifier_fingerprint", ""))
    if "classifier_fingerprint_version" in record:
        return stored == fingerprint(classifier)
    return stored == legacy_fingerprint(classifier)


def _hash_arrays(h: Any, prefix: str, obj: Any) -> None:
    if isinstance(obj, Mapping):
        for name in sorted(obj):
            _hash_arrays(h, f"{prefix}/{name}", obj[name])
        return
    arr = np.asarray(obj)
    h.update(prefix.encode())
    h.update(np.ascontiguousarray(arr.astype(np.float64) if arr.dtype.kind in "fiub"
                                  else arr.astype(str)).tobytes())


def detector_fingerprint(record: Mapping[str, Any]) -> str:
    """SHA-256 of a stored detector's fitted parts and threshold ('' if it is not one)."""
    if str(record.get("kind", "")) != DT.DETECTOR_KIND:
        return ""
    h = hashlib.sha256()
    for part in ("consistency", "triplet_weights", "detector_weights", "logreg_fit"):
        if part in record:
            _hash_arrays(h, part, record[part])
    h.update(repr(float(record.get("threshold", np.nan))).encode())
    return h.hexdigest()


def detector_record(adata: AnnData, key: str,
                    source: AnnData | Mapping[str, Any] | str | os.PathLike | None = None
                    ) -> Mapping[str, Any]:
    """The stored detector ``key`` of ``source`` (default ``adata``), with a clear error."""
    record = source if isinstance(source, Mapping) else C.stored_record(
        adata, key, source, kind=DT.DETECTOR_KIND, noun="meta-detector", plural="detectors",
        hint="Train one with scadv.tl.meta_detect(adata), or pass key=<key of a stored "
             "detector>.")
    if str(record.get("kind", "")) != DT.DETECTOR_KIND:
        raise ScadvInputError(f"this is not a scadv meta-detector record (expected kind "
                              f"{DT.DETECTOR_KIND!r}); train one with scadv.tl.meta_detect.")
    version = REC.fields(record, {"format_version": REC.Field("int", optional=True)},
                         what="meta-detector", fix=DT.DETECTOR_FIX).get("format_version", -1)
    if version > DT.FORMAT_VERSION:
        raise ScadvInputError(f"the stored detector has format version {version}, newer than "
                              f"this scadv understands ({DT.FORMAT_VERSION}). Upgrade scadv.")
    return record


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


# ---- the stored detector, rebuilt -------------------------------------------------------------


@dataclass
class Loaded:
    """A stored detector with its classifier, rebuilt and ready to score."""

    record: Mapping[str, Any]
    classifier: Mapping[str, Any]
    net: nn.Module
    method: str
    threshold: float
    gate: Mapping[str, Any] | None
    device: torch.device
    groups: tuple[str, ...] = ()
    consistency: CO.Consistency | None = None
    nets: DT.Networks | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, record: Mapping[str, Any], classifier: Mapping[str, Any],
              device: torch.device, module: nn.Module | None = None) -> Loaded:
        M.check_record(classifier)  # the classifier is valid before it is compared or built
        if not same_classifier(record, classifier):
            raise ScadvInputError(
                f"the detector was trained for another version of classifier "
                f"{str(record.get('model'))!r} (its weights, classes or genes differ): retrain the "
                "detector with scadv.tl.meta_detect after retraining the classifier."
            )
        version = int(np.asarray(record.get("format_version", 1)))
        method = str(record.get("method", "triplet"))  # format 1: always the triplet detector
        if method not in MAIN_METHODS:
            raise ScadvInputError(f"stored detector has an unknown method {method!r}.")
        recipe = classifier["prepare"]
        net = M.network(classifier, device, module)
        groups = MF.check_groups(np.asarray(record["features"]).astype(str).tolist()) \
            if "features" in record else ()
        gate = record.get("gate")
        if isinstance(gate, Mapping) and bool(np.asarray(gate.get("enabled", False))):
            # format 1 stored the old gate (zero level, one-count gap, observed range):
            # it is replaced by the lattice gate of the classifier's recipe
            gate = {**G.gate_arrays(recipe), **(dict(gate) if version >= 2 else {})}
        else:
            gate = None
        consistency = None
        if isinstance(record.get("consistency"), Mapping):
            CO.check_record(record["consistency"], len(np.asarray(recipe["genes"])),
                            len(np.asarray(classifier["classes"])))
            consistency = CO.Consistency(net, recipe, record["consistency"]).to(device).eval()
        nets = DT.from_record(record, device) if "triplet_weights" in record else None
        if (method == "consistency" and consistency is None) or (
                method == "triplet" and nets is None) or (
                method == "logreg" and not isinstance(record.get("logreg_fit"), Mapping)):
            raise ScadvInputError(f"stored detector of method {method!r} lacks its fitted "
                                  "parts; retrain it with scadv.tl.meta_detect.")
        thresholds = {str(k): float(v) for k, v in dict(record.get("thresholds", {})).items()}
        thresholds.setdefault(method, float(record["threshold"]))
        if version < 2:  # scadv 0.1: thresholds inside the baselines (the old gate's dropped)
            for name, base in dict(record.get("baselines") or {}).items():
                if name in ("logreg", "mahalanobis") and isinstance(base, Mapping):
                    thresholds[str(name)] = float(base["threshold"])
        return cls(record=record, classifier=classifier, net=net, method=method,
                   threshold=float(record["threshold"]), gate=gate, device=device,
                   groups=groups, consistency=consistency, nets=nets, thresholds=thresholds)

    def freeze(self) -> Loaded:
        """No parameter gradients (the attackers differentiate the input only)."""
        for module in (self.net, self.consistency,
                       *((self.nets.triplet, self.nets.detector) if self.nets else ())):
            if module is not None:
                module.requires_grad_(False)
        return self

    # ---- scores ---------------------------------------------------------------------------

    def scores(self, x: np.ndarray, *, missing: np.ndarray | None = None,
               lattice: bool | None = None) -> MethodScores:
        """Every available method's score of the rows of ``x`` (model input), the gate's
        counts and the classifier's predictions. Higher is more suspicious everywhere."""
        out: dict[str, np.ndarray] = {}
        base = dict(self.record.get("baselines") or {})
        need_meta = self.nets is not None or "logreg_fit" in self.record or any(
            k in base for k in ("logreg", "mahalanobis"))
        if need_meta and self.groups:
            f, logits, emb = MF.compute(self.net, x, self.groups, device=self.device)
        else:
            f, emb = None, None
            logits = M.infer(self.net, x, device=self.device)[1]
        if self.consistency is not None:
            v = CO.views_np(self.consistency, x, device=self.device)
            out["consistency"] = _sigmoid(self.consistency.fuse_np(v))
            out["margin"], out["squeeze"], out["twin"] = -v[:, 0], v[:, 1], v[:, 2]
        else:
            top = np.sort(logits, axis=1)
            out["margin"] = -(top[:, -1] - top[:, -2]).astype(np.float64)
        if self.nets is not None and f is not None:
            out["triplet"] = _sigmoid(self.nets.logit(f, device=self.device))
        if f is not None and isinstance(self.record.get("logreg_fit"), Mapping):
            out["logreg"] = B.score_logreg(self.record["logreg_fit"], f)
        elif f is not None and isinstance(base.get("logreg"), Mapping) and self.nets is not None:
            out["logreg"] = B.score_logreg({**base["logreg"], "mean": self.nets.mean,
                                            "scale": self.nets.scale}, f)
        if emb is not None and isinstance(base.get("mahalanobis"), Mapping):
            out["mahalanobis"] = B.score_mahalanobis(base["mahalanobis"], emb)
        if isinstance(base.get("pca"), Mapping):
            recipe = self.classifier["prepare"]
            lognorm = (x * np.asarray(recipe["std"], np.float32)
                       + np.asarray(recipe["mean"], np.float32))
            out["pca"] = B.score_pca(base["pca"], lognorm)
        viol = np.zeros(len(x), dtype=np.int64)
        if self.gate is not None:
            viol = G.violations(self.gate, x, missing=missing, lattice=lattice)
            out["input"] = viol.astype(np.float64)
        main = out[self.method]
        out = {"detector": np.where(viol > int(np.asarray(self.gate["max_violations"]))
                                    if self.gate is not None else False, 1.0, main), **out}
        return MethodScores(out, np.asarray(logits).argmax(axis=1), viol)

    def torch_logit(self, x: torch.Tensor) -> torch.Tensor:
        """The main method's logit (higher: more suspicious), differentiable in ``x`` (for an
        adaptive attacker; the gate is not differentiable and is left out)."""
        if self.method == "consistency" and self.consistency is not None:
            return self.consistency(x)
        feats, _ = MF.differentiable(self.net, x, self.groups)
        if self.method == "triplet" and self.nets is not None:
            return self.nets.torch_logit(feats)
        rec = self.record["logreg_fit"]
        mean = torch.as_tensor(np.asarray(rec["mean"], np.float32), device=x.device)
        scale = torch.as_tensor(np.asarray(rec["scale"], np.float32), device=x.device)
        coef = torch.as_tensor(np.asarray(rec["coef"], np.float32), device=x.device)
        return ((feats - mean) / scale) @ coef + float(rec["intercept"])

    def threshold_logit(self) -> float:
        """The threshold on :meth:`torch_logit`'s scale."""
        if self.method == "logreg":
            return float(self.threshold)
        p = float(np.clip(self.threshold, 1e-12, 1 - 1e-12))
        return float(np.log(p / (1 - p)))

    def embedding(self, x: np.ndarray) -> np.ndarray:
        """What the method sees of each cell: the triplet embedding, the standardised views of
        the consistency detector, or the standardised meta-features."""
        if self.method == "triplet" and self.nets is not None:
            f, _, _ = MF.compute(self.net, x, self.groups, device=self.device)
            return self.nets.embed(f, device=self.device)
        if self.method == "consistency" and self.consistency is not None:
            v = CO.views_np(self.consistency, x, device=self.device)
            return self.consistency.standardised(v).astype(np.float32)
        f, _, _ = MF.compute(self.net, x, self.groups, device=self.device)
        rec = self.record["logreg_fit"]
        return ((f - np.asarray(rec["mean"])) / np.asarray(rec["scale"])).astype(np.float32)


@dataclass
class MethodScores:
    """Per-cell scores of every method for one set of cells, the classifier's predictions and
    the realism gate's counts."""

    scores: dict[str, np.ndarray]
    pred: np.ndarray
    violations: np.ndarray


def load(adata: AnnData, key: str, *, source: AnnData | str | os.PathLike | None,
         device: torch.device, model: Any = None) -> Loaded:
    """The stored detector and its classifier (both from ``source`` when given).

    ``model``: the classifier object (a :class:`scadv.models.Model`) when the detector's
    classifier is a torch module held in memory (a ``'scadv.torch'`` record has no network);
    its weights must be the ones the detector was trained for.
    """
    from .._models import _resolve as RS

    record = detector_record(adata, key, source)
    classifier = C.model_record(adata, str(record["model"]), source)
    module = None
    if model is not None:
        obj = RS.as_model_object(model)
        if obj is None:
            raise ScadvInputError("model= of a detector must be the classifier object (a "
                                  "scadv.models.Model); its key is read from the detector.")
        mine = RS.memory_record(obj) if not obj.storable else obj.to_record()
        if fingerprint(mine) != fingerprint(classifier):
            raise ScadvInputError(
                f"model= is not the classifier {str(record['model'])!r} the detector was "
                "trained for (its weights, classes or genes differ).")
        module = obj.module
    return checked(record, classifier, device, module, key=key)


def checked(record: Mapping[str, Any], classifier: Mapping[str, Any], device: torch.device,
            module: nn.Module | None = None, *, key: str = K.DEFAULT_DETECTOR) -> Loaded:
    """:meth:`Loaded.build`, then one probe through every part scoring reads (the fitted
    methods, baselines, thresholds and the realism gate), so that a damaged or tampered record
    is a clear error here rather than a crash in the middle of scoring."""
    try:
        det = Loaded.build(record, classifier, device, module)
        n_genes = len(np.asarray(classifier["genes"]))
        probe = np.zeros((2, n_genes), dtype=np.float32)
        for v in det.scores(probe).scores.values():
            np.asarray(v, dtype=np.float64)
        float(det.threshold)
        {str(k): float(v) for k, v in det.thresholds.items()}
    except ScadvInputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise ScadvInputError(
            f"the stored meta-detector {key!r} is malformed ({type(err).__name__}: {err}); it "
            "was changed or damaged after scadv saved it. Retrain it with scadv.tl.meta_detect, "
            "or load the original file again.") from None
    return det


# ---- thresholds and metrics -------------------------------------------------------------------


def conformal(clean: np.ndarray, alpha: float) -> dict[str, Any]:
    """Split-conformal threshold from ``n`` clean calibration scores (flag: score ≥ threshold).

    The threshold lies just above the ``k = ⌈(n + 1)(1 − α)⌉``-th smallest score, so a new clean
    cell exchangeable with the calibration cells is flagged with probability at most
    ``(n + 1 − k) / (n + 1) ≤ α``. Given the calibration cells, its false-positive rate is
    Beta(n + 1 − k, k)-distributed; ``fpr_95`` is that distribution's 95% quantile, and the
    calibration is ``reliable`` when ``k ≤ n`` and ``fpr_95 ≤ 1.5 α``.
    """
    s = np.sort(np.asarray(clean, dtype=np.float64))
    n = len(s)
    k = int(np.ceil((n + 1) * (1 - alpha)))
    if n == 0 or k > n:
        return {"threshold": float(np.inf), "n": n, "rank": k, "expected_fpr_bound": 0.0,
                "fpr_95": 0.0, "reliable": False}
    thr = float(np.nextafter(s[k - 1], np.inf))
    fpr_95 = float(stats.beta.ppf(0.95, n + 1 - k, k))
    return {"threshold": thr, "n": n, "rank": k,
            "expected_fpr_bound": float((n + 1 - k) / (n + 1)), "fpr_95": fpr_95,
            "reliable": bool(fpr_95 <= UNRELIABLE_FACTOR * alpha)}


def youden(clean: np.ndarray, adv: np.ndarray) -> float:
    """Threshold maximising TPR − FPR on a validation ROC (no guarantee on the FPR)."""
    s = np.unique(np.r_[clean, adv])
    if not len(adv) or not len(s):
        return float(np.inf)
    best, thr = -np.inf, float(s[-1])
    c, a = np.sort(clean), np.sort(adv)
    for t in s:
        j = (1 - np.searchsorted(a, t) / len(a)) - (1 - np.searchsorted(c, t) / max(len(c), 1))
        if j > best:
            best, thr = j, float(t)
    return thr


def calibrate(clean: np.ndarray, adv: np.ndarray, *, method: Threshold, target_fpr: float
              ) -> dict[str, Any]:
    """Threshold (and what it promises) from clean and attacked validation scores."""
    out = conformal(clean, target_fpr)
    if method == "youden":
        out.update(threshold=youden(clean, adv), expected_fpr_bound=float("nan"),
                   fpr_95=float("nan"))
    out["method"] = method
    return out


def threshold_at_fpr(clean: np.ndarray, fpr: float) -> float:
    """Smallest threshold (flag: score ≥ threshold) whose false-positive rate on ``clean`` is at
    most ``fpr`` (used only for the secondary, test-calibrated TPR)."""
    s = np.sort(np.asarray(clean, dtype=np.float64))[::-1]
    k = int(np.floor(fpr * len(s) + 1e-9))  # false positives allowed
    if k >= len(s):
        return float(-np.inf)
    return float(np.nextafter(s[k], np.inf))


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
    """Metrics at the stored threshold first (``flagged``: successful attacks flagged,
    ``flagged_all``: all attacked cells flagged, ``clean_flagged``: clean cells flagged), then
    threshold-free and test-calibrated ones (``test_tpr_at_*fpr``: the threshold taken from
    these very clean test cells, which a user never has)."""
    tn = int((clean < threshold).sum())
    fp = int((clean >= threshold).sum())
    tp = int((adv >= threshold).sum())
    fn = int((adv < threshold).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if tp and np.isfinite(precision) and np.isfinite(recall) else 0.0)
    return {
        "flagged": float(recall),
        "flagged_all": float((adv_all >= threshold).mean()) if len(adv_all) else float("nan"),
        "clean_flagged": fp / max(tn + fp, 1),
        "auroc": auroc(clean, adv),
        "auroc_all": auroc(clean, adv_all),
        "test_tpr_at_1fpr": tpr_at_fpr(clean, adv, 0.01),
        "test_tpr_at_5fpr": tpr_at_fpr(clean, adv, 0.05),
        "precision": float(precision),
        "f1": float(f1),
        "confusion_matrix": np.array([[tn, fp], [fn, tp]], dtype=np.int64),
    }


# ---- which layers to score --------------------------------------------------------------------


@dataclass
class LayerInfo:
    """An adversarial or benign perturbation of ``adata`` and the cells it changed."""

    layer: str
    run: str  # uns['scadv'] key of the run that wrote it
    method: str
    kind: str  # 'adversarial' or 'benign'
    label: str  # e.g. 'pgd ε=0.1'
    eps: float  # NaN for benign layers
    changed: np.ndarray  # bool mask of cells the run perturbed


def _label(run: str, method: str, norm: object, eps: float, model: str) -> str:
    """What an attack run really did (its record's method, norm and budget), followed by the
    run's key when that is not the method's own name: ``'pgd ε=0.5 (realistic)'``."""
    if method in ("adaptive_counts", "count_attack"):
        label = f"{method} ≤{K.format_eps(eps)} UMIs"
    else:
        label = f"{method}{' L2' if norm == 'l2' else ''} ε={K.format_eps(eps)}"
    if run != K.default_attack_key(method, model):
        label += f" ({run})"
    return label


def find_layers(adata: AnnData, model: str, layers: Sequence[str] | None = None
                ) -> list[LayerInfo]:
    """Perturbations of attacks on ``model`` and benign perturbations present in ``adata``.

    With ``layers`` given, exactly those (each must be one of them, or any model-space layer,
    scored for every cell). Each is labelled by what its run really did (see :func:`_label`).
    A run record that does not hold what its layers need is an error, not skipped.
    """
    ns = adata.uns.get(K.UNS)
    found: dict[str, LayerInfo] = {}
    for run, rec in (ns.items() if isinstance(ns, Mapping) else ()):
        if not isinstance(rec, Mapping) or "method" not in rec:
            continue
        method = str(rec["method"])
        if method in GENE_METHODS and "layer" in rec:
            name = str(rec["layer"])
            ent = ST.entry(adata, name)
            if (ent is not None and str(ent["model"]) == model
                    and str(ent["space"]) == "model" and K.layer_pred(name) in adata.obs):
                to = f" → {rec['to']}" if "to" in rec else ""
                found[name] = LayerInfo(name, str(run), method, "adversarial",
                                        f"{run} ({rec.get('target', '')}{to})", float("nan"),
                                        adata.obs[K.layer_pred(name)].notna().to_numpy())
            continue
        if "layers" not in rec:
            continue
        is_attack = method in ATTACK_METHODS and str(rec.get("model", K.DEFAULT_MODEL)) == model
        if not (is_attack or method == BENIGN_METHOD):
            continue
        what, fix = (f"{method} run {run!r}",
                     f"run {'the attack' if is_attack else 'scadv.tl.benign_perturb'} again.")
        budget_key = "eps" if "eps" in rec or "budgets" not in rec else "budgets"
        schema = {"layers": REC.Field("strs", ("n_layers",)),
                  **({budget_key: REC.Field("floats", ("n_layers",), low=0.0),
                      "norm": REC.Field("str", optional=True)} if is_attack
                     else {"kinds": REC.Field("strs", ("n_layers",))})}
        got = REC.fields({k: (np.atleast_1d(np.asarray(v)) if k in ("layers", "eps", "budgets",
                                                                    "kinds")
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
                eps = float(got[budget_key][i])
                label = _label(str(run), method, got.get("norm"), eps, model)
            else:
                eps = float("nan")
                label = f"{method} {got['kinds'][i]}"
                if str(run) != K.DEFAULT_BENIGN:
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


def evaluate_layer(info: LayerInfo, idx: np.ndarray, test: np.ndarray, clean: MethodScores,
                   adv: MethodScores, thr: Mapping[str, float]) -> dict[str, Any]:
    """Metrics of every method for one layer, on the test cells the layer changed.

    ``clean`` holds the scores of every cell of ``adata``; ``adv`` those of the layer's
    versions of cells ``idx``. Adversarial layers: positives are the test cells whose prediction
    the attack flipped (``flagged``, ``auroc``, ...) or all attacked test cells (``flagged_all``,
    ``auroc_all``); negatives are all clean test cells. Benign layers: ``flag_rate`` is the
    fraction of perturbed test cells flagged. Every flag is at the stored threshold.
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
        if name not in adv.scores or name not in clean.scores:
            continue
        s0, s1 = clean.scores[name][test], adv.scores[name]
        if info.kind == "benign":
            out[name] = {"flag_rate": float((s1[rows] >= thresh).mean()) if rows.any()
                         else float("nan"),
                         "clean_flagged": float((s0 >= thresh).mean()),
                         "flagged_changed": float((s1[flipped] >= thresh).mean())
                         if flipped.any() else float("nan"),
                         "auroc": auroc(s0, s1[rows])}
        else:
            out[name] = detection_metrics(s0, s1[flipped], s1[rows], thresh)
    return out


def _order(ev: Mapping[str, Any]) -> tuple:
    """Adversarial layers first, by run and budget; then benign layers."""
    eps = float(ev.get("eps", np.nan))
    return (str(ev["kind"]) != "adversarial", str(ev["run"]), np.isnan(eps),
            0.0 if np.isnan(eps) else eps, str(ev["layer"]))


TABLE_COLUMNS = ("flagged", "flagged_all", "clean_flagged", "flag_rate", "auroc", "auroc_all",
                 "test_tpr_at_1fpr", "test_tpr_at_5fpr", "precision", "f1")


def table(evaluation: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The evaluation as one DataFrame: a row per (layer, method). The first numbers are at the
    stored threshold (``flagged``: successful attacks flagged; ``flagged_all``: all attacked
    cells; ``clean_flagged``: clean test cells; ``flag_rate``: benign perturbations); then
    AUROC and the test-calibrated TPR (secondary: its threshold comes from the test cells)."""
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


def score_cells(det: Loaded, batches: Iterable[np.ndarray], *, missing: np.ndarray | None = None,
                lattice: bool | None = None) -> MethodScores:
    """Scores of the detector and every baseline for cells given batch by batch (model
    input)."""
    parts = [det.scores(xb, missing=missing, lattice=lattice) for xb in batches]
    if not parts:
        return MethodScores({}, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return MethodScores({k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores},
                        np.concatenate([p.pred for p in parts]),
                        np.concatenate([p.violations for p in parts]))


def lattice_ok(det: Loaded, clean: MethodScores, label: str) -> bool | None:
    """``None`` (use the stored choice) when the scored data's clean cells pass the gate's
    count-lattice check; ``False`` (switch it off for this data, with a warning) when more than
    1% of them fail it: their values were never whole counts (corrected or imputed counts)."""
    if det.gate is None or not bool(np.asarray(det.gate.get("check_lattice", False))):
        return None
    failing = float((clean.violations > 0).mean()) if len(clean.violations) else 0.0
    if failing <= 1 - G.MIN_CLEAN_PASS:
        return None
    logg.warning(
        f"{failing:.0%} of the cells of {label} hold values that are not whole counts (e.g. "
        "ambient-corrected or imputed counts): the realism gate cannot check them against the "
        "count lattice and checks only for values below zero expression here.")
    return False


def score_adata(adata: AnnData, det: Loaded, *, key: str, layers: Sequence[LayerInfo],
                src: R.Source, test: np.ndarray | None, progress: bool, device: Any = None
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Score every cell of ``adata`` (model input from ``src``) and every perturbation's cells;
    evaluate on ``test`` cells. Cells are read and scored a batch at a time, one task per batch
    (in this process, or on Dask when the cells' matrix is a dask array: see
    :mod:`scadv._parallel`; tasks there resolve ``device``, default the detector's).

    Returns the ``obs`` columns to write, the evaluation per layer (empty without ``test``) and
    a note on the gate (``lattice``: whether the count-lattice check was used on this data).
    """
    missing = src.missing if src.missing.any() else None
    # a torch module held in memory travels with the tasks; other classifiers are rebuilt
    # from their plain arrays there
    module = None if str(det.classifier["kind"]) in M.NETWORK_KINDS else det.net
    spec = (det.record, det.classifier, module, det.device if device is None else device,
            missing)
    clean = _score(src, lambda idx: None, np.arange(src.n_obs), spec, None,
                   progress=progress, desc="meta-scores")
    lattice = lattice_ok(det, clean, src.label)
    if lattice is False:
        clean = _score(src, lambda idx: None, np.arange(src.n_obs), spec, False,
                       progress=progress, desc="meta-scores")
    score = clean.scores["detector"]
    obs: dict[str, Any] = {K.meta_score(key): score,
                           K.meta_flag(key): flag_column(score >= det.threshold)}
    thr = {"detector": det.threshold, **det.thresholds}
    evaluation: dict[str, Any] = {}
    for info in layers:
        idx = np.flatnonzero(info.changed)
        layer_src, change = ST.plan(adata, info.layer, src)
        adv = _score(layer_src, change, idx, spec, lattice, progress=progress,
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
    note = {"lattice": lattice is not False and det.gate is not None
            and bool(np.asarray(det.gate.get("check_lattice", False))),
            "source": src.label}
    return obs, evaluation, note


def _score(src: R.Source, change: Callable[[np.ndarray], ST.Change], idx: np.ndarray,
           spec: tuple[Mapping[str, Any], Mapping[str, Any], nn.Module | None, Any,
                       np.ndarray | None],
           lattice: bool | None, *, progress: bool, desc: str) -> MethodScores:
    """Scores of the cells ``idx`` of ``src`` (with a perturbation's ``change``), a task per
    batch of :data:`scadv._rows.BATCH` cells (in this process, or on Dask when the cells'
    matrix is a dask array: see :mod:`scadv._parallel`)."""
    chunks = list(RW.chunks(idx, RW.BATCH))
    on_dask = PAR.lazy(src.matrix)
    parts = PAR.map_cells(_score_chunk, src, chunks, per_chunk=lambda i, c: (change(c),),
                          shared=(*spec, lattice), progress=progress and on_dask, desc=desc)
    if not parts:
        return MethodScores({}, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return MethodScores({k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores},
                        np.concatenate([p.pred for p in parts]),
                        np.concatenate([p.violations for p in parts]))


def _score_chunk(src: R.Source, cells: np.ndarray, change: ST.Change,
                 record: Mapping[str, Any], classifier: Mapping[str, Any],
                 module: nn.Module | None, device: Any, missing: np.ndarray | None,
                 lattice: bool | None) -> MethodScores:
    """One task of :func:`score_adata`: the detector (rebuilt from its records) and every
    baseline on one batch of cells."""
    det = Loaded.build(record, classifier, D.resolve(device), module)
    return det.scores(ST.rows_of(src, cells, change), missing=missing, lattice=lattice)
