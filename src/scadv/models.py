"""Bring the classifier you already use to scadv: CellTypist, scikit-learn, PyTorch.

A :class:`Model` is everything scadv needs to audit a classifier:

* its **genes** (the input columns, in order);
* its own **preprocessing**, as a scadv recipe (the dictionary :func:`scadv.pp.prepare`
  stores): normalise each cell to ``target_sum`` counts, ``log1p``, subtract ``mean``, divide
  by ``std`` and clip at ``max_value`` (both sides, or only above with ``clip='upper'``).
  :func:`preprocessing` builds one; CellTypist's normalisation, scaler and cap at 10 are one
  exactly;
* a differentiable **network** (``torch.nn.Module``) mapping the preprocessed input (the
  *model input*) to class logits;
* its **classes** and **decision rule**: the label is the arg-max of the logits ("best
  match"); ``output`` says how the logits become probabilities (:func:`scadv._model.probabilities`:
  ``'softmax'``, ``'ovr'``, ``'sigmoid'`` for CellTypist, ``'decision'`` for models without
  probabilities).

Build one with :func:`from_celltypist`, :func:`from_sklearn` or :func:`from_torch`, then store
it in an AnnData with :func:`scadv.tl.add_model`, so every tool that takes ``model=<key>`` can
use it, or pass the object itself to the gene-level attacks (``classifier=model``).

CellTypist models and translatable scikit-learn models (``LogisticRegression``, ``LinearSVC``,
``SGDClassifier``, ``RidgeClassifier``, ``MLPClassifier``, optionally after a
``StandardScaler`` in a ``Pipeline``) are stored as plain arrays (record kinds
``'scadv.linear'`` and ``'scadv.sklearn_mlp'``), never as pickles. An arbitrary ``nn.Module``
cannot be written as plain arrays: :func:`from_torch` models live in memory and are passed
as objects (only scadv's own :class:`~scadv._model.Feedforward` networks can be stored).
scadv never unpickles: loading a CellTypist ``.pkl`` file (``celltypist.models.Model.load``)
is done by the user's own code, and scadv reads the arrays of the loaded object.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from . import _device as D
from . import _keys as K
from . import _model as M
from . import _recipe as R
from ._errors import ScadvInputError

__all__ = [
    "Model",
    "from_adata",
    "from_celltypist",
    "from_record",
    "from_sklearn",
    "from_torch",
    "majority_voting",
    "preprocessing",
]

#: What a ``preprocessing=`` argument may be: a recipe dictionary, an AnnData prepared by
#: :func:`scadv.pp.prepare` (its recipe), or ``'lognorm'`` (``log1p`` of counts per
#: ``target_sum``, no scaling).
Preprocessing: TypeAlias = Mapping[str, Any] | AnnData | Literal["lognorm"]
DecisionMode: TypeAlias = Literal["best match", "prob match"]

#: CellTypist's fixed preprocessing: log1p of counts per 10,000, then the scaler, capped at 10.
CELLTYPIST_TARGET_SUM = 1e4
CELLTYPIST_MAX_VALUE = 10.0

GENE_TOOLS = ("scadv.tl.single_gene", "max_change", "cgd", "grid", "random_walk", "overview")
GRADIENT_TOOLS = ("scadv.tl.pgd", "fgsm", "meta_detect", "adversarial_train",
                  "gradient attributions")


class Model:
    """A classifier as scadv sees it: genes, preprocessing, network, classes, decision rule.

    Made by :func:`from_celltypist`, :func:`from_sklearn`, :func:`from_torch`,
    :func:`from_record` or :func:`from_adata`; not usually constructed directly.

    Parameters
    ----------
    module
        Maps the model input (cells × ``genes``, float32, after ``preprocessing``) to logits.
    genes
        Input genes, in order.
    classes
        Class names, in the order of the logits.
    preprocessing
        The recipe turning expression into the model input (see :func:`preprocessing`).
    output
        How logits become probabilities: ``'softmax'``, ``'ovr'``, ``'sigmoid'`` or
        ``'decision'`` (:func:`scadv._model.probabilities`).
    name
        A short description (stored with the model and shown in results).
    record
        The plain-array record, for models that can be stored; ``None`` otherwise.
    default_key
        The key :func:`scadv.tl.add_model` stores it under by default.
    """

    def __init__(self, module: nn.Module, *, genes: Sequence[str] | np.ndarray,
                 classes: Sequence[str], preprocessing: Mapping[str, Any], output: str = "softmax",
                 name: str = "model", record: Mapping[str, Any] | None = None,
                 default_key: str = "model") -> None:
        if output not in M.OUTPUTS:
            raise ScadvInputError(f"output must be one of {M.OUTPUTS}, got {output!r}.")
        self.module = module.eval()
        self.genes = np.asarray(genes).astype(str)
        self.classes = [str(c) for c in classes]
        self.preprocessing = dict(preprocessing)
        self.output = output
        self.name = name
        self.record = None if record is None else dict(record)
        self.default_key = default_key

    def __repr__(self) -> str:
        stored = "storable as plain arrays" if self.storable else "in memory only"
        return (f"scadv.models.Model({self.name}: {len(self.genes)} genes → "
                f"{len(self.classes)} classes, output={self.output!r}, {stored})")

    @property
    def storable(self) -> bool:
        """Whether :func:`scadv.tl.add_model` can store it as plain arrays."""
        return self.record is not None

    def to_record(self) -> dict[str, Any]:
        """The plain-array record (a copy), or an error for a model held only in memory."""
        if self.record is None:
            raise ScadvInputError(
                f"{self.name} is an arbitrary torch module, which scadv cannot store as plain "
                "arrays (it never pickles). Pass the Model object itself to the tools that take "
                "one (e.g. classifier=model in the gene-level attacks), or rebuild it as a "
                "scikit-learn / CellTypist model."
            )
        return copy.deepcopy(self.record)

    # ---- applying it -------------------------------------------------------------------------

    def model_input(self, adata: AnnData, *, layer: str | None = None,
                    missing_genes: R.MissingGenes = "error") -> np.ndarray:
        """The model input of every cell of ``adata`` (its own preprocessing applied).

        ``adata`` may hold raw counts or log-normalised values (``X``, ``layers[layer]`` or
        ``.raw``, all genes; each cell is normalised by its own total), or be already in this
        model's input space (prepared with the same recipe). ``missing_genes='mean'`` sets
        absent genes to their scaler mean, i.e. a model input of 0: exactly what CellTypist
        does when it drops the model genes a query lacks.
        """
        return R.model_input(adata, self.preprocessing, layer=layer,
                             missing_genes=missing_genes).x

    def _x(self, data: AnnData | np.ndarray, layer: str | None,
           missing_genes: R.MissingGenes) -> np.ndarray:
        if isinstance(data, AnnData):
            return self.model_input(data, layer=layer, missing_genes=missing_genes)
        x = np.asarray(data, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.genes):
            raise ScadvInputError(
                f"a matrix passed to {self.name} must be its model input: cells × "
                f"{len(self.genes)} genes (already preprocessed); got shape {x.shape}. Pass an "
                "AnnData to have the model's own preprocessing applied."
            )
        return x

    def decision_function(self, data: AnnData | np.ndarray, *, layer: str | None = None,
                          missing_genes: R.MissingGenes = "error", batch_size: int = 4096,
                          device: D.Device = "cpu") -> np.ndarray:
        """Logits (cells × classes): an AnnData (preprocessed here) or a model-input matrix."""
        x = self._x(data, layer, missing_genes)
        dev = D.resolve(device)
        self.module.to(dev)
        return M.infer(self.module, x, device=dev, batch_size=batch_size)[1]

    def predict_proba(self, data: AnnData | np.ndarray, *, layer: str | None = None,
                      missing_genes: R.MissingGenes = "error", batch_size: int = 4096,
                      device: D.Device = "cpu") -> np.ndarray:
        """Class probabilities by the model's own rule (``output``)."""
        logits = self.decision_function(data, layer=layer, missing_genes=missing_genes,
                                        batch_size=batch_size, device=device)
        return M.probabilities(logits, self.output)

    def predict(self, data: AnnData | np.ndarray, *, mode: DecisionMode = "best match",
                p_thres: float = 0.5, layer: str | None = None,
                missing_genes: R.MissingGenes = "error", batch_size: int = 4096,
                device: D.Device = "cpu") -> np.ndarray:
        """Labels: ``'best match'`` (arg-max of the logits) or, as CellTypist does,
        ``'prob match'``: every class whose probability exceeds ``p_thres``, joined by ``'|'``,
        ``'Unassigned'`` when none does. For majority voting over clusters see
        :func:`majority_voting`."""
        logits = self.decision_function(data, layer=layer, missing_genes=missing_genes,
                                        batch_size=batch_size, device=device)
        classes = np.asarray(self.classes, dtype=object)
        if mode == "best match":
            return classes[logits.argmax(axis=1)].astype(str)
        if mode != "prob match":
            raise ScadvInputError(f"mode must be 'best match' or 'prob match', got {mode!r}.")
        flags = M.probabilities(logits, self.output) > float(p_thres)
        labels = np.asarray(["|".join(classes[row]) for row in flags], dtype=object)
        labels[labels == ""] = "Unassigned"
        return labels.astype(str)


