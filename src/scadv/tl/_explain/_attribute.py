"""``scadv.tl.attribute``: per-cell and per-class gene attributions of a classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scanpy.logging as logg
import torch
from anndata import AnnData
from torch import nn

from ... import _device as D
from ... import _keys as K
from ... import _provenance as P
from ... import _recipe as R
from ... import _rows as RW
from ... import _store as ST
from ... import _validate as V
from ... import models as MD
from ..._errors import ScadvInputError
from ..._results import write_results
from .. import _common as C
from .._models import _resolve as RS
from . import _engine as X
from . import _rankings as RK

Method = Literal["saliency", "grad_x_input", "integrated_gradients", "smoothgrad", "deeplift",
                 "deepshap", "occlusion", "lime"]
Baseline = Literal["zero_expression", "mean"] | np.ndarray
ModelArg = str | MD.Model | nn.Module | Callable[[np.ndarray], np.ndarray]


def attribute(
    adata: AnnData,
    *,
    method: Method = "integrated_gradients",
    model: ModelArg = K.DEFAULT_MODEL,
    target: Literal["prediction", "label"] | str = "prediction",
    cells: C.Cells = "test",
    baseline: Baseline = "zero_expression",
    n_steps: int = 50,
    n_samples: int | None = None,
    noise: float = 0.2,
    layer: str | None = None,
    label_key: str | None = None,
    classes: Sequence[str] | None = None,
    per_cell: bool = False,
    n_top: int = 100,
    key_added: str | None = None,
    batch_size: int = 4096,
    seed: int = 42,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    r"""Gene attributions: which genes drive the classifier's decision, per cell and per class.

    Each selected cell is explained toward one class (its predicted class by default); the
    per-class ranking of a class is the mean attribution over the cells explained toward it,
    highest first. Gradient methods run through `captum <https://captum.ai>`_ and explain the
    target class's logit; occlusion and LIME only call the model, so they also explain
    black-box classifiers (then the target class's probability).

    ``'saliency'``
        :math:`|\partial f / \partial x_g|` (unsigned: sensitivity in either direction).
    ``'grad_x_input'``
        :math:`\partial f / \partial x_g \cdot (x_g - b_g)`, gradient × input relative to the
        baseline :math:`b` (with ``baseline='mean'``, :math:`b = 0` in z-score space: classic
        gradient × input).
    ``'integrated_gradients'``
        :math:`(x_g - b_g) \int_0^1 \partial f(b + t(x - b)) / \partial x_g \, dt`
        (``n_steps`` Gauss–Legendre points). The attributions of a cell sum to
        :math:`f(x) - f(b)`; the gap (the *convergence delta*) is reported.
    ``'smoothgrad'``
        Mean :math:`|\partial f / \partial x_g|` over ``n_samples`` copies of the cell with
        Gaussian noise of SD ``noise`` (z-score units) added (unsigned).
    ``'deeplift'``
        DeepLIFT (rescale rule) relative to the baseline; sums to :math:`f(x) - f(b)`.
    ``'deepshap'``
        DeepSHAP: DeepLIFT averaged over ``n_samples`` reference cells drawn from the model's
        training split (``baseline`` is not used): SHAP values against the training data.
    ``'occlusion'``
        :math:`f(x) - f(x \text{ with gene } g \text{ set to } b_g)`, one gene at a time.
    ``'lime'``
        LIME-style: ``n_samples`` random binary gene masks (each gene kept with probability
        ½, dropped genes set to the baseline), a kernel-weighted ridge regression of the
        output on the masks; its coefficients are the attributions. One set of masks serves all
        cells, so one fit explains them all.

    **Baseline.** ``'zero_expression'`` (default): every gene at zero expression (its
    model-space zero level): the cell's measured expression is what is explained, genes a cell
    does not express get no attribution, and a gene ranks high for a class when the class's
    cells express it and the model uses it, which is what a marker is. ``'mean'``: every gene
    at its training mean (the zero vector in z-score space): "why this class rather than an
    average cell", which also credits the *absence* of other types' markers. An array gives
    a custom baseline (model space, one value per gene).

    Parameters
    ----------
    adata
        Cells to explain: prepared data, or any data :func:`scadv.tl.predict` accepts
        (genes are matched by name and the model's recipe applied).
    method
        One of the methods above.
    model
        Key of a stored classifier of any kind (default), a :class:`scadv.models.Model` or
        CellTypist model object (explained in its own input space, through its own
        preprocessing; registered in ``adata`` first, see :func:`scadv.tl.pgd`), a
        differentiable ``torch.nn.Module``
        mapping ``adata.X`` rows to logits (any method), or a black-box callable mapping a
        numpy matrix of ``adata.X`` rows to class probabilities (``'occlusion'`` and
        ``'lime'`` only).
    target
        Class each cell is explained toward: ``'prediction'`` (default; no labels needed),
        ``'label'`` (the true label, from ``label_key``; unlabelled cells are skipped) or a
        class name (every selected cell toward that class).
    cells
        ``'test'`` (the model's test split; default), ``'all'``, cell names or a boolean mask.
    baseline
        ``'zero_expression'``, ``'mean'`` or an array (see above).
    n_steps
        Integration points of integrated gradients.
    n_samples
        Noisy copies (SmoothGrad, default 25), reference cells (DeepSHAP, default 50) or
        perturbed samples (LIME, default 1000).
    noise
        SD of SmoothGrad's noise, in z-score units.
    layer
        Explain ``adata.layers[layer]`` instead of ``X`` (e.g. an adversarial layer
        ``'scadv_pgd_eps0.1'``).
    label_key
        Labels for ``target='label'``; default the stored model's ``label_key``.
    classes
        Class names of a ``nn.Module`` or callable model's outputs (default ``'0'``, ``'1'``, …).
    per_cell
        Also store every cell's attributions (cells × genes).
    n_top
        Genes per class in the ranking table.
    key_added
        Name of this run; default ``'attr_<method>'`` (``'attr_<method>_<model>'`` for a model
        other than the default one, ``'attr_<method>_custom'`` for a model object).
    batch_size
        Model rows per forward pass (IG, SmoothGrad, DeepSHAP, occlusion and LIME expand each
        cell into many rows; cells are grouped to fill a batch).
    seed
        Seeds SmoothGrad's noise, DeepSHAP's reference cells and LIME's masks.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes (``k`` = key_added):

    ``adata.uns['scadv'][k]``
        ``scores`` (classes × genes: mean attribution per class), ``ranking`` (a DataFrame
        with the top ``n_top`` genes per class: ``class``, ``rank``, ``gene``, ``score``),
        ``classes``, ``genes``, ``n_cells_per_class``, ``cells`` and ``targets`` (the cells
        explained and the class each was explained toward), the method's parameters
        (``baseline``, ``baseline_values``, ``output``: ``'logit'`` or ``'probability'``,
        ``signed``), for IG / DeepLIFT / DeepSHAP ``delta_mean_abs``, ``delta_max_abs`` and
        ``delta_relative`` (mean :math:`|\delta|` / mean :math:`|f(x) - f(b)|`), and provenance.
    ``adata.layers['scadv_<k>']``
        With ``per_cell=True``: every explained cell's attributions (NaN for other cells) when
        ``adata``'s genes are the model's; otherwise in ``adata.obsm['scadv_<k>']`` (columns
        in the order of ``genes``).
    ``adata.obs['scadv_<k>_delta']``
        With ``per_cell=True`` and IG / DeepLIFT / DeepSHAP: each cell's convergence delta.
    """
    V.options(locals())
    V.name("method", method)
    V.positive_int("n_steps", n_steps)
    V.optional_int("n_samples", n_samples)
    V.nonneg("noise", noise)
    V.name("label_key", label_key, allow_none=True)
    V.names("classes", classes, allow_none=True)
    V.flag("per_cell", per_cell)
    V.positive_int("n_top", n_top)
    if isinstance(model, str):
        V.model_spec("model", model)
        if classes is not None:
            raise ScadvInputError("classes= names the outputs of an nn.Module or callable model; "
                                  "a stored classifier has its own classes. Leave classes=None.")
    if label_key is not None and label_key not in adata.obs:
        raise ScadvInputError(f"label_key {label_key!r} not found in adata.obs (columns: "
                              f"{list(adata.obs.columns)[:20]}).")
    if not isinstance(target, str):
        raise ScadvInputError(f"target must be 'prediction', 'label' or a class name, got "
                              f"{type(target).__name__}.")
    start = logg.info(f"attributing with {method}")
    params = P.call_params(locals(), attribute)
    adata = V.start(adata, copy=copy)
    check_method(method)
    setup = prepare(adata, method=method, model=model, baseline=baseline, n_steps=n_steps,
                    n_samples=n_samples, noise=noise, layer=layer, label_key=label_key,
                    classes=classes, batch_size=batch_size, seed=seed, device=device)
    if int(n_top) < 1:
        raise ScadvInputError(f"n_top must be ≥ 1, got {n_top}.")
    mask = C.select_cells(adata, cells, split_key=setup.split_key)
    targets = _targets(adata, setup, mask, target)
    keep = targets >= 0
    if not keep.any():
        raise ScadvInputError("none of the selected cells has a label to explain; use "
                              "target='prediction' or select labelled cells.")
    mask[np.flatnonzero(mask)[~keep]] = False
    targets = targets[keep]
    # the cells' input and attributions, and with per_cell every cell's row
    RW.check_fits((2 * int(mask.sum()) + (adata.n_obs if per_cell else 0))
                  * len(setup.genes) * 4, what=f"attributions of {int(mask.sum())} cells",
                  hint="Explain fewer cells (cells=... a subsample), or per_cell=False.")
    x = setup.x[mask]
    attr, delta = setup.explainer(x, targets, progress=progress)
    scores, counts = X.class_scores(attr, targets, len(setup.classes))
    key = key_added or K.default_attribution_key(method, setup.model_key)
    rec: dict[str, Any] = {
        "method": method,
        "model": setup.model_key,
        "target": target if target in ("prediction", "label") else f"class {target}",
        "output": "probability" if setup.explainer.black_box is not None else "logit",
        "signed": method not in X.UNSIGNED,
        "baseline": "training cells" if method == "deepshap" else setup.baseline_name,
        "baseline_values": setup.explainer.baseline,
        "n_steps": int(n_steps),
        "n_samples": int(setup.explainer.n_samples),
        "noise": float(noise),
        "layer": "None" if layer is None else layer,
        "label_key": setup.label_key,
        "classes": setup.classes,
        "genes": setup.genes,
        "scores": scores.astype(np.float32),
        "n_cells_per_class": counts.astype(np.int64),
        "ranking": RK.ranking_table(scores, setup.classes, setup.genes, n_top),
        "cells": np.asarray(adata.obs_names[mask]).astype(str),
        "targets": targets.astype(np.int64),
        "provenance": P.record(params, seed=seed, device=setup.explainer.device),
    }
    note = ""
    if delta is not None:
        gap = np.abs(setup.explainer._target_output(x, targets)
                     - setup.explainer._target_output(
                         np.broadcast_to(setup.explainer.baseline, x.shape).copy(), targets))
        if method == "deepshap":
            if (references := setup.explainer.references) is None:
                raise RuntimeError("internal: DeepSHAP without its reference cells")
            refs = setup.explainer.output(references).mean(axis=0)
            gap = np.abs(setup.explainer._target_output(x, targets) - refs[targets])
        rec["delta_mean_abs"] = float(np.mean(np.abs(delta)))
        rec["delta_max_abs"] = float(np.max(np.abs(delta)))
        rec["delta_relative"] = float(np.mean(np.abs(delta)) / max(np.mean(gap), 1e-12))
        note = f", convergence delta mean |δ| {rec['delta_mean_abs']:.2g}"
    layers: dict[str, np.ndarray] = {}
    obsm: dict[str, np.ndarray] = {}
    obs: dict[str, Any] = {}
    if per_cell:
        full = np.full((adata.n_obs, len(setup.genes)), np.nan, dtype=np.float32)
        full[mask] = attr
        in_model_space = adata.n_vars == len(setup.genes) and np.array_equal(
            np.asarray(adata.var_names).astype(str), setup.genes)
        (layers if in_model_space else obsm)[K.attribution_cells(key)] = full
        rec["per_cell"] = "layers" if in_model_space else "obsm"
        if delta is not None:
            col = np.full(adata.n_obs, np.nan)
            col[mask] = delta
            obs[K.attribution_delta(key)] = col
    write_results(adata, step=f"{method} attributions of {int(mask.sum())} cells{note}",
                  start=start, uns={key: rec}, layers=layers, obsm=obsm, obs=obs)
    return adata if copy else None


def check_method(method: str) -> None:
    """Refuse an unknown method, listing the known ones."""
    if method not in X.METHODS:
        raise ScadvInputError(f"unknown attribution method {method!r}; choose one of "
                              f"{list(X.METHODS)}.")


@dataclass
class Setup:
    """A ready explainer with the model-space input of every cell of ``adata``."""

    explainer: X.Explainer
    #: The model input of every cell (computed when indexed: ``x[mask]``).
    x: np.ndarray | ST.LazyRows
    classes: list[str]
    genes: np.ndarray
    model_key: str
    split_key: str
    label_key: str
    baseline_name: str
    record: Mapping[str, Any] | None


def prepare(adata: AnnData, *, method: str, model: ModelArg, baseline: Baseline, n_steps: int,
            n_samples: int | None, noise: float, layer: str | None, label_key: str | None,
            classes: Sequence[str] | None, batch_size: int, seed: int,
            device: D.Device) -> Setup:
    """Resolve the model, its input, baseline and the explainer (checks everything first)."""
    if int(n_steps) < 2:
        raise ScadvInputError(f"n_steps must be ≥ 2, got {n_steps}.")
    if n_samples is not None and int(n_samples) < 1:
        raise ScadvInputError(f"n_samples must be ≥ 1 (or None), got {n_samples}.")
    if not noise >= 0:
        raise ScadvInputError(f"noise must be ≥ 0, got {noise}.")
    if int(batch_size) < 1:
        raise ScadvInputError(f"batch_size must be ≥ 1, got {batch_size}.")
    dev = D.resolve(device)
    record = None
    zero = None
    if isinstance(model, str) or (not isinstance(model, nn.Module)
                                  and MD.as_model(model) is not None):
        resolved = RS.resolve(adata, model, dev)
        record = resolved.record
        x: np.ndarray | ST.LazyRows = ST.reader(adata, record["prepare"], layer=layer)
        net: nn.Module | None = resolved.net
        black_box = None
        names = [str(c) for c in np.asarray(record["classes"])]
        genes = np.asarray(record["genes"]).astype(str)
        zero = R.zero_level(record["prepare"])
        model_key, split_key = resolved.key, C.split_column(record, resolved.key)
        label_key = label_key or str(record.get("label_key", ""))
    elif callable(model):
        prepared = R.stored(adata) if layer is None else None
        if prepared is not None:
            # prepared data: the model reads the model input (z-scores of the model genes)
            x = ST.reader(adata, prepared)
            genes = np.asarray(prepared["genes"]).astype(str)
        else:
            matrix = V.matrix(adata, layer)
            RW.check_fits(int(np.prod(matrix.shape)) * 4, what="the explained matrix (dense)",
                          hint="Prepare the data (scadv.pp.prepare) so that only the model "
                               "genes are read, or explain a subset of the cells.")
            x = np.ascontiguousarray(V.dense(matrix), dtype=np.float32)
            V.check_finite(x, what="the explained matrix")
            genes = np.asarray(adata.var_names).astype(str)
        if isinstance(model, nn.Module):
            net, black_box = model.to(dev).eval(), None
        else:
            if method in X.GRADIENT_METHODS:
                raise ScadvInputError(
                    f"method {method!r} needs gradients, but model is a black-box callable. "
                    "Use method='occlusion' or 'lime', or pass a torch.nn.Module."
                )
            net, black_box = None, model
        out = _probe(net, black_box, x[np.arange(min(2, x.shape[0]))], dev)
        names = [str(c) for c in (classes if classes is not None else range(out))]
        if len(names) != out:
            raise ScadvInputError(f"classes has {len(names)} names but the model returns {out} "
                                  "outputs per cell.")
        recipe = R.stored(adata)
        if recipe is not None and np.array_equal(np.asarray(recipe["genes"]).astype(str), genes):
            zero = R.zero_level(recipe)
        model_key, split_key = "custom", K.split(K.DEFAULT_MODEL)
        label_key = label_key or ""
    else:
        raise ScadvInputError(
            f"model must be the key of a stored classifier, a torch.nn.Module or a callable "
            f"returning class probabilities, got {type(model).__name__}."
        )
    if isinstance(baseline, str):
        if baseline == "zero_expression":
            # z-scored scadv input: each gene's zero level; other data (counts, log values): 0
            base = np.asarray(zero, dtype=np.float32) if zero is not None else np.zeros(
                len(genes), dtype=np.float32)
        elif baseline == "mean":
            base = (np.zeros(len(genes), dtype=np.float32)
                    if record is not None or not isinstance(x, np.ndarray)
                    else x.mean(axis=0).astype(np.float32))
        else:
            raise ScadvInputError(f"baseline must be 'zero_expression', 'mean' or an array of "
                                  f"{len(genes)} values, got {baseline!r}.")
        name: str = baseline
    else:
        base = np.asarray(baseline, dtype=np.float32).ravel()
        if base.shape != (len(genes),) or not np.isfinite(base).all():
            raise ScadvInputError(f"a baseline array needs {len(genes)} finite values (one per "
                                  f"model gene), got shape {np.shape(baseline)}.")
        name = "custom"
    n_samples = int(n_samples) if n_samples is not None else X.DEFAULT_SAMPLES.get(method, 25)
    references = None
    if method == "deepshap":
        references = _references(adata, x, split_key, n_samples, seed)
    explainer = X.Explainer(method=method, baseline=base, net=net, black_box=black_box,
                            references=references, n_steps=int(n_steps), n_samples=n_samples,
                            noise=float(noise), device=dev, seed=int(seed),
                            batch_size=int(batch_size))
    return Setup(explainer=explainer, x=x, classes=names, genes=genes, model_key=model_key,
                 split_key=split_key, label_key=label_key, baseline_name=name, record=record)


def _probe(net: nn.Module | None, black_box: Callable | None, x: np.ndarray,
           device: torch.device) -> int:
    """Number of outputs per cell (and a clear error if the model cannot be called)."""
    try:
        if net is not None:
            with torch.no_grad():
                out = net(torch.as_tensor(x, device=device))
            out = out.cpu().numpy()
        elif black_box is not None:
            out = np.asarray(black_box(x))
        else:
            raise RuntimeError("internal: neither a network nor a black box to probe")
    except Exception as err:  # the user's model failed on adata's rows
        raise ScadvInputError(
            f"calling the model on rows of the explained matrix ({x.shape[1]} genes) failed: "
            f"{err}. The model must accept cells × genes in adata's gene order."
        ) from err
    if out.ndim != 2 or out.shape[0] != len(x):
        raise ScadvInputError(f"the model must return one row of class scores per cell; got an "
                              f"output of shape {out.shape} for {len(x)} cells.")
    return int(out.shape[1])


def _references(adata: AnnData, x: np.ndarray | ST.LazyRows, split_key: str, n: int,
                seed: int) -> np.ndarray:
    """DeepSHAP's reference cells: a seeded sample of the training split (else of all cells)."""
    pool = np.arange(adata.n_obs)
    if split_key in adata.obs:
        train = np.flatnonzero((adata.obs[split_key] == K.SPLIT_TRAIN).to_numpy())
        if len(train):
            pool = train
    rng = np.random.default_rng(seed)
    pick = rng.choice(pool, size=min(n, len(pool)), replace=False)
    return np.ascontiguousarray(x[np.sort(pick)], dtype=np.float32)


def _targets(adata: AnnData, setup: Setup, mask: np.ndarray, target: str) -> np.ndarray:
    """Class index each selected cell is explained toward (-1: no label, skipped)."""
    if target == "prediction":
        return setup.explainer.output(setup.x[mask]).argmax(axis=1)
    if target == "label":
        if not setup.label_key or setup.label_key not in adata.obs:
            raise ScadvInputError(
                f"target='label' needs the labels in adata.obs (label_key {setup.label_key!r} "
                "not found); pass label_key=... or use target='prediction'."
            )
        return C.class_index(V.labels(adata, setup.label_key), setup.classes)[mask]
    if str(target) not in setup.classes:
        raise ScadvInputError(f"target must be 'prediction', 'label' or a class of the model "
                              f"({setup.classes}), got {target!r}.")
    return np.full(int(mask.sum()), setup.classes.index(str(target)), dtype=np.int64)
