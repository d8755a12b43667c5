"""Classifiers the gene-level attacks can question (:func:`scadv.tl.single_gene` and friends).

A classifier here is anything that maps an expression matrix (cells × genes, in the space the
attack modifies: the prepared model input, or the layer passed with ``layer=``) to class
probabilities, one row per cell. The attacks accept:

* ``None`` or the key of a classifier stored by :func:`scadv.tl.train_classifier` (scadv's MLP)
  or :func:`scadv.tl.add_model` (CellTypist and scikit-learn models), wrapped in
  :class:`StoredModel`;
* a :class:`scadv.models.Model` or a CellTypist ``Model`` object, wrapped in
  :class:`ModelClassifier`, which applies the model's own preprocessing to raw counts or
  log-normalised data (or reads its model input directly);
* any fitted scikit-learn estimator with ``predict_proba`` (random forest, logistic
  regression, ``SVC(probability=True)``, pipelines …), wrapped in :class:`SklearnClassifier`;
* a plain callable ``f(x) -> probabilities`` (an array with one column per class, or a
  DataFrame whose columns name the classes), wrapped in :class:`FunctionClassifier`;
* :class:`MarkerClassifier`, a scType-like scorer from marker gene lists (no training);
* an instance of any of these classes, or of a subclass of :class:`Classifier`.

A cluster's *decision* is the majority of its cells' predicted labels (ties go to the label
with the higher mean probability), which is CellTypist's majority voting with the attacked
clusters as its over-clustering; its *score* is the mean probability of that label over the
cluster's cells (each model's own probabilities: CellTypist's are per-class sigmoids).

Classifiers are assumed to classify each cell on its own (``rowwise=True``), which is true of
all of the above: the attacks then only re-classify the cells a modification actually changes,
and stack many variants into one call. A callable that looks at the whole matrix at once (e.g.
it normalises over the cells it is given) must say ``rowwise=False``; it is then called on the
whole cluster once per variant, as adverSCarial does.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from . import _device as D
from . import _keys as K
from . import _model as M
from . import _recipe as R
from . import _validate as V
from . import models as MD
from ._errors import ScadvInputError

__all__ = [
    "PBMC_MARKERS",
    "Classifier",
    "FunctionClassifier",
    "MarkerClassifier",
    "ModelClassifier",
    "SklearnClassifier",
    "StoredMLP",
    "StoredModel",
    "marker_genes",
]


class Classifier:
    """Base class: cells × genes → class probabilities.

    Subclasses set :attr:`classes` (class names) and :attr:`genes` (the names of the input
    columns, in the order the classifier expects them; ``None`` means "all genes of the AnnData,
    in its order") and implement :meth:`predict_proba`. The attacks call :meth:`bind` once to
    match the columns to an AnnData's genes by name.
    """

    #: Whether each row (cell) is classified on its own.
    rowwise: bool = True
    #: Input column names, or ``None`` for all genes of the AnnData in its order.
    genes: np.ndarray | None = None
    #: Column positions in the AnnData, set by :meth:`bind`.
    cols: np.ndarray | None = None
    _classes: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of :meth:`predict_proba`'s columns."""
        if self._classes is None:
            raise ScadvInputError(
                f"{self.describe()} does not know its class names yet; pass classes=[...]."
            )
        return self._classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (cells × classes) of a dense float32 matrix (cells × genes)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short human-readable name (stored in the results)."""
        return type(self).__name__

    # ---- binding to an AnnData ---------------------------------------------------------------

    def bind(self, var_names: Sequence[str] | np.ndarray, *, adata: AnnData | None = None,
             layer: str | None = None) -> Classifier:
        """A copy whose :attr:`cols` point at its input genes among ``var_names``.

        ``adata`` and ``layer`` say where the attacked matrix comes from, for classifiers
        whose input depends on it (:class:`ModelClassifier`); the others ignore them.
        """
        names = pd.Index(np.asarray(var_names).astype(str))
        bound = copy.copy(self)
        bound._attach(adata, layer)
        if bound.genes is None:
            bound.cols = np.arange(len(names))
        else:
            pos = names.get_indexer(np.asarray(bound.genes).astype(str))
            if (pos < 0).any():
                missing = np.asarray(bound.genes)[pos < 0]
                raise ScadvInputError(
                    f"{int((pos < 0).sum())} of the {len(bound.genes)} genes {self.describe()} "
                    f"reads are not in adata.var_names (e.g. {missing[:6].tolist()}). Attack the "
                    "AnnData the classifier was trained on, or one brought into the same genes "
                    "(scadv.pp.transform)."
                )
            bound.cols = pos
        bound._bound(names[bound.cols])
        return bound

    def _bound(self, genes: pd.Index) -> None:
        """Hook: called on the bound copy with the names of its input columns."""

    def _attach(self, adata: AnnData | None, layer: str | None) -> None:
        """Hook: called on the bound copy, before its columns are matched, with the attacked
        AnnData and layer (``None`` when the caller did not pass them)."""

    # ---- hooks the batched attack engine uses when present -----------------------------------

    def _mlp(self) -> tuple[M.MLP, torch.device] | None:
        """scadv's MLP and its device (rank-one fast path and true gradients)."""
        return None

    def _output(self) -> str:
        """How the logits of :meth:`_mlp` / :meth:`_linear` become the probabilities of
        :meth:`predict_proba` (:func:`scadv._model.probabilities`)."""
        return "softmax"

    def _linear(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """``(W, b, temperature)`` when probabilities are ``softmax((x W^T + b) / temperature)``."""
        return None

    def _forest(self) -> Any | None:
        """A fitted scikit-learn tree ensemble whose ``predict_proba`` this classifier is."""
        return None

    def _relevant(self) -> np.ndarray | None:
        """Boolean mask over the input columns that can change the output (``None``: all)."""
        return None


class ModelClassifier(Classifier):
    """A :class:`scadv.models.Model` (CellTypist, scikit-learn, PyTorch), with its own
    preprocessing.

    What it reads depends on the attacked matrix (decided when the attack binds it):

    * the model's own input (an AnnData prepared or transformed with the model's recipe, or a
      layer of such values): the network is applied directly, and linear models and ReLU
      networks get the exact rank-one fast path of the gene-level engine;
    * raw counts of all genes: each cell is normalised by its own library size over all the
      attacked genes (so changing any gene's count changes it, as in the model's own
      preprocessing), then ``log1p``, scaled and clipped as the model does;
    * log-normalised values: scaled and clipped as the model does.

    Scaled values of another recipe (e.g. data prepared by :func:`scadv.pp.prepare` for
    scadv's MLP) are refused: they cannot be turned back into expression exactly.

    Parameters
    ----------
    model
        The model (or a CellTypist ``Model``, converted by
        :func:`scadv.models.from_celltypist`).
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    """

    #: ``'model'``, ``'counts'`` or ``'lognorm'``: what the attacked matrix holds.
    mode: str = "model"
    _pos: np.ndarray | None = None

    def __init__(self, model: MD.Model | Any, *, device: D.Device = "auto") -> None:
        converted = MD.as_model(model)
        if converted is None:
            raise ScadvInputError(
                f"ModelClassifier needs a scadv.models.Model or a CellTypist Model, got "
                f"{type(model).__name__}.")
        self.model = converted
        self.device = D.resolve(device)
        self.model.module.to(self.device).eval()
        self._classes = list(self.model.classes)
        self.genes = self.model.genes

    def describe(self) -> str:
        return self.model.name

    def _attach(self, adata: AnnData | None, layer: str | None) -> None:
        if adata is None:
            return
        recipe = self.model.preprocessing
        x = V.matrix(adata, layer)
        source = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        kind = V.detect_kind(x, what=source)
        if kind == "scaled":
            if R.same(R.stored(adata), recipe):
                self.mode = "model"
                return
            raise ScadvInputError(
                f"{source} holds scaled values of another preprocessing (e.g. scadv.pp.prepare's "
                f"for scadv's MLP), but {self.describe()} needs its own, and scaled values "
                "cannot be turned back into expression exactly. Attack raw counts or "
                "log-normalised data (layer=... naming them, or the AnnData as read from "
                "disk), or a copy brought into the model's own input space: "
                "scadv.pp.transform(adata_copy, model.preprocessing)."
            )
        self.mode = kind
        if kind == "counts":
            self.genes = None  # every gene counts towards the library size
            if K.LIBRARY_SIZE in adata.obs:
                total = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
                known = adata.obs[K.LIBRARY_SIZE].to_numpy(dtype=np.float64)
                if not np.allclose(total, known, rtol=1e-3):
                    raise ScadvInputError(
                        f"{source} holds counts of only some genes (its cell totals are not "
                        f"the library sizes in obs[{K.LIBRARY_SIZE!r}]), so "
                        f"{self.describe()} cannot normalise cells as its own preprocessing "
                        "does. Attack the counts of all genes (e.g. the AnnData as read from "
                        "disk)."
                    )

    def _bound(self, genes: pd.Index) -> None:
        if self.mode == "counts":
            pos = genes.get_indexer(self.model.genes)
            if (pos < 0).any():
                missing = self.model.genes[pos < 0]
                raise ScadvInputError(
                    f"{int((pos < 0).sum())} of the {len(self.model.genes)} genes "
                    f"{self.describe()} reads are not in adata.var_names (e.g. "
                    f"{missing[:6].tolist()}). Attack data that measured them, named the same "
                    "way."
                )
            self._pos = pos

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """The model input of rows of the attacked matrix (the model's own preprocessing)."""
        recipe = self.model.preprocessing
        if self.mode == "model":
            return np.asarray(x, dtype=np.float32)
        if self.mode == "counts":
            if self._pos is None:
                raise ScadvInputError(f"bind {self.describe()} to an AnnData's genes first.")
            counts = np.asarray(x, dtype=np.float32)
            library = counts.sum(axis=1, dtype=np.float64)
            lognorm = R.lognormalize(counts[:, self._pos],
                                     target_sum=float(recipe["target_sum"]),
                                     library_size=library)
            return R.lognorm_to_model(lognorm, recipe)
        return R.lognorm_to_model(np.asarray(x, dtype=np.float32), recipe)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of rows of the attacked matrix."""
        return M.infer(self.model.module, self.model_input(x), device=self.device)[1]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return M.probabilities(self.logits(x), self.model.output)

    def _output(self) -> str:
        return self.model.output

    def _mlp(self) -> tuple[M.MLP, torch.device] | None:
        net = self.model.module
        if self.mode == "model" and isinstance(net, M.MLP):
            return net, self.device
        return None

    def _linear(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        wb = M.linear_weights(self.model.module) if self.mode == "model" else None
        if wb is None:
            return None
        w, b = wb
        return (w.detach().cpu().numpy().astype(np.float32),
                b.detach().cpu().numpy().astype(np.float32), 1.0)


class StoredModel(ModelClassifier):
    """A classifier stored in the AnnData (:func:`scadv.tl.train_classifier`: scadv's MLP;
    :func:`scadv.tl.add_model`: CellTypist and scikit-learn models), rebuilt from its plain
    arrays. It reads the model's input space (the AnnData prepared or transformed with its
    recipe), as every ``model=<key>`` tool does.

    Parameters
    ----------
    record
        The stored record (``adata.uns['scadv'][key]``).
    key
        Its key, for the results.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    """

    def __init__(self, record: Mapping[str, Any], *, key: str = K.DEFAULT_MODEL,
                 device: D.Device = "auto") -> None:
        super().__init__(MD.from_record(record), device=device)
        self.record = record
        self.key = key
        self.net = self.model.module

    def describe(self) -> str:
        if str(self.record.get("kind")) == M.MODEL_KIND:
            return f"scadv MLP {self.key!r}"
        return f"{self.model.name} {self.key!r}"

    def _attach(self, adata: AnnData | None, layer: str | None) -> None:
        """Always the model's input space (the attack checks the AnnData is in it)."""


#: The former name of :class:`StoredModel` (scadv's MLP was the only stored kind).
StoredMLP = StoredModel


class SklearnClassifier(Classifier):
    """A fitted scikit-learn estimator with ``predict_proba``.

    A :class:`~sklearn.ensemble.RandomForestClassifier` is the "scRF" of the adverSCarial paper;
    logistic regression and ``SVC(probability=True)`` work the same way. Random forests and
    extra-trees are evaluated by an exact fast path (only the trees whose path a modified gene
    lies on are re-traversed).

    Parameters
    ----------
    estimator
        Fitted, with ``classes_`` and ``predict_proba``.
    genes
        Names of its input columns in order; default ``estimator.feature_names_in_`` when it was
        fitted on a DataFrame, else all genes of the AnnData in order.
    """

    def __init__(self, estimator: Any, *, genes: Sequence[str] | None = None) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise ScadvInputError(
                f"the classifier {type(estimator).__name__} has no predict_proba, and the gene "
                "attacks need class probabilities (a cluster's score). Use an estimator that "
                "has it, e.g. SVC(probability=True), or wrap it in "
                "sklearn.calibration.CalibratedClassifierCV."
            )
        if not hasattr(estimator, "classes_"):
            raise ScadvInputError(
                f"the {type(estimator).__name__} has no classes_: fit it before attacking it."
            )
        if hasattr(estimator, "features") and hasattr(estimator, "coef_"):
            raise ScadvInputError(
                f"this {type(estimator).__name__} is the inner classifier of a CellTypist model "
                "(it carries CellTypist's .features): alone it skips the model's normalisation, "
                "scaler and clip, so scadv would attack another model than the one you run. "
                "Pass the CellTypist Model itself (classifier=model), or "
                "scadv.models.from_celltypist(model)."
            )
        self.estimator = estimator
        self._classes = [str(c) for c in np.asarray(estimator.classes_)]
        if genes is None and hasattr(estimator, "feature_names_in_"):
            genes = estimator.feature_names_in_
        self.genes = None if genes is None else np.asarray(genes).astype(str)

    def _bound(self, genes: pd.Index) -> None:
        n_in = getattr(self.estimator, "n_features_in_", None)
        if n_in is not None and int(n_in) != len(genes):
            raise ScadvInputError(
                f"the {type(self.estimator).__name__} was fitted on {n_in} genes, but the AnnData "
                f"has {len(genes)}. Fit it on the same matrix you attack (e.g. adata.X), or pass "
                "genes=[...] naming its input columns in order."
            )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*feature names.*")
            return np.asarray(self.estimator.predict_proba(x), dtype=np.float32)

    def describe(self) -> str:
        return f"scikit-learn {type(self.estimator).__name__}"

    def _forest(self) -> Any | None:
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
        from sklearn.tree import DecisionTreeClassifier

        est = self.estimator
        if isinstance(est, (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier)):
            if getattr(est, "n_outputs_", 1) == 1:
                return est
        return None

    def _relevant(self) -> np.ndarray | None:
        forest = self._forest()
        if forest is None:
            return None
        trees = getattr(forest, "estimators_", [forest])
        used = np.zeros(int(forest.n_features_in_), dtype=bool)
        for tree in trees:
            feat = tree.tree_.feature
            used[feat[feat >= 0]] = True
        return used


class FunctionClassifier(Classifier):
    """A plain callable ``fn(x) -> probabilities``.

    Parameters
    ----------
    fn
        Takes a dense float32 matrix (cells × genes) and returns class probabilities: an array
        (cells × classes) or a DataFrame whose columns are the class names.
    classes
        Class names for an array output; default: the DataFrame's columns, else ``'0'``,
        ``'1'``, …
    genes
        Names of its input columns in order; default all genes of the AnnData in order.
    rowwise
        Whether each cell is classified on its own (default). ``False``: ``fn`` is always called
        on a whole cluster (once per variant), never on stacked variants.
    name
        Name in the results; default the function's ``__name__``.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], *, classes: Sequence[str] | None = None,
                 genes: Sequence[str] | None = None, rowwise: bool = True,
                 name: str | None = None) -> None:
        if not callable(fn):
            raise ScadvInputError(f"FunctionClassifier needs a callable, got {type(fn).__name__}.")
        self.fn = fn
        self._classes = None if classes is None else [str(c) for c in classes]
        self.genes = None if genes is None else np.asarray(genes).astype(str)
        self.rowwise = bool(rowwise)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self.fn(x)
        if isinstance(out, pd.DataFrame):
            cols = [str(c) for c in out.columns]
            if self._classes is None:
                self._classes = cols
            elif cols != self._classes:
                raise ScadvInputError(
                    f"{self.describe()} returned columns {cols[:5]}…, not the classes "
                    f"{self._classes[:5]}… it returned before."
                )
            out = out.to_numpy()
        proba = np.asarray(out, dtype=np.float32)
        if proba.ndim != 2 or proba.shape[0] != x.shape[0]:
            raise ScadvInputError(
                f"{self.describe()} returned shape {proba.shape} for {x.shape[0]} cells; it must "
                "return class probabilities, one row per cell and one column per class."
            )
        if self._classes is None:
            self._classes = [str(i) for i in range(proba.shape[1])]
        elif proba.shape[1] != len(self._classes):
            raise ScadvInputError(
                f"{self.describe()} returned {proba.shape[1]} columns for "
                f"{len(self._classes)} classes."
            )
        return proba

    def describe(self) -> str:
        return f"function {self.name!r}"


class MarkerClassifier(Classifier):
    """A marker-based scorer (scType-like), a classifier that learned nothing.

    Per cell type, the score of a cell is the mean scaled expression of the type's positive
    markers minus the mean of its negative markers; probabilities are
    ``softmax(score / temperature)``, so a cell's label is its best-scoring type.

    Parameters
    ----------
    markers
        Cell type → positive markers (a list), or → ``{'positive': [...], 'negative': [...]}``,
        or → ``(positive, negative)``. Every marker must be among the attacked genes (for
        prepared data, the model genes: add missing ones with
        ``scadv.pp.prepare(adata, include_genes=[...])``).
    temperature
        Softmax temperature of the scores.
    """

    def __init__(self, markers: Mapping[str, Any], *, temperature: float = 1.0) -> None:
        if not isinstance(markers, Mapping) or not markers:
            raise ScadvInputError("markers must be a non-empty dict: cell type → marker genes.")
        if not temperature > 0:
            raise ScadvInputError(f"temperature must be positive, got {temperature}.")
        self.markers: dict[str, tuple[list[str], list[str]]] = {}
        for cell_type, spec in markers.items():
            if isinstance(spec, Mapping):
                pos, neg = list(spec.get("positive", ())), list(spec.get("negative", ()))
            elif isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], str):
                pos, neg = list(spec[0]), list(spec[1])
            elif isinstance(spec, str):
                pos, neg = [spec], []
            else:
                pos, neg = list(spec), []
            if not pos:
                raise ScadvInputError(f"cell type {cell_type!r} has no positive marker.")
            self.markers[str(cell_type)] = ([str(g) for g in pos], [str(g) for g in neg])
        self._classes = list(self.markers)
        self.temperature = float(temperature)
        self.genes = None
        self._w: np.ndarray | None = None

    def _bound(self, genes: pd.Index) -> None:
        wanted = sorted({g for pos, neg in self.markers.values() for g in (*pos, *neg)})
        missing = [g for g in wanted if g not in genes]
        if missing:
            raise ScadvInputError(
                f"{len(missing)} marker genes are not among the attacked genes (e.g. "
                f"{missing[:8]}). For prepared data, make them model genes: "
                "scadv.pp.prepare(adata, include_genes=[...]); or drop them from the markers."
            )
        w = np.zeros((len(self.markers), len(genes)), dtype=np.float32)
        for i, (pos, neg) in enumerate(self.markers.values()):
            w[i, genes.get_indexer(pos)] += 1.0 / len(pos)
            if neg:
                w[i, genes.get_indexer(neg)] -= 1.0 / len(neg)
        self._w = w

    def _weights(self) -> np.ndarray:
        """Marker weights (types × input genes), set by :meth:`bind`."""
        if self._w is None:
            raise ScadvInputError("bind the MarkerClassifier to an AnnData's genes first.")
        return self._w

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Per cell and type, mean positive minus mean negative marker expression."""
        return np.asarray(x, dtype=np.float32) @ self._weights().T

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return M.softmax(self.scores(x) / self.temperature)

    def describe(self) -> str:
        return f"marker scorer ({len(self.markers)} types)"

    def _linear(self) -> tuple[np.ndarray, np.ndarray, float]:
        return self._weights(), np.zeros(len(self.markers), dtype=np.float32), self.temperature

    def _relevant(self) -> np.ndarray:
        return np.abs(self._weights()).sum(axis=0) > 0


#: Canonical PBMC markers of Seurat's PBMC3k tutorial, per Seurat cell type, as
#: ``{'positive': [...], 'negative': [...]}``, for :class:`MarkerClassifier`. CD14, CD8A, IL7R,
#: CCR7 and CD3E are not among the 2,000 default highly variable genes of PBMC3k: prepare with
#: ``include_genes=scadv.classifiers.marker_genes(scadv.classifiers.PBMC_MARKERS)``.
PBMC_MARKERS: dict[str, dict[str, list[str]]] = {
    "Naive CD4 T": {"positive": ["IL7R", "CCR7"], "negative": ["S100A4"]},
    "Memory CD4 T": {"positive": ["IL7R", "S100A4"], "negative": ["CCR7"]},
    "CD14+ Mono": {"positive": ["CD14", "LYZ"], "negative": ["FCGR3A"]},
    "B": {"positive": ["MS4A1", "CD79A"], "negative": []},
    "CD8 T": {"positive": ["CD8A"], "negative": []},
    "FCGR3A+ Mono": {"positive": ["FCGR3A", "MS4A7"], "negative": []},
    "NK": {"positive": ["GNLY", "NKG7"], "negative": ["CD3E"]},
    "DC": {"positive": ["FCER1A", "CST3"], "negative": []},
    "Platelet": {"positive": ["PPBP"], "negative": []},
}


def marker_genes(markers: Mapping[str, Any]) -> list[str]:
    """Every gene named in a marker dictionary (positive and negative), sorted."""
    return sorted({g for pos, neg in MarkerClassifier(markers).markers.values()
                   for g in (*pos, *neg)})


def resolve(classifier: Any, adata: Any, *, device: D.Device = "auto") -> Classifier:
    """Turn what the user passed as ``classifier=`` into a (not yet bound) :class:`Classifier`."""
    from .tl import _common as C

    if classifier is None or isinstance(classifier, str):
        key = K.DEFAULT_MODEL if classifier is None else classifier
        record = C.model_record(adata, key)
        return StoredModel(record, key=key, device=device)
    if isinstance(classifier, Classifier):
        return classifier
    if (model := MD.as_model(classifier)) is not None:
        return ModelClassifier(model, device=device)
    if isinstance(classifier, nn.Module):
        raise ScadvInputError(
            f"a bare torch module ({type(classifier).__name__}) does not say which genes it "
            "reads, nor how its input is preprocessed. Wrap it: scadv.models.from_torch(module, "
            "genes=[...], classes=[...], preprocessing=...)."
        )
    if hasattr(classifier, "fit") or hasattr(classifier, "classes_"):
        return SklearnClassifier(classifier)
    if hasattr(classifier, "predict_proba"):
        return SklearnClassifier(classifier)
    if callable(classifier):
        return FunctionClassifier(classifier)
    raise ScadvInputError(
        f"classifier must be None (the stored scadv MLP), the key of a stored classifier, a "
        f"scadv.models.Model, a CellTypist Model, a fitted scikit-learn estimator with "
        f"predict_proba, a callable returning class probabilities, or a "
        f"scadv.classifiers.Classifier; got {type(classifier).__name__}."
    )