def majority_voting(labels: Sequence[str] | np.ndarray | pd.Series,
                    clusters: Sequence[Any] | np.ndarray | pd.Series, *,
                    min_prop: float = 0.0) -> np.ndarray:
    """CellTypist's majority voting: each cell gets its cluster's most frequent label.

    A cluster whose most frequent label covers less than ``min_prop`` of its cells is
    ``'Heterogeneous'``. Ties go to the label that sorts first, as in CellTypist. (The
    gene-level attacks decide a cluster's label the same way, with ``min_prop=0``.)
    """
    lab = pd.Series(np.asarray(labels).astype(str))
    clu = pd.Series(np.asarray(clusters).astype(str))
    if len(lab) != len(clu):
        raise ScadvInputError(f"labels ({len(lab)}) and clusters ({len(clu)}) differ in length.")
    if not 0 <= float(min_prop) <= 1:
        raise ScadvInputError(f"min_prop must lie in [0, 1], got {min_prop}.")
    votes = pd.crosstab(lab, clu)
    majority = votes.idxmax(axis=0).astype(str)
    share = (votes / votes.sum(axis=0)).max(axis=0)
    majority[share < float(min_prop)] = "Heterogeneous"
    return majority.loc[clu.to_numpy()].to_numpy().astype(str)


