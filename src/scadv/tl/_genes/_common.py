"""Pieces shared by the gene-level attacks: input checks, the attacked matrix, clusters, genes,
evaluators, and writing results."""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys as K
from ... import _parallel as PAR
from ... import _provenance as P
from ... import _recipe as R
from ... import _store as ST
from ... import _validate as V
from ... import classifiers as CL
from ..._errors import ScadvInputError
from ..._results import write_results
from ..._store import Perturbation
from . import _engine as E
from . import _matrix as MX
from . import _modifications as MOD
from ._matrix import AttackedMatrix

Genes = Sequence[str] | np.ndarray | None


@dataclass
class Setup:
    """What every gene-level attack works on."""

    adata: AnnData
    #: The attacked matrix (cells × genes): the model input of a stored scadv classifier, else
    #: ``adata.X`` or ``adata.layers[layer]``.
    x: AttackedMatrix
    source: str
    var_names: np.ndarray
    clf: CL.Classifier
    clusters: pd.Series
    cluster_key: str
    #: ``classifier`` key of a stored scadv model, else None.
    model_key: str | None
    #: Whose model input ``x`` is: a stored classifier's key, ``''`` for the AnnData's own
    #: recipe (``uns['scadv']['prepare']``), None when ``x`` is a matrix of the AnnData as stored.
    space_of: str | None = None
    #: That matrix: ``'X'`` or a layer name.
    matrix_name: str = "X"
    counter: E.Counter = field(default_factory=E.Counter)
    started: float = field(default_factory=time.perf_counter)
    #: Whether the attacked matrix is a dask array: per-cluster scans then run on Dask.
    lazy: bool = False

    @property
    def classes(self) -> list[str]:
        return self.clf.classes

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def scan(self) -> Scan:
        """What a per-cluster task needs of this setup (no AnnData, no matrix)."""
        return Scan(clf=self.clf, var_names=self.var_names, classes=self.classes)


@dataclass
class Scan:
    """The part of a :class:`Setup` a per-cluster scan needs: the bound classifier and the
    names of genes and classes. Small and picklable: a task on a Dask worker gets this, the
    cluster's rows and its new values (see :func:`scadv._parallel.run`)."""

    clf: CL.Classifier
    var_names: np.ndarray
    classes: list[str]
    counter: E.Counter = field(default_factory=E.Counter)


def setup(adata: AnnData, *, cluster_key: str, classifier: Any, layer: str | None,
          device: Any, action: str) -> Setup:
    """Validate the common inputs and bind the classifier to the attacked genes."""
    if not isinstance(cluster_key, str):
        raise ScadvInputError(f"cluster_key must name an obs column, got {cluster_key!r}.")
    clusters = V.labels(adata, cluster_key)
    clf = CL.resolve(classifier, adata, device=device)
    model_key = None
    if isinstance(clf, CL.StoredMLP):
        if classifier is None or isinstance(classifier, str):
            model_key = clf.key
        recipe = clf.record["prepare"]
        rows = ST.reader(adata, recipe, layer=layer)
        source = f"the model input of {'adata' if layer is None else repr(layer)}"
        x = MX.from_source(rows.__getitem__, rows.shape[0], rows.shape[1],
                           R.zero_level(recipe), source)
        var_names = np.asarray(clf.record["genes"]).astype(str)
        space_of: str | None = clf.key
    elif layer is None and (prepared := R.stored(adata)) is not None and not (
            isinstance(clf, CL.ModelClassifier)
            and not R.same(prepared, clf.model.preprocessing)):
        # prepared data: the attacks modify the model input (z-scores of the model genes); a
        # model with its own preprocessing reads the AnnData's matrix instead (below)
        recipe = prepared
        rows = ST.reader(adata, recipe)
        source = "the prepared model input of adata"
        x = MX.from_source(rows.__getitem__, rows.shape[0], rows.shape[1],
                           R.zero_level(recipe), source)
        var_names = np.asarray(recipe["genes"]).astype(str)
        space_of = ""
    else:
        matrix = V.matrix(adata, layer)
        source = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        x = MX.from_matrix(matrix, source)
        var_names = np.asarray(adata.var_names).astype(str)
        space_of = None
    # a classifier of the AnnData's own matrix learns what that matrix holds (counts,
    # log-normalised values, ...): a model with its own preprocessing applies it
    bound = clf.bind(var_names, adata=adata if space_of is None else None, layer=layer)
    lazy = any(PAR.lazy(m) for m in (adata.X, adata.layers.get(layer) if layer else None,
                                     None if adata.raw is None else adata.raw.X))
    return Setup(adata=adata, x=x, source=source, var_names=var_names, clf=bound,
                 clusters=clusters, cluster_key=cluster_key, model_key=model_key,
                 space_of=space_of, matrix_name="X" if layer is None else layer, lazy=lazy)


