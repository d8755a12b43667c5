"""The preprocessing recipe: how expression becomes the model's input, for old and new cells.

A recipe is the plain dictionary :func:`scadv.pp.prepare` stores in
``adata.uns['scadv']['prepare']`` and every classifier carries a copy of. Both ``prepare`` and
the application to new data go through :func:`lognorm_to_model`, so a cell transformed later
is transformed exactly like the training cells were.

Keys
----
``input_kind``
    What ``prepare`` received: ``'counts'``, ``'lognorm'`` or ``'scaled'``.
``genes``
    Model genes, in the model's input order.
``mean``, ``std``
    Per-gene z-score statistics of the log-normalised data (``std`` of constant genes is 1).
``has_stats``
    False only for already-scaled input without a log-normalised ``.raw`` to take statistics
    from; such a model can only be applied to data scaled the same way.
``max_value``
    Clip of the z-scores to ``[-max_value, max_value]`` (0: no clip).
``target_sum``
    Library size each cell is normalised to before ``log1p`` (counts input).
``zero_level``
    Per gene, the model-space value of zero expression (for "keep zeros at zero" attacks).
``x_min``, ``x_max``
    Per gene, the observed range in model space over the prepared cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from scipy import sparse

from . import _keys as K
from . import _records as REC
from . import _validate as V
from ._errors import ScadvInputError

MissingGenes = Literal["error", "mean"]


def lognormalize(counts: np.ndarray | sparse.spmatrix, *, target_sum: float,
                 library_size: np.ndarray | None = None) -> sparse.csr_matrix | np.ndarray:
    """``log1p(counts / library_size * target_sum)``, sparse in, sparse out.

    ``library_size`` defaults to each cell's total over all columns of ``counts``.
    """
    if library_size is None:
        library_size = np.asarray(counts.sum(axis=1)).ravel()
    library_size = np.asarray(library_size, dtype=np.float64)
    empty = library_size <= 0
    if empty.any():
        raise ScadvInputError(
            f"{int(empty.sum())} cells have zero total counts, so they cannot be normalised. "
            "Remove them first: sc.pp.filter_cells(adata, min_counts=1)."
        )
    scale = (target_sum / library_size).astype(np.float32)
    if sparse.issparse(counts):
        out = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
        out = sparse.csr_matrix(sparse.diags(scale) @ out)
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(counts, dtype=np.float32) * scale[:, None])


def lognorm_to_model(lognorm: np.ndarray | sparse.spmatrix, recipe: Mapping[str, Any]
                     ) -> np.ndarray:
    """Z-score and clip log-normalised expression of the model genes (columns aligned)."""
    x = lognorm.toarray() if V.is_sparse(lognorm) else np.array(lognorm, dtype=np.float32)
    x = x.astype(np.float32, copy=False)
    mean = np.asarray(recipe["mean"], dtype=np.float32)
    std = np.asarray(recipe["std"], dtype=np.float32)
    x -= mean
    x /= std
    max_value = float(recipe["max_value"])
    if max_value > 0:
        np.clip(x, -max_value, max_value, out=x)
    return x


def zscore_stats(lognorm: np.ndarray | sparse.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (ddof=1, as :func:`scanpy.pp.scale`; 0 → 1)."""
    n = lognorm.shape[0]
    if V.is_sparse(lognorm):
        mean = np.asarray(lognorm.mean(axis=0), dtype=np.float64).ravel()
        sq = np.asarray(lognorm.multiply(lognorm).mean(axis=0), dtype=np.float64).ravel()
    else:
        arr = np.asarray(lognorm, dtype=np.float64)
        mean = arr.mean(axis=0)
        sq = (arr * arr).mean(axis=0)
    var = np.maximum(sq - mean**2, 0.0) * (n / max(n - 1, 1))
    std = np.sqrt(var)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def zero_level(recipe: Mapping[str, Any]) -> np.ndarray:
    """Model-space value of zero expression per gene."""
    z = -np.asarray(recipe["mean"], dtype=np.float32) / np.asarray(recipe["std"], dtype=np.float32)
    max_value = float(recipe["max_value"])
    return np.clip(z, -max_value, max_value) if max_value > 0 else z


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two recipes transform data identically."""
    if a is None or b is None:
        return False
    ga, gb = np.asarray(a["genes"]).astype(str), np.asarray(b["genes"]).astype(str)
    if ga.shape != gb.shape or not np.array_equal(ga, gb):
        return False
    return (np.allclose(np.asarray(a["mean"]), np.asarray(b["mean"]))
            and np.allclose(np.asarray(a["std"]), np.asarray(b["std"]))
            and float(a["max_value"]) == float(b["max_value"])
            and str(a["input_kind"]) == str(b["input_kind"]))


def stored(adata: AnnData) -> dict | None:
    """The recipe stored in ``adata`` by :func:`scadv.pp.prepare`, if any (validated by
    :func:`scadv._records.recipe`: a malformed one is an error, not silently ignored)."""
    ns = adata.uns.get(K.UNS)
    if isinstance(ns, Mapping) and K.PREPARE in ns:
        return dict(REC.recipe(ns[K.PREPARE]))
    return None


def align(x: np.ndarray | sparse.spmatrix, names: Sequence[str] | np.ndarray,
          genes: Sequence[str] | np.ndarray, *,
          missing_genes: MissingGenes, what: str, fill: float | np.ndarray = 0.0,
          ) -> tuple[np.ndarray | sparse.spmatrix, np.ndarray]:
    """Columns of ``x`` in the order of ``genes``; returns ``(matrix, missing_mask)``.

    Missing genes raise unless ``missing_genes='mean'``, in which case their columns are
    filled with ``fill`` (the caller chooses the value that means "training mean").
    """
    index = pd.Index(np.asarray(names).astype(str))
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ScadvInputError(
            f"{what} has duplicated gene names (e.g. {dup}); genes are matched by name. "
            "Run adata.var_names_make_unique() first."
        )
    pos = index.get_indexer(np.asarray(genes).astype(str))
    missing = pos < 0
    if missing.any():
        examples = np.asarray(genes)[missing][:8].tolist()
        if missing_genes != "mean":
            raise ScadvInputError(
                f"{int(missing.sum())} of the model's {len(genes)} genes are missing from {what} "
                f"(e.g. {examples}). Use data that measured these genes with the same gene "
                "naming (var_names), or pass missing_genes='mean' to set them to their training "
                "mean (a neutral value; predictions then rest on the remaining genes)."
            )
        logg.warning(
            f"{int(missing.sum())} of {len(genes)} model genes are missing from {what} "
            f"(e.g. {examples}); they are set to their training mean."
        )
    cols = x[:, np.where(missing, 0, pos)]
    if missing.any():
        cols = cols.toarray() if V.is_sparse(cols) else np.array(cols, dtype=np.float32)
        cols[:, missing] = np.broadcast_to(fill, (len(genes),))[missing] if np.ndim(fill) else fill
    return cols, missing


@dataclass
class ModelInput:
    """The model-space matrix for an AnnData and what it was built from."""

    x: np.ndarray
    #: Where it came from, e.g. ``'adata.X'`` or ``'adata.raw'``.
    source: str
    #: Kind of that source: ``'prepared'``, ``'counts'``, ``'lognorm'`` or ``'scaled'``.
    kind: str
    #: Log-normalised values of all the source's genes (counts / log-normalised sources).
    lognorm: np.ndarray | sparse.spmatrix | None = None
    #: Library sizes used for normalisation (counts sources).
    library_size: np.ndarray | None = None
    #: Model genes the source lacked (filled with their training mean).
    missing: np.ndarray | None = None


def model_input(adata: AnnData, recipe: Mapping[str, Any], *, layer: str | None = None,
                missing_genes: MissingGenes = "error", what: str = "adata") -> ModelInput:
    """The model-space matrix (cells × model genes, float32) for any AnnData.

    Tried in this order; the first that applies is used:

    1. ``adata`` was prepared with this very recipe: ``adata.X``, or ``layers[layer]`` when
       that layer holds model-space values (e.g. an adversarial layer).
    2. ``layers[layer]`` if given, else ``adata.X`` then ``adata.raw``, whichever holds raw
       counts or log-normalised values covering the model genes: the recipe is applied
       (normalise counts to ``target_sum`` using each cell's total over all its genes, log1p,
       z-score with the stored statistics, clip).
    3. Already-scaled ``X`` when the model itself was trained on already-scaled input
       (logged as an assumption).

    Anything else is an error that says which input would work.
    """
    genes = np.asarray(recipe["genes"]).astype(str)
    own = stored(adata)
    if same(own, recipe):
        if layer is None:
            x, _ = align(adata.X, adata.var_names, genes, missing_genes="error", what=what)
            return ModelInput(_dense(x), source=f"{what}.X", kind="prepared")
        x = V.matrix(adata, layer)
        V.check_finite(x, what=f"{what}.layers[{layer!r}]")
        if V.detect_kind(x, what=f"{what}.layers[{layer!r}]") == "scaled":
            # a layer already in model space, e.g. an adversarial layer written by scadv
            x, _ = align(x, adata.var_names, genes, missing_genes="error", what=what)
            return ModelInput(_dense(x), source=f"{what}.layers[{layer!r}]", kind="prepared")

    sources: list[tuple[Any, Sequence[str], str]] = []
    if layer is not None:
        sources.append((V.matrix(adata, layer), adata.var_names, f"{what}.layers[{layer!r}]"))
    else:
        sources.append((adata.X, adata.var_names, f"{what}.X"))
        if adata.raw is not None:
            sources.append((adata.raw.X, adata.raw.var_names, f"{what}.raw"))

    tried = []
    for x, names, label in sources:
        V.check_finite(x, what=label)
        kind = V.detect_kind(x, what=label)
        tried.append(f"{label} looks {kind}")
        if kind == "scaled":
            if str(recipe["input_kind"]) == "scaled" and own is None and label.endswith(".X"):
                logg.warning(
                    f"{label} is already scaled; assuming it was scaled like the model's "
                    "training data (same genes, same statistics)."
                )
                z, missing = align(x, names, genes, missing_genes=missing_genes, what=label)
                return ModelInput(_dense(z), source=label, kind=kind, missing=missing)
            continue
        if not bool(recipe["has_stats"]):
            raise ScadvInputError(
                "the model was trained on already-scaled data without a log-normalised .raw, so "
                "scadv does not know how to scale new counts or log-normalised values. Pass new "
                "data scaled the same way (same genes), or prepare the training data from counts."
            )
        library_size = None
        lognorm = x
        if kind == "counts":
            if len(names) == len(genes) and K.LIBRARY_SIZE in adata.obs:
                library_size = adata.obs[K.LIBRARY_SIZE].to_numpy()  # a prepared counts layer
            else:
                if len(names) <= len(genes):
                    logg.warning(
                        f"{label} has only {len(names)} genes; library sizes are computed from "
                        "these alone, which differs from normalising by all genes."
                    )
                library_size = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
            lognorm = lognormalize(x, target_sum=float(recipe["target_sum"]),
                                   library_size=library_size)
        aligned, missing = align(lognorm, names, genes, missing_genes=missing_genes, what=label,
                                 fill=np.asarray(recipe["mean"], dtype=np.float32))
        return ModelInput(lognorm_to_model(aligned, recipe), source=label, kind=kind,
                          lognorm=lognorm, library_size=library_size, missing=missing)
    raise ScadvInputError(
        f"cannot build the model's input from {what}: {'; '.join(tried)}, and none is raw counts "
        "or log-normalised data covering the model genes. Pass counts or log1p-normalised data "
        "(all genes), e.g. the AnnData as read from disk, or use layer=... to point at them."
    )


def _dense(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    dense = x.toarray() if V.is_sparse(x) else np.asarray(x)
    return np.ascontiguousarray(dense, dtype=np.float32)