# ---- preprocessing -------------------------------------------------------------------------


def preprocessing(genes: Sequence[str] | np.ndarray, *, target_sum: float = 1e4,
                  mean: np.ndarray | Sequence[float] | None = None,
                  std: np.ndarray | Sequence[float] | None = None, max_value: float = 0.0,
                  clip: Literal["both", "upper"] = "both") -> dict[str, Any]:
    """A preprocessing recipe: ``clip((log1p(counts / library size · target_sum) − mean) / std)``.

    Parameters
    ----------
    genes
        The model's input genes, in order.
    target_sum
        Counts each cell is normalised to before ``log1p`` (its library size is its total
        over all genes of the data), as ``sc.pp.normalize_total`` + ``sc.pp.log1p``.
    mean, std
        Per-gene centre and scale after ``log1p`` (default 0 and 1: no scaling). A scaler
        fitted with ``with_mean=False`` has a centre of 0.
    max_value
        Clip (0: none).
    clip
        ``'both'``: to ``[-max_value, max_value]`` (scadv); ``'upper'``: only values above
        ``max_value`` (CellTypist).

    Returns
    -------
    The recipe dictionary (the keys of :func:`scadv.pp.prepare`'s recipe; ``x_min`` is the
    model input of zero expression, the lowest any cell can have, and ``x_max`` the clip, or
    ``inf`` without one, until :func:`scadv.tl.add_model` measures them on data).
    """
    g = np.asarray(genes).astype(str)
    if g.ndim != 1 or len(g) == 0:
        raise ScadvInputError("genes must be a non-empty list of gene names.")
    if len(set(g.tolist())) != len(g):
        raise ScadvInputError("genes lists some genes twice; a model's inputs must be distinct.")
    m = np.zeros(len(g), np.float32) if mean is None else np.asarray(mean, dtype=np.float32)
    s = np.ones(len(g), np.float32) if std is None else np.asarray(std, dtype=np.float32)
    for name, arr in (("mean", m), ("std", s)):
        if arr.shape != (len(g),) or not np.isfinite(arr).all():
            raise ScadvInputError(f"{name} must hold one finite number per gene ({len(g)}).")
    if (s <= 0).any():
        raise ScadvInputError("std must be positive for every gene (use 1 for constant genes).")
    if not (np.isfinite(target_sum) and target_sum > 0):
        raise ScadvInputError(f"target_sum must be a positive number, got {target_sum}.")
    if not max_value >= 0:
        raise ScadvInputError(f"max_value must be ≥ 0 (0: no clip), got {max_value}.")
    if clip not in ("both", "upper"):
        raise ScadvInputError(f"clip must be 'both' or 'upper', got {clip!r}.")
    recipe: dict[str, Any] = {
        "input_kind": "lognorm",
        "has_stats": True,
        "genes": g,
        "mean": m,
        "std": s,
        "target_sum": float(target_sum),
        "max_value": float(max_value),
        "clip": clip,
    }
    zero = R.zero_level(recipe).astype(np.float32)
    recipe["zero_level"] = zero
    recipe["x_min"] = zero.copy()
    recipe["x_max"] = np.full(len(g), float(max_value) if max_value > 0 else np.inf, np.float32)
    return recipe


_RECIPE_KEYS = ("genes", "mean", "std", "target_sum", "max_value", "input_kind", "has_stats")