def cluster_mask(s: Setup, target: Any) -> np.ndarray:
    """Boolean mask of the cells of cluster ``target``, with a clear error."""
    if isinstance(target, (list, tuple, np.ndarray)):
        raise ScadvInputError(f"target must be one cluster name here, got {target!r}.")
    mask = (s.clusters == str(target)).to_numpy()
    if not mask.any():
        known = sorted(s.clusters.dropna().unique().tolist())
        raise ScadvInputError(
            f"cluster {target!r} is not in obs[{s.cluster_key!r}] (clusters: {known[:20]}"
            f"{' …' if len(known) > 20 else ''}). Pass one of those as target."
        )
    return mask


def all_clusters(s: Setup) -> list[str]:
    """Cluster names in the order of the column's categories (else sorted)."""
    col = s.adata.obs[s.cluster_key]
    present = set(s.clusters.dropna().unique())
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories if str(c) in present]
    return sorted(present)


def gene_index(s: Setup, genes: Genes, *, what: str = "genes") -> np.ndarray:
    """Positions in ``var_names`` of the requested genes (all genes when ``None``)."""
    if genes is None:
        return np.arange(len(s.var_names))
    if not isinstance(genes, (str, list, tuple, np.ndarray, pd.Index, pd.Series)):
        raise ScadvInputError(f"{what} must be gene names or a boolean mask over var_names, "
                              f"got {type(genes).__name__}.")
    arr = np.asarray([genes] if isinstance(genes, str) else list(genes))
    if arr.ndim != 1:
        raise ScadvInputError(f"{what} must be one-dimensional, got shape {arr.shape}.")
    if arr.dtype == bool:
        if arr.shape != (len(s.var_names),):
            raise ScadvInputError(f"a boolean {what} mask needs {len(s.var_names)} entries, got "
                                  f"{arr.shape}.")
        idx = np.flatnonzero(arr)
    else:
        pos = pd.Index(s.var_names).get_indexer(arr.astype(str))
        if (pos < 0).any():
            raise ScadvInputError(
                f"{int((pos < 0).sum())} {what} are not among the attacked genes "
                f"(adata.var_names), e.g. {arr[pos < 0][:6].tolist()}. Check the spelling; for "
                "prepared data only model genes can be modified (add genes with "
                "scadv.pp.prepare(adata, include_genes=[...]))."
            )
        if len(np.unique(pos)) != len(pos):
            raise ScadvInputError(f"{what} lists some genes twice.")
        idx = pos
    if not len(idx):
        raise ScadvInputError(f"the {what} selection is empty; name at least one gene.")
    return np.asarray(idx, dtype=np.int64)


def _input_cols(s: Setup | Scan) -> np.ndarray:
    """Positions among the attacked genes of the classifier's input columns."""
    if s.clf.cols is None:  # setup() binds the classifier, which sets them
        raise ValueError("the classifier is not bound to the attacked genes.")
    return s.clf.cols


def classifier_cols(s: Setup, idx: np.ndarray) -> np.ndarray:
    """For attacked genes ``idx``: their column in the classifier's input, -1 when the
    classifier does not read them (or provably ignores them)."""
    cols = _input_cols(s)
    col_of = np.full(len(s.var_names), -1, dtype=np.int64)
    col_of[cols] = np.arange(len(cols))
    relevant = s.clf._relevant()
    if relevant is not None:
        col_of[cols[~np.asarray(relevant, dtype=bool)]] = -1
    return col_of[idx]