def _recipe(spec: Preprocessing, genes: np.ndarray | None, *, target_sum: float,
            what: str) -> dict[str, Any]:
    """The recipe a ``preprocessing=`` argument describes, checked against ``genes``."""
    if isinstance(spec, str):
        if spec != "lognorm":
            raise ScadvInputError(
                f"preprocessing must be 'lognorm', a scadv recipe dictionary or an AnnData "
                f"prepared by scadv.pp.prepare; got {spec!r}.")
        if genes is None:
            raise ScadvInputError(
                f"scadv does not know the genes {what} reads: pass genes=[...] (its input "
                "columns, in order), or fit it on a DataFrame with gene names as columns.")
        return preprocessing(genes, target_sum=target_sum)
    if isinstance(spec, AnnData):
        stored = R.stored(spec)
        if stored is None:
            raise ScadvInputError(
                "the AnnData passed as preprocessing= has no scadv recipe "
                "(uns['scadv']['prepare']); pass the AnnData scadv.pp.prepare made, or "
                "preprocessing='lognorm'.")
        spec = stored
    if not isinstance(spec, Mapping):
        raise ScadvInputError(
            f"preprocessing must be 'lognorm', a recipe dictionary or a prepared AnnData, got "
            f"{type(spec).__name__}.")
    missing = [k for k in _RECIPE_KEYS if k not in spec]
    if missing:
        raise ScadvInputError(
            f"the preprocessing recipe lacks {missing}; build one with "
            "scadv.models.preprocessing(genes, ...) or take adata.uns['scadv']['prepare'].")
    recipe = dict(spec)
    recipe_genes = np.asarray(recipe["genes"]).astype(str)
    if genes is not None and not np.array_equal(recipe_genes, genes):
        raise ScadvInputError(
            f"{what} reads {len(genes)} genes, but the preprocessing recipe makes "
            f"{len(recipe_genes)} other ones (or in another order). Pass the recipe of the data "
            "it was fitted on, or genes=[...] matching it.")
    recipe.setdefault("zero_level", R.zero_level(recipe))
    recipe.setdefault("x_min", np.asarray(recipe["zero_level"], dtype=np.float32))
    recipe.setdefault("x_max", np.full(len(recipe_genes), np.inf, np.float32))
    return recipe


def _plain(recipe: Mapping[str, Any]) -> bool:
    """Whether the recipe stops at ``log1p`` (no scaling, no clip): a scaler can join it."""
    return (float(recipe["max_value"]) == 0 and not np.any(np.asarray(recipe["mean"]))
            and bool(np.all(np.asarray(recipe["std"]) == 1)))


def _with_scaler(recipe: Mapping[str, Any], center: np.ndarray, scale: np.ndarray
                 ) -> dict[str, Any]:
    """A plain log1p recipe followed by a scaler, as one recipe."""
    return preprocessing(np.asarray(recipe["genes"]), target_sum=float(recipe["target_sum"]),
                         mean=center, std=scale)


# ---- CellTypist ----------------------------------------------------------------------------


def from_celltypist(model: Any) -> Model:
    """Rebuild a CellTypist model exactly, as a differentiable linear network.

    What CellTypist's ``annotate`` does to a query, reproduced: the data must be ``log1p`` of
    counts per 10,000 over all genes (scadv normalises raw counts itself); the model's genes
    (``model.features``) are taken, scaled with ``model.scaler`` (centred only if the scaler
    was fitted ``with_mean``), capped at 10 from above (CellTypist clips only the upper side),
    and scored by ``model.classifier.decision_function``. Probabilities are CellTypist's
    (a sigmoid of each decision score, not normalised: ``output='sigmoid'``), and the label is
    the best match (arg-max of the scores; ``Model.predict(mode='prob match')`` gives
    CellTypist's multi-label mode, :func:`majority_voting` its majority voting).

    Query genes missing from the data: CellTypist drops them from the model; scadv's
    ``missing_genes='mean'`` is exactly that (their model input is 0).

    celltypist itself need not be installed: any object with ``classifier`` (fitted, with
    ``coef_``, ``intercept_``, ``classes_`` and ``features``) and ``scaler`` (``mean_``,
    ``scale_``, ``with_mean``) works. Loading a ``.pkl`` model
    (``celltypist.models.Model.load``) is the user's call; scadv never unpickles.

    Parameters
    ----------
    model
        A ``celltypist.models.Model``.

    Returns
    -------
    A storable :class:`Model` (record kind ``'scadv.linear'``).
    """
    clf, scaler = getattr(model, "classifier", None), getattr(model, "scaler", None)
    if clf is None or scaler is None:
        raise ScadvInputError(
            f"{type(model).__name__} is not a CellTypist model: it needs .classifier (the "
            "logistic regression) and .scaler (the StandardScaler). Load one with "
            "celltypist.models.Model.load(...) in your own code and pass it here.")
    genes = getattr(clf, "features", None)
    if genes is None:
        genes = getattr(model, "features", None)
    for obj, attr, what in ((clf, "coef_", "classifier"), (clf, "intercept_", "classifier"),
                            (clf, "classes_", "classifier"), (scaler, "mean_", "scaler")):
        if not hasattr(obj, attr):
            raise ScadvInputError(f"the CellTypist model's {what} has no {attr}: is it fitted?")
    if genes is None:
        raise ScadvInputError("the CellTypist model's classifier has no .features (its genes).")
    genes = np.asarray(genes).astype(str)
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64).reshape(-1)
    classes = [str(c) for c in np.asarray(clf.classes_)]
    if coef.ndim != 2 or coef.shape[1] != len(genes):
        raise ScadvInputError(f"the CellTypist classifier has {coef.shape} coefficients for "
                              f"{len(genes)} genes.")
    if coef.shape[0] == 1:  # two classes: CellTypist scores them as (−s, s)
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    if coef.shape[0] != len(classes):
        raise ScadvInputError(f"the CellTypist classifier has {coef.shape[0]} score rows for "
                              f"{len(classes)} cell types.")
    with_mean = bool(getattr(scaler, "with_mean", True))
    mean = np.asarray(scaler.mean_, dtype=np.float64) if with_mean else np.zeros(len(genes))
    scale_ = getattr(scaler, "scale_", None)
    std = np.ones(len(genes)) if scale_ is None else np.asarray(scale_, dtype=np.float64)
    if mean.shape != (len(genes),) or std.shape != (len(genes),):
        raise ScadvInputError(f"the CellTypist scaler has {mean.shape[0]} genes, the classifier "
                              f"{len(genes)}.")
    recipe = preprocessing(genes, target_sum=CELLTYPIST_TARGET_SUM, mean=mean, std=std,
                           max_value=CELLTYPIST_MAX_VALUE, clip="upper")
    description = getattr(model, "description", None)
    source = {"library": "celltypist", "estimator": type(clf).__name__}
    if isinstance(description, Mapping):
        source.update({f"description_{k}": str(v) for k, v in description.items()
                       if isinstance(k, str) and "/" not in k})
    name = f"CellTypist model ({len(classes)} cell types, {len(genes)} genes)"
    record = M.feedforward_record([(coef, intercept)], activation="identity", classes=classes,
                                  genes=genes, prepare=recipe, output="sigmoid", name=name,
                                  source=source, decision_rule="best match")
    return Model(M.from_record(record), genes=genes, classes=classes, preprocessing=recipe,
                 output="sigmoid", name=name, record=record, default_key="celltypist")


def _is_celltypist(obj: Any) -> bool:
    """A CellTypist ``Model`` (duck-typed: a classifier with ``features`` and a scaler)."""
    return (hasattr(obj, "classifier") and hasattr(obj, "scaler")
            and hasattr(getattr(obj, "classifier", None), "coef_"))


# ---- scikit-learn --------------------------------------------------------------------------


def black_box_message(estimator: Any, why: str) -> str:
    """The error for a model scadv cannot rebuild as a network: what it can still do."""
    name = type(estimator).__name__
    return (
        f"{why} So {name} stays a black box. It can be audited by the tools that only call it: "
        f"the gene-level attacks ({', '.join(GENE_TOOLS)}: pass classifier=<the estimator>) and "
        "scadv.tl.attribute with method='occlusion' or 'lime' (pass model=<its predict_proba>), "
        "and scadv.tl.compare_models (clean accuracy and single-gene flips; its flip rate "
        "per ε is reported as black-box: n/a). "
        f"The gradient tools ({', '.join(GRADIENT_TOOLS)}) need a differentiable model: "
        "LogisticRegression, LinearSVC, SGDClassifier, RidgeClassifier or MLPClassifier, "
        "optionally after a StandardScaler in a Pipeline."
    )


def _snake(name: str) -> str:
    """``LinearSVC`` → ``linear_svc``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _steps(estimator: Any) -> tuple[list[tuple[str, Any]], Any]:
    """``(preceding steps, final estimator)`` of a Pipeline (or a bare estimator)."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        steps = [(str(n), s) for n, s in estimator.steps if s is not None and s != "passthrough"]
        if not steps:
            raise ScadvInputError("the Pipeline has no steps.")
        return steps[:-1], steps[-1][1]
    return [], estimator