def block(s: Setup, mask: np.ndarray) -> np.ndarray:
    """The cluster's cells × all attacked genes, dense float32."""
    return np.ascontiguousarray(s.x.rows(np.flatnonzero(mask)), dtype=np.float32)


def evaluator(s: Setup | Scan, cluster_block: np.ndarray, *, batch_rows: int,
              fast: bool = True) -> E.Evaluator:
    """The fastest exact evaluator for the cluster (the classifier's columns of its block)."""
    return E.evaluator(s.clf, cluster_block[:, _input_cols(s)], counter=s.counter,
                       batch_rows=batch_rows, fast=fast)


def check_common(*, batch_rows: int, seed: Any) -> None:
    if int(batch_rows) < 1:
        raise ScadvInputError(f"batch_rows must be ≥ 1, got {batch_rows}.")
    if not isinstance(seed, (int, np.integer)):
        raise ScadvInputError(f"seed must be an integer, got {seed!r}.")


def rng_for(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and names (e.g. the cluster), stable across runs."""
    return np.random.default_rng([int(seed), *(zlib.crc32(p.encode()) for p in parts)])


def values_for(s: Setup, mods: Sequence[MOD.Modification], idx: np.ndarray, mask: np.ndarray,
               seed: int, target: str) -> np.ndarray:
    """(modifications × cluster cells × genes) new values of the attacked genes ``idx``."""
    return MOD.new_values(mods, s.x, idx, mask, rng_for(seed, "values", str(target)))


def default_key(method: str, s: Setup) -> str:
    return K.default_attack_key(method, s.model_key) if s.model_key else method


def base_record(s: Setup, *, method: str, params: Mapping[str, Any], seed: int | None
                ) -> dict[str, Any]:
    """Fields every gene-attack record carries."""
    return {
        "method": method,
        "cluster_key": s.cluster_key,
        "classifier": s.clf.describe(),
        "classes": np.asarray(s.classes, dtype=str),
        "source": s.source,
        "n_classifier_calls": int(s.counter.calls),
        "n_rows_classified": int(s.counter.rows),
        "seconds": float(s.elapsed()),
        "provenance": P.record(params, seed=seed),
    }


def label_names(s: Setup | Scan, labels: np.ndarray) -> np.ndarray:
    return np.asarray(s.classes, dtype=object)[np.asarray(labels, dtype=np.int64)].astype(str)


def write(s: Setup, *, step: str, start: datetime, key: str, rec: dict[str, Any],
          mask: np.ndarray | None = None, modified: np.ndarray | None = None,
          pred: np.ndarray | None = None, add_layer: bool = False, add_obs: bool = False
          ) -> None:
    """Write a record, and on request the modified matrix and the cluster's new predictions.

    ``modified`` are the cluster's rows after the attack (cluster cells × all attacked genes);
    ``pred`` the cluster cells' new predicted classes (indices into ``classes``).
    """
    obs: dict[str, Any] = {}
    perturbations = []
    if add_layer and modified is not None and mask is not None:
        name = K.gene_attack_layer(key)
        idx = np.flatnonzero(mask)
        delta = np.asarray(modified, dtype=np.float32) - s.x.rows(idx)
        if s.space_of is not None:
            cells, rows = ST.from_dense(idx, delta)
            perturbations.append(Perturbation(name=name, cells=cells, rows=rows, space="model",
                                              model=s.space_of, run=key))
        else:
            # a classifier of the AnnData's own matrix: the change of that matrix
            cells, rows = ST.from_dense(idx, delta)
            perturbations.append(Perturbation(name=name, cells=cells, rows=rows, space="var",
                                              model="", run=key, matrix=s.matrix_name))
        rec["layer"] = name
    if add_obs and pred is not None:
        codes = np.full(s.adata.n_obs, -1)
        codes[mask] = pred
        col = K.gene_attack_pred(key)
        obs[col] = pd.Categorical.from_codes(codes, categories=list(s.classes))
        rec["obs"] = col
    write_results(s.adata, step=step, start=start, uns={key: rec}, obs=obs or None,
                  perturbations=perturbations)