def _scaler(steps: list[tuple[str, Any]], estimator: Any
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(centre, scale)`` of the Pipeline's one StandardScaler, or ``None`` without one."""
    from sklearn.preprocessing import StandardScaler

    if not steps:
        return None
    if len(steps) > 1 or not isinstance(steps[0][1], StandardScaler):
        others = [f"{n} ({type(s).__name__})" for n, s in steps
                  if not isinstance(s, StandardScaler)] or [n for n, _ in steps]
        raise ScadvInputError(black_box_message(
            estimator, f"scadv translates a Pipeline of at most one StandardScaler and the "
            f"classifier; this one also has {others}."))
    sc = steps[0][1]
    if not hasattr(sc, "n_features_in_"):
        raise ScadvInputError("the Pipeline's StandardScaler is not fitted; fit the pipeline.")
    n = int(sc.n_features_in_)
    center = (np.asarray(sc.mean_, np.float64) if sc.with_mean and sc.mean_ is not None
              else np.zeros(n))
    scale = (np.asarray(sc.scale_, np.float64) if sc.with_std and sc.scale_ is not None
             else np.ones(n))
    return center, scale


def _layers(final: Any, estimator: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], str, str]:
    """``(affine layers, hidden activation, kind)`` of a translatable final estimator."""
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.neural_network import MLPClassifier

    if not hasattr(final, "classes_"):
        raise ScadvInputError(f"the {type(final).__name__} is not fitted: fit it first.")
    n_classes = len(np.asarray(final.classes_))
    if isinstance(final, LinearClassifierMixin) and hasattr(final, "coef_"):
        if hasattr(final, "features"):
            raise ScadvInputError(
                "this LogisticRegression is the inner classifier of a CellTypist model (it "
                "carries CellTypist's .features): alone it skips the model's normalisation, "
                "scaler and clip, so scadv would audit another model. Pass the whole CellTypist "
                "Model: scadv.models.from_celltypist(model).")
        coef = np.asarray(final.coef_, dtype=np.float64)
        intercept = np.broadcast_to(np.asarray(final.intercept_, dtype=np.float64).reshape(-1),
                                    (coef.shape[0],)).copy()
        if n_classes == 2 and coef.shape[0] == 1:  # binary: logits (0, s)
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        if coef.shape[0] != n_classes:
            raise ScadvInputError(black_box_message(
                estimator, f"its {coef.shape[0]} decision functions do not match its "
                f"{n_classes} classes."))
        return [(coef, intercept)], "identity", "linear"
    if isinstance(final, MLPClassifier):
        out = str(final.out_activation_)
        n_out = int(np.asarray(final.coefs_[-1]).shape[1])
        if out not in ("softmax", "logistic") or (out == "logistic" and n_out != 1):
            raise ScadvInputError(black_box_message(
                estimator, f"it is a multi-label MLPClassifier (output {out!r}, {n_out} units), "
                "not a one-label cell-type classifier."))
        layers = [(np.asarray(w, np.float64).T, np.asarray(b, np.float64))
                  for w, b in zip(final.coefs_, final.intercepts_, strict=True)]
        if out == "logistic":  # binary: one logit z → (0, z)
            w, b = layers[-1]
            layers[-1] = (np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b]))
        return layers, str(final.activation), "mlp"
    raise ScadvInputError(black_box_message(
        estimator, f"scadv cannot rebuild a {type(final).__name__} as a differentiable "
        "network (trees, neighbours and kernels have no exact torch form)."))


def _forward64(layers: list[tuple[np.ndarray, np.ndarray]], activation: str,
               x: np.ndarray) -> np.ndarray:
    """The rebuilt network in float64 numpy (for the self-check against the original)."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            if activation == "relu":
                h = np.maximum(h, 0)
            elif activation == "tanh":
                h = np.tanh(h)
            elif activation == "logistic":
                h = 0.5 * (1 + np.tanh(0.5 * h))
    return h


def _probe(layers: list[tuple[np.ndarray, np.ndarray]], n_in: int) -> np.ndarray:
    """Test inputs for the final estimator whose logits are of order one.

    For a linear model the rows are spread around a point where every logit is 0 (so the
    intercepts cannot swamp the comparison, and a softmax and one-vs-rest sigmoids give
    different probabilities); a network gets standard-normal rows.
    """
    rng = np.random.default_rng(0)
    r = rng.standard_normal((48, n_in))
    if len(layers) > 1:
        return r
    w, b = layers[0]
    center = np.linalg.lstsq(w, -b, rcond=None)[0]
    spread = np.abs(r @ w.T).max()
    return center + r * (3.0 / spread if spread > 0 else 1.0)


def _output_of(final: Any, estimator: Any, logits64: np.ndarray, probe: np.ndarray) -> str:
    """The rule by which ``final.predict_proba`` follows from its logits (read off a probe)."""
    from sklearn.neural_network import MLPClassifier

    if isinstance(final, MLPClassifier):  # softmax, or one logistic unit made (0, z)
        return "softmax"
    if not hasattr(final, "predict_proba"):
        return "decision"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = np.asarray(final.predict_proba(probe), dtype=np.float64)
        except (AttributeError, NotImplementedError):
            return "decision"
    for rule in ("softmax", "ovr"):
        if np.abs(M.probabilities(logits64, rule).astype(np.float64) - p).max() < 1e-6:
            return rule
    raise ScadvInputError(black_box_message(
        estimator, "its predict_proba is neither the softmax nor the one-vs-rest sigmoid of "
        "its decision values, so scadv cannot reproduce its probabilities."))


def from_sklearn(estimator: Any, *, genes: Sequence[str] | np.ndarray | None = None,
                 preprocessing: Preprocessing = "lognorm", target_sum: float = 1e4) -> Model:
    """Rebuild a fitted scikit-learn classifier exactly, as a differentiable network.

    Translated: ``LogisticRegression``, ``LinearSVC``, ``SGDClassifier``, ``RidgeClassifier``
    (any linear classifier: logits are its decision values) and ``MLPClassifier`` (its hidden
    activation, then the output layer), bare or as the last step of a ``Pipeline`` whose only
    other step is a ``StandardScaler``. Probabilities follow the estimator's own
    ``predict_proba`` (softmax, or one-vs-rest sigmoids; models without ``predict_proba``,
    e.g. ``LinearSVC``, get ``output='decision'``), labels its ``predict``. The translation is
    checked against the estimator on random inputs before it is returned.

    Anything else (forests, k-nearest neighbours, kernel SVMs, other pipeline steps) raises a
    :class:`~scadv.ScadvInputError` naming the tools that work on it as a black box.

    Parameters
    ----------
    estimator
        Fitted classifier or Pipeline.
    genes
        Its input columns, in order; default ``feature_names_in_`` (fitted on a DataFrame),
        else the genes of a recipe passed as ``preprocessing``.
    preprocessing
        How its input was computed from expression: ``'lognorm'`` (default: ``log1p`` of
        counts per ``target_sum``, i.e. ``sc.pp.normalize_total`` + ``sc.pp.log1p``, all genes
        normalised together), a scadv recipe (``adata.uns['scadv']['prepare']``), or the
        AnnData :func:`scadv.pp.prepare` made (fitted on its ``X``). A pipeline's
        ``StandardScaler`` joins a ``'lognorm'`` recipe (the model input is then z-scores);
        after a recipe that already scales, it stays in the network.
    target_sum
        For ``preprocessing='lognorm'``.

    Returns
    -------
    A storable :class:`Model` (record kind ``'scadv.linear'`` or ``'scadv.sklearn_mlp'``).
    """
    if _is_celltypist(estimator) and not hasattr(estimator, "fit"):
        raise ScadvInputError("this is a CellTypist Model: use scadv.models.from_celltypist.")
    steps, final = _steps(estimator)
    if not hasattr(final, "predict"):
        raise ScadvInputError(f"{type(final).__name__} is not a classifier (no predict).")
    names = getattr(estimator, "feature_names_in_", None)
    gene_arr = None if genes is None else np.asarray(genes).astype(str)
    if gene_arr is None and names is not None:
        gene_arr = np.asarray(names).astype(str)
    if gene_arr is None and isinstance(preprocessing, (Mapping, AnnData)):
        spec = R.stored(preprocessing) if isinstance(preprocessing, AnnData) else preprocessing
        if isinstance(spec, Mapping) and "genes" in spec:
            gene_arr = np.asarray(spec["genes"]).astype(str)
    scaler = _scaler(steps, estimator)
    layers, activation, kind = _layers(final, estimator)
    n_in = layers[0][0].shape[1]
    if gene_arr is not None and len(gene_arr) != n_in:
        raise ScadvInputError(f"the {type(final).__name__} reads {n_in} features but "
                              f"{len(gene_arr)} genes were given.")
    recipe = _recipe(preprocessing, gene_arr, target_sum=target_sum,
                     what=type(estimator).__name__)
    gene_arr = np.asarray(recipe["genes"]).astype(str)
    if len(gene_arr) != n_in:
        raise ScadvInputError(f"the {type(final).__name__} reads {n_in} features but the "
                              f"preprocessing recipe makes {len(gene_arr)}.")
    shift = scale = None
    if scaler is not None:
        if _plain(recipe):
            recipe = _with_scaler(recipe, *scaler)
        else:
            shift, scale = scaler

    # read the output rule off the estimator and check the translation, on test inputs
    inner = _probe(layers, n_in)  # the final estimator's input
    probe = inner if shift is None or scale is None else inner * scale + shift
    logits64 = _forward64(layers, activation, inner)
    output = _output_of(final, estimator, logits64, inner)
    reference = estimator if shift is not None else final
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if output == "decision":
            ref = np.asarray(reference.decision_function(probe), dtype=np.float64)
            ref = np.column_stack([np.zeros_like(ref), ref]) if ref.ndim == 1 else ref
            diff = np.abs(logits64 - ref).max() / max(1.0, np.abs(ref).max())
        else:
            ref = np.asarray(reference.predict_proba(probe), dtype=np.float64)
            diff = np.abs(M.probabilities(logits64, output).astype(np.float64) - ref).max()
    if not diff < 1e-5:
        raise ScadvInputError(black_box_message(
            estimator, f"scadv's translation of it differs from it (by {diff:.2g}) on test "
            "inputs, which should not happen: please report it."))

    classes = [str(c) for c in np.asarray(final.classes_)]
    est_name = type(final).__name__
    pipeline = "Pipeline(StandardScaler → " + est_name + ")" if scaler is not None else est_name
    name = f"scikit-learn {pipeline} ({len(classes)} classes, {n_in} genes)"
    source = {"library": "scikit-learn", "estimator": est_name,
              "pipeline": pipeline, "scaler": "recipe" if scaler is not None and shift is None
              else ("network" if shift is not None else "none")}
    record = M.feedforward_record(layers, activation=activation, classes=classes,
                                  genes=gene_arr, prepare=recipe, output=output, name=name,
                                  source=source, decision_rule="best match", shift=shift,
                                  scale=scale)
    key = _snake(est_name) if kind == "linear" else "mlp_classifier"
    return Model(M.from_record(record), genes=gene_arr, classes=classes, preprocessing=recipe,
                 output=output, name=name, record=record, default_key=key)


# ---- PyTorch -------------------------------------------------------------------------------


def from_torch(module: nn.Module, *, genes: Sequence[str] | np.ndarray, classes: Sequence[str],
               preprocessing: Preprocessing = "lognorm", target_sum: float = 1e4,
               output: str = "softmax", name: str | None = None) -> Model:
    """Your own PyTorch classifier, with its genes and its own preprocessing.

    ``module`` must map the model input (cells × ``genes``, float32: the output of
    ``preprocessing``) to class logits, and be differentiable for the gradient tools. It is
    put in eval mode. Such a model lives in memory: scadv cannot store an arbitrary module as
    plain arrays (it never pickles), so pass the :class:`Model` object to the tools. Only
    scadv's own :class:`~scadv._model.Feedforward` networks are storable.

    Parameters
    ----------
    module
        The network.
    genes
        Its input genes, in order.
    classes
        Class names, in the order of its logits.
    preprocessing, target_sum
        How its input is computed from expression (see :func:`from_sklearn`).
    output
        How its logits become probabilities (default ``'softmax'``).
    name
        A short description; default the module's class name.

    Returns
    -------
    A :class:`Model`.
    """
    if not isinstance(module, nn.Module):
        raise ScadvInputError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    gene_arr = np.asarray(genes).astype(str)
    recipe = _recipe(preprocessing, gene_arr, target_sum=target_sum,
                     what=type(module).__name__)
    class_list = [str(c) for c in classes]
    module.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = module(torch.zeros((2, len(gene_arr)), device=device))
    except Exception as err:  # the user's module: report what it did with our input
        raise ScadvInputError(
            f"the module fails on a (2 × {len(gene_arr)}) float32 input: {err}. It must map "
            "cells × genes to class logits.") from err
    if not isinstance(out, torch.Tensor) or out.shape != (2, len(class_list)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ScadvInputError(
            f"the module returns {shape} for 2 cells; it must return logits of shape "
            f"(cells, {len(class_list)}), one column per class.")
    label = name or type(module).__name__
    record = None
    if isinstance(module, M.Feedforward):
        layers = [(lin.weight.detach().cpu().numpy(), lin.bias.detach().cpu().numpy())
                  for lin in module.layers if isinstance(lin, nn.Linear)]
        record = M.feedforward_record(
            layers, activation=module.activation, classes=class_list, genes=gene_arr,
            prepare=recipe, output=output, name=label, source={"library": "torch"},
            decision_rule="best match",
            shift=module.shift.cpu().numpy() if module.standardize else None,
            scale=module.scale.cpu().numpy() if module.standardize else None)
    return Model(module, genes=gene_arr, classes=class_list, preprocessing=recipe, output=output,
                 name=label, record=record, default_key="torch_model")


# ---- stored models -------------------------------------------------------------------------


def from_record(record: Mapping[str, Any]) -> Model:
    """The :class:`Model` of a stored classifier record (any kind; validated, no pickles)."""
    net = M.from_record(record)  # validates; refuses a 'scadv.torch' record with the fix
    kind = str(record["kind"])
    default = {M.MODEL_KIND: "scadv MLP", M.LINEAR_KIND: "linear classifier",
               M.SKLEARN_MLP_KIND: "scikit-learn MLPClassifier"}[kind]
    return Model(net, genes=np.asarray(record["genes"]),
                 classes=[str(c) for c in np.asarray(record["classes"])],
                 preprocessing=record["prepare"], output=M.output_rule(record),
                 name=str(record.get("name", default)), record=record,
                 default_key=str(record.get("key", K.DEFAULT_MODEL)))


def from_adata(adata: AnnData, key: str = K.DEFAULT_MODEL) -> Model:
    """The :class:`Model` stored in ``adata.uns['scadv'][key]`` (by
    :func:`scadv.tl.train_classifier` or :func:`scadv.tl.add_model`)."""
    from .tl import _common as C

    return from_record(C.model_record(adata, key))


def as_model(obj: Any) -> Model | None:
    """``obj`` as a :class:`Model` when it is one or a CellTypist model; else ``None``."""
    if isinstance(obj, Model):
        return obj
    if _is_celltypist(obj) and not hasattr(obj, "fit"):
        return from_celltypist(obj)
    return None
