"""The reliability suites' cases, as plain data and functions of the public API only.

Shared by the pytest suites in this folder and by ``benchmarks/reliability_counts.py``, which
runs the same cases (also against an older scadv) and counts the outcomes: a clean
:class:`~scadv.ScadvInputError`, another exception (an internal crash), or a bad input that
was silently accepted.
"""

from __future__ import annotations

import copy as _copy
import math
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from tests.conftest import make_counts

nan, inf = math.nan, math.inf

# ---- bad option values, by kind of option --------------------------------------------------

POS_INT = [0, -2, 2.5, "3", None, True, nan]
NONNEG_INT = [-1, 2.5, "3", None, True]
POS = [0, -0.5, nan, inf, "0.1", True, None, 1j]
NONNEG = [-0.5, nan, inf, "1", True, None]
FRAC = [0.0, 1.0, 1.5, nan, "0.5", True]
FLAG = ["yes", 1, None]
KEY = ["", "my/run", "prepare", "provenance", "perturbations", 7, " run"]
NAME = [7, "", ["x"]]
SEED = [-1, 2.5, "1", 2**64]
DEVICE = [7, "", None, "tpu"]
EPS = [nan, inf, -0.1, 0.0, "0.1", True, [], (0.1, 0.1000001), [0.1, "a"], 1j, [[0.1]]]
CELLS: list[Any] = [["nope"], 5, [["cell0"]], [1, 2],
                    lambda a: np.ones(a.n_obs + 1, dtype=bool),
                    lambda a: np.zeros(a.n_obs, dtype=bool)]
CLIP = ["obs", (1.0, 1.0), (2.0, -2.0), (0.0, inf), 3.0, ("a", 1)]
AX = ["left", 3]
SAVE = [3, ["a.png"]]
SHOW = ["yes", 1]


@dataclass(frozen=True)
class Call:
    """A public function, the data it runs on, valid arguments, and bad values per option.

    ``data`` names a dataset of :func:`datasets` (``'counts'``, ``'trained'``, ``'meta'``,
    ``'attr'``). ``args`` are the positional arguments after ``adata`` and ``kwargs`` valid
    keyword arguments; values may be functions of the AnnData (resolved per case).
    ``options`` maps an option (``'#0'``: the first positional argument) to bad values.
    """

    func: str
    data: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, list[Any]] = field(default_factory=dict)


def _common(*, key: bool = True, seed: bool = True, device: bool = True, progress: bool = True,
            batch: str | None = "batch_size") -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"copy": FLAG}
    if key:
        out["key_added"] = KEY
    if seed:
        out["seed"] = SEED
    if device:
        out["device"] = DEVICE
    if progress:
        out["progress"] = FLAG
    if batch:
        out[batch] = POS_INT
    return out


def _plot(**options: list[Any]) -> dict[str, list[Any]]:
    return {"ax": AX, "save": SAVE, "show": SHOW, "key": NAME, **options}


def _attack_options() -> dict[str, list[Any]]:
    return {"eps": EPS, "keep_zeros": FLAG, "clip": CLIP, "cells": CELLS,
            "target": [3, "", "not_a_class"], "away_from": ["labels", 3],
            "genes": [["nope"], [True], lambda a: np.zeros(a.n_vars, dtype=bool)],
            "model": [*NAME, "nope"], "norm": ["l1", 3], "loss": ["mse", None]}


def _gene(func: str, **extra: Any) -> Call:
    options = {"cluster_key": [*NAME, "nope"], "target": [3, "", "nope"],
               "modification": ["perc200", None, [], "decile+x", "pickle"],
               "layer": ["nope", 3], **_common(key=True, batch="batch_rows")}
    kwargs = {"cluster_key": "cell_type", "target": "type0", "progress": False}
    kwargs.update(extra.pop("kwargs", {}))
    options.update(extra.pop("options", {}))
    if func == "tl.cgd":  # the only gene attack without modifications
        del options["modification"]
    return Call(func, "trained", kwargs=kwargs, options=options)


GENES3 = ["gene0", "gene1", "gene2"]

CALLS: list[Call] = [
    Call("pp.prepare", "counts", kwargs={"n_top_genes": 50}, options={
        "n_top_genes": POS_INT, "target_sum": POS, "max_value": NONNEG,
        "flavor": ["seurat_v4", 3, True], "include_genes": ["gene0", ["nope"], [3]],
        "expect": ["count", 3, None], "layer": ["nope", 3, ""], "copy": FLAG}),
    Call("pp.transform", "counts", kwargs={"reference": lambda a: _DATA["trained"]}, options={
        "reference": [None, "trained", {"genes": ["gene0"], "mean": [0.0], "std": [0.0]}],
        "layer": ["nope", 3], "missing_genes": ["zero", 3, None], "copy": FLAG}),
    Call("tl.train_classifier", "trained", args=("cell_type",),
         kwargs={"max_epochs": 1, "key_added": "again", "progress": False}, options={
             "#0": [*NAME, "nope"], "hidden": [(), (0,), ("a",), 256, (10**9,)],
             "dropout": [(0.4,), (1.0, 1.0, 1.0), (nan, nan, nan), "x"],
             "input_rank": [0, -1, 2.5, "50"], "freeze_input": FLAG, "lr": POS,
             "weight_decay": NONNEG, "max_epochs": POS_INT, "patience": POS_INT,
             "label_smoothing": [1.0, -0.1, nan, "0"], "input_noise": NONNEG,
             "class_weight": ["bal", 3, True], "test_size": FRAC, "val_size": [*FRAC, 0.85],
             "split_key": [*NAME, "nope"], **_common()}),
    Call("tl.adversarial_train", "trained", args=("cell_type",),
         kwargs={"max_epochs": 1, "steps": 1, "eval_steps": 1, "progress": False}, options={
             "#0": NAME, "method": ["mart", 3], "eps": POS, "steps": [0, -1, 2.5, "3"],
             "alpha": [0, -1, nan, "x"], "norm": ["l1", None], "random_start": FLAG,
             "adv_ratio": [0.0, 1.5, nan, "x"], "beta": NONNEG,
             "eval_eps": [nan, inf, -0.1, "0.1", True, []],
             "eval_steps": POS_INT, "weight_decay": NONNEG, "max_epochs": POS_INT,
             **_common()}),
    Call("tl.predict", "trained", kwargs={"key_added": "pred2"}, options={
        "model": [*NAME, "nope"], "source": ["x", 3], "layer": ["nope", 3],
        "missing_genes": ["zero", None], **_common(seed=False, progress=False)}),
    Call("tl.pgd", "trained", kwargs={"eps": 0.1, "cells": "all", "progress": False}, options={
        **_attack_options(), "alpha": [0, -1, nan, "x"], "steps": POS_INT,
        "n_restarts": POS_INT, "random_start": FLAG, "early_stop": FLAG, **_common()}),
    Call("tl.fgsm", "trained", kwargs={"eps": 0.1, "cells": "all", "progress": False},
         options={**_attack_options(), **_common(seed=False)}),
    Call("tl.robust_accuracy", "trained", kwargs={"eps": (0.0, 0.1), "steps": 1,
                                                  "progress": False}, options={
        "models": [[], [3], "nope", None], "eps": [nan, -0.1, "0.1", [], [0.1, "a"]],
        "steps": POS_INT, "cells": CELLS[:4], **_common()}),
    Call("tl.meta_detect", "meta", kwargs={"attack": "pgd_realistic", "eps": (0.3, 0.6, 1.0),
                                           "triplet_epochs": 1,
                                           "detector_epochs": 1, "baselines": False,
                                           "key_added": "meta2", "progress": False}, options={
        "attack": ["cw", 3], "fusion": ["and", 3, None], "adaptive_rounds": NONNEG_INT,
        "eps": EPS, "steps": POS_INT,
        "positives": ["some", 3],
        "features": [[], ["pickle"], "nope", [3], ["logits", "logits"]],
        "threshold": ["otsu", 3], "target_fpr": FRAC, "input_check": FLAG, "baselines": FLAG,
        "max_cells": [0, -2, 2.5, "3", True, nan],
        "layers": [["nope"], 3, [3]], "triplet_epochs": NONNEG_INT,
        "detector_epochs": POS_INT, "patience": POS_INT, "lr": POS,
        "triplet_margin": POS, "model": [*NAME, "nope"], **_common()}),
    Call("tl.meta_score", "meta", kwargs={"key_added": "rescored", "progress": False},
         options={"key": [*NAME, "nope"], "source": ["x", 3, {"kind": "x"}],
                  "layer": ["nope", 3], "layers": [["nope"], 3, [3]],
                  "missing_genes": ["zero", None], **_common(seed=False, batch=None)}),
    Call("tl.meta_evaluate", "meta", kwargs={"progress": False}, options={
        "key": [*NAME, "nope"], "layers": [["nope"], 3, [3], []],
        **_common(key=False, seed=False, batch=None)}),
    Call("tl.benign_perturb", "meta", kwargs={"key_added": "benign2"}, options={
        "kinds": [[], ["shuffle"], 3, ["noise", "noise"]], "downsample": FRAC,
        "dropout": FRAC, "noise": POS, "cells": CELLS, "model": [*NAME, "nope"],
        **_common(progress=False, batch=None)}),
    Call("tl.adaptive_pgd", "meta", kwargs={"eps": 0.3, "steps": 2, "cells": "all",
                                            "progress": False}, options={
        "detector": [*NAME, "nope"], "lam": NONNEG, "eps": EPS[:8], "alpha": [0, nan, "x"],
        "steps": POS_INT, "loss": ["mse", 3], "kappa": [0, -1, nan, "x"],
        "keep_zeros": FLAG, "clip": CLIP[:4], "cells": CELLS, **_common()}),
    Call("tl.attribute", "trained", kwargs={"method": "saliency", "cells": "all",
                                            "progress": False}, options={
        "method": ["shap", 3, None], "model": [3, "", "nope"], "target": [3, "nope"],
        "cells": CELLS, "baseline": ["median", np.zeros(3), 3],
        "n_steps": POS_INT, "n_samples": [0, -1, 2.5, "3"], "noise": NONNEG,
        "layer": ["nope", 3], "label_key": [3, "", "nope"], "classes": [3, [3], ["nope"]],
        "per_cell": FLAG, "n_top": POS_INT, **_common()}),
    Call("tl.attribution_stability", "attr", kwargs={"key": "attr_saliency", "n_repeats": 1,
                                                     "progress": False}, options={
        "key": [*NAME, "nope"], "perturbations": [[], ["shuffle"], 3],
        "noise": POS, "downsample": FRAC, "eps": POS, "k": [*POS_INT, 10 ** 6],
        "n_repeats": POS_INT, "model": [3, ""], **_common(device=False, batch=None)}),
    Call("tl.attribution_agreement", "attr",
         kwargs={"keys": ["attr_saliency", "attr_grad"]}, options={
             "keys": [[], ["attr_saliency"], 3, ["attr_saliency", 3], ["nope", "x"]],
             "k": [*POS_INT, 10 ** 6], "key_added": KEY, "copy": FLAG}),
    Call("tl.marker_overlap", "attr", kwargs={"keys": ["attr_saliency"]}, options={
        "keys": [[], 3, [3], ["nope"]], "de_key": [*NAME, "nope"], "k": POS_INT,
        "key_added": KEY, "copy": FLAG}),
    Call("tl.gene_set_enrichment", "attr", args=({"set": GENES3},),
         kwargs={"key": "attr_saliency", "min_size": 1}, options={
             "#0": [3, None, "nope.gmt", {"set": 3}], "key": [*NAME, "nope"],
             "k": POS_INT, "min_size": POS_INT, "max_size": POS_INT,
             "key_added": KEY, "copy": FLAG}),
    Call("tl.score_attributions", "attr",
         kwargs={"keys": ["attr_saliency"], "truth": {"type0": GENES3}}, options={
             "keys": [[], 3, [3], ["nope"]], "truth": [3, "x", {"type0": 3}, {}],
             "k": POS_INT, "key_added": KEY, "copy": FLAG}),
    _gene("tl.single_gene", kwargs={"genes": GENES3}, options={
        "target": [3, "", "nope", []], "search": ["binary", 3], "first_split": POS_INT,
        "genes": [["nope"], [True], ["gene0", "gene0"], 3]}),
    _gene("tl.max_change", kwargs={"genes": GENES3}, options={
        "target": [3, "", "nope", ["type0"]], "add_layer": FLAG, "add_obs": FLAG,
        "genes": [["nope"], [True]]}),
    _gene("tl.cgd", kwargs={"genes": GENES3}, options={
        "to": [3, "", "nope", "type0"], "alpha": NONNEG, "eps": NONNEG,
        "scales": [[], [0.0], [nan], "x"], "gradient": FLAG, "order": ["best", 3],
        "max_genes": [0, -1, 2.5, "3"], "stop_at_switch": FLAG, "clip": ["obs", (0, 1)],
        "add_layer": FLAG, "add_obs": FLAG}),
    _gene("tl.grid", kwargs={"genes": GENES3}, options={
        "genes": [None, ["nope"], []], "max_size": [0, -1, 2.5, "2", 10],
        "max_combinations": POS_INT, "add_layer": FLAG, "add_obs": FLAG}),
    _gene("tl.random_walk", kwargs={"genes": GENES3, "walk_length": 2, "first_batch": 4,
                                    "proposals": 4}, options={
        "genes": [None, ["nope"]], "first_batch": POS_INT, "walk_length": NONNEG_INT,
        "proposals": POS_INT, "change_ratio": [0.0, 1.5, nan, "x"], "max_rows": POS_INT,
        "add_layer": FLAG, "add_obs": FLAG}),
    _gene("tl.overview", kwargs={"genes": GENES3, "target": "type0"}, options={
        "target": [3, "", "nope"], "signature": FLAG}),
    Call("datasets.simulate", "none", kwargs={"n_cells": 60, "n_genes": 200, "n_types": 3},
         options={"n_cells": [0, -1, 2.5, "60", None, True, 10**9],
                  "n_genes": [0, 2.5, "200", None], "n_types": [1, 0, 2.5, "3"],
                  "n_lineages": [0, 2.5, 9], "markers_per_type": [0, 2.5, "30"],
                  "genes_per_lineage": [-1, 2.5], "n_activity_programs": [-1, "3"],
                  "type_weight": [0.0, -0.1, nan, "0.03", 1.5], "lineage_weight": NONNEG,
                  "activity_weight": NONNEG, "concentration": POS, "library_size": POS,
                  "library_sd": NONNEG, "dispersion": NONNEG,
                  "type_proportions": [[1.0], [nan, 1, 1], ["a", 1, 1], [-1, 1, 1],
                                       [0, 0, 0], "x"],
                  "label_key": NAME, "seed": SEED}),
    Call("tl.pseudo_labels", "trained", kwargs={"n_clusters": 3, "n_pcs": 5}, options={
        "method": ["louvain", 3, None], "n_clusters": [1, 0, 2.5, "3", None, True, nan, 10**6],
        "n_pcs": POS_INT, "resolution": POS, "n_neighbors": POS_INT,
        **_common(device=False, progress=False, batch=None)}),
    Call("get.model_input", "trained", kwargs={"cells": ["cell0", "cell1"]}, options={
        "model": [*NAME, "nope"], "layer": ["nope", 3], "missing_genes": ["zero", None, 3],
        "cells": [["nope"], [["cell0"]], [10**6], [-1], [0.5], {"cell0": 1},
                  lambda a: np.ones(a.n_obs + 1, dtype=bool)]}),
    Call("get.perturbed", "meta", args=("scadv_pgd_eps0.3",), options={
        "#0": [*NAME, "nope", "scadv_pgd_eps0.3/x"], "space": ["var", 3, "layer", True],
        "cells": [["nope"], [["cell0"]], [10**6], [-1], {"cell0": 1},
                  lambda a: np.zeros(a.n_obs - 1, dtype=bool)]}),
    Call("get.perturbations", "none", options={"adata": [3, None, "data.h5ad", {"X": 1}]}),
    Call("pl.report", "meta", kwargs={"save": lambda a: _report_path()}, options={
        "title": [3, "", ["x"]], "notes": [3, [3], [None], {"a": 1}],
        "only": [3, ["nope"], [3], []], "show": SHOW, "save": [3, ["a.png"], False]}),
    Call("tl.count_attack", "trained", kwargs={"budgets": (1, 2), "progress": False}, options={
        "budgets": [[], [0], [1.5], ["a"], [1, 1], nan], "beam": POS_INT, "top_k": POS_INT,
        "cap_add": NONNEG_INT, "cap_remove": NONNEG_INT, "detected_only": FLAG,
        "target": [3, "", "nope"], "model": [*NAME, "nope"], "cells": CELLS[:4],
        **_common()}),
    Call("tl.adaptive_count_attack", "meta", kwargs={"budget": 5, "cells": "all",
                                                      "detector": None, "progress": False},
         options={
        "detector": [3, "", "nope"], "lam": [-1.0, nan, "x", None], "budget": POS_INT,
        "kappa": [-1.0, nan, "x"], "cap": POS_INT, "top_k": POS_INT,
        "model": [*NAME, "nope"], "cells": CELLS[:4], **_common()}),
    Call("tl.fragility", "trained", kwargs={"steps": 2, "progress": False}, options={
        "eps_min": POS, "eps_max": POS, "tol": [0.0, 1.0, nan, "x"], "steps": POS_INT,
        "keep_zeros": FLAG, "clip": CLIP[:4], "target": [3, "", "nope"],
        "model": [*NAME, "nope"], "cells": CELLS[:4], **_common()}),
    Call("tl.compare_models", "trained", args=(["classifier"],),
         kwargs={"eps": (0.3,), "single_gene": False, "n_boot": 5, "key_added": "cmp2",
                 "progress": False}, options={
        "#0": [3, [], [3], ["nope"], {"a": 3}, None], "eps": [[nan], [-1.0], ["x"], []],
        "steps": POS_INT, "n_boot": [-1, "x", nan], "n_cells": [0, -1, 2.5, "x"],
        "label_key": [3, "", "nope"], "cells": CELLS[:4], "key_added": NAME}),
    Call("tl.add_model", "trained",
         args=(lambda a: __import__("scadv").models.from_record(a.uns["scadv"]["classifier"]),),
         kwargs={"key_added": "copy2"}, options={
        "#0": [3, None, "x", {"a": 1}, [1, 2]],
        "key_added": [3, "", ["x"], "a/b", "prepare", "provenance"]}),
    Call("pl.compare_models", "trained", options={
        **_plot(key=[7, "", ["x"], "nope"]), "metric": [3, "", "nope"],
        "group": [3, "", "nope"], "eps": [nan, -1.0, "x"]}),
    Call("pl.count_attack", "trained", options=_plot(key=[7, "", [], "nope"],
                                                     labels=[3, [3]], per_class=FLAG)),
    Call("pl.count_genes", "trained", options=_plot(top=POS_INT)),
    Call("pl.fragility", "trained", options=_plot(groupby=[3, ""])),
    Call("pl.flip_rate", "meta", options=_plot(key=[*NAME, "nope", "classifier"])),
    Call("pl.robustness_curve", "trained", options=_plot(key=[*NAME, "nope"])),
    Call("pl.meta_scores", "meta", options=_plot(layers=[["nope"], 3], bins=POS_INT)),
    Call("pl.roc", "meta", options=_plot(layers=[["nope"], 3])),
    Call("pl.meta_confusion", "meta", options=_plot(layer=["nope", 3])),
    Call("pl.meta_embedding", "meta", options=_plot(layers=[["nope"], 3],
                                                    n_neighbors=POS_INT, seed=SEED)),
    Call("pl.meta_cell", "meta", args=("cell0",),
         options=_plot(**{"#0": [3, "", "nope"], "layer": ["nope", 3]})),
    Call("pl.top_genes", "attr", kwargs={"key": "attr_saliency"},
         options=_plot(n_genes=POS_INT, classes=[3, [3], ["nope"]])),
    Call("pl.attribution_stability", "attr", options=_plot(metric=["pearson", 3])),
    Call("pl.attribution_agreement", "attr", options=_plot(metric=["pearson", 3])),
    Call("pl.marker_overlap", "attr", options=_plot()),
    Call("pl.enrichment", "attr", options=_plot(n_sets=POS_INT)),
    Call("pl.attribution_truth", "attr", options=_plot(metric=["f1", 3])),
    Call("pl.single_gene", "trained", options=_plot(target=[3, ""], top=POS_INT)),
    Call("pl.overview", "trained", options=_plot(value=["n_genes", 3], cmap=[3, ""])),
    Call("pl.cgd", "trained", options=_plot()),
]


def _report_path() -> Any:
    """Where a report a case did not refuse would go (never the working folder)."""
    import tempfile
    from pathlib import Path

    return Path(tempfile.gettempdir()) / "scadv_bad_input_report.html"


@dataclass(frozen=True)
class Case:
    """One bad input: ``call`` with ``option`` set to ``value``."""

    call: Call
    option: str
    index: int

    @property
    def value(self) -> Any:
        return self.call.options[self.option][self.index]

    @property
    def id(self) -> str:
        v = self.value
        text = v.__name__ if callable(v) and not isinstance(v, type) else repr(v)
        return f"{self.call.func}:{self.option}={text[:30]}"


def bad_input_cases() -> list[Case]:
    return [Case(call, option, i) for call in CALLS for option in call.options
            for i in range(len(call.options[option]))]


# ---- data ------------------------------------------------------------------------------------

_DATA: dict[str, ad.AnnData] = {}


def datasets() -> dict[str, ad.AnnData]:
    """The AnnData each kind of call runs on, built once: raw ``counts``; ``trained``
    (prepared, a classifier, PGD, single-gene / overview / CGD runs); ``meta`` (trained, PGD
    on all cells, a meta-detector); ``attr`` (trained with two attribution runs and their
    checks); ``pert`` (meta with a third perturbation, stored as a sparse ``obsm`` matrix:
    ``meta``'s two are stored as rows of the changed cells)."""
    if _DATA:
        return _DATA
    import scanpy as sc

    import scadv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts = make_counts()
        trained = counts.copy()
        scadv.pp.prepare(trained, n_top_genes=100)
        scadv.tl.train_classifier(trained, "cell_type", max_epochs=15, progress=False)
        meta = trained.copy()
        scadv.tl.pgd(meta, eps=(0.3, 0.6), cells="all", progress=False)
        scadv.tl.meta_detect(meta, eps=(0.3, 0.6, 1.0), triplet_epochs=2, detector_epochs=3,
                             progress=False)
        attr = trained.copy()
        for method in ("saliency", "grad"):
            scadv.tl.attribute(attr, method=method if method == "saliency" else
                               "grad_x_input", key_added=f"attr_{method}", cells="all",
                               progress=False)
        sc.tl.rank_genes_groups(attr, "cell_type", use_raw=False)
        scadv.tl.attribution_agreement(attr, keys=["attr_saliency", "attr_grad"])
        scadv.tl.marker_overlap(attr, keys=["attr_saliency"])
        scadv.tl.attribution_stability(attr, key="attr_saliency", n_repeats=1,
                                       key_added="attr_integrated_gradients_stability",
                                       progress=False)
        scadv.tl.gene_set_enrichment(attr, {"set": GENES3, "set2": ["gene3", "gene4"]},
                                     key="attr_saliency", min_size=1,
                                     key_added="attr_integrated_gradients_enrichment")
        scadv.tl.score_attributions(attr, keys=["attr_saliency"],
                                    truth={"type0": GENES3, "type1": ["gene15", "gene16"]})
        scadv.tl.single_gene(trained, cluster_key="cell_type", target="type0", genes=GENES3,
                             progress=False)
        scadv.tl.overview(trained, cluster_key="cell_type", genes=GENES3, progress=False)
        scadv.tl.cgd(trained, cluster_key="cell_type", target="type0", genes=GENES3,
                     progress=False)
        scadv.tl.robust_accuracy(trained, eps=(0.0, 0.1), steps=1, progress=False)
        scadv.tl.compare_models(trained, ["classifier"], eps=(0.3,), single_gene=False,
                                n_boot=5, progress=False)
        # stored perturbations in both formats: rows of changed cells (dense PGD) and a
        # sparse obsm matrix (PGD keeping zeros)
        pert = meta.copy()
        scadv.tl.pgd(pert, eps=0.3, cells="all", keep_zeros=True, key_added="sparse",
                     progress=False)
    _DATA.update(counts=counts, trained=trained, meta=meta, attr=attr, pert=pert)
    return _DATA


def function(name: str) -> Callable[..., Any]:
    import scadv

    module, func = name.split(".")
    return getattr(getattr(scadv, module), func)


def _resolve(value: Any, adata: ad.AnnData) -> Any:
    if callable(value) and not isinstance(value, type) and getattr(value, "__name__", "") \
            == "<lambda>":
        return value(adata)
    return value


# ---- outcomes --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a case gave: ``'error'`` (a ScadvInputError), ``'crash'`` (any other exception),
    ``'accepted'`` (no error), plus whether the input AnnData was left as it was."""

    kind: str
    message: str = ""
    unchanged: bool = True


def snapshot(adata: ad.AnnData) -> dict[str, Any]:
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X, copy=True)
    return {"X": x, "obs": adata.obs.copy(), "var": list(adata.var_names),
            "layers": sorted(adata.layers), "obsm": sorted(adata.obsm),
            "uns": _copy.deepcopy(sorted((adata.uns.get("scadv") or {}).keys())),
            "uns_top": sorted(adata.uns)}


def same(adata: ad.AnnData, before: dict[str, Any]) -> bool:
    after = snapshot(adata)
    try:
        pd.testing.assert_frame_equal(after["obs"], before["obs"])
    except AssertionError:
        return False
    return (after["X"].shape == before["X"].shape and np.array_equal(after["X"], before["X"],
                                                                    equal_nan=True)
            and all(after[k] == before[k] for k in ("var", "layers", "obsm", "uns", "uns_top")))


def run(func: Callable[[], Any], adata: ad.AnnData | None = None) -> Outcome:
    """Call ``func`` and classify what happened (and whether ``adata`` changed on error)."""
    from scadv import ScadvInputError

    before = snapshot(adata) if adata is not None else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            func()
    except ScadvInputError as err:
        unchanged = before is None or adata is None or same(adata, before)
        return Outcome("error", str(err), unchanged)
    except Exception as err:
        return Outcome("crash", "".join(traceback.format_exception_only(type(err), err))
                       .strip()[:500] + "\n" + traceback.format_exc()[-1500:])
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    return Outcome("accepted")


def run_case(case: Case) -> Outcome:
    """Run one bad-input case on a fresh copy of its data."""
    data = datasets()
    if case.call.data == "none":  # a function without an AnnData argument
        kwargs = {**case.call.kwargs, case.option: case.value}
        f = function(case.call.func)
        return run(lambda: f(**kwargs))
    adata = data[case.call.data].copy()
    args = [_resolve(a, adata) for a in case.call.args]
    kwargs = {k: _resolve(v, adata) for k, v in case.call.kwargs.items()}
    value = _resolve(case.value, adata)
    if case.option.startswith("#"):
        args[int(case.option[1:])] = value
    else:
        kwargs[case.option] = value
    kwargs.setdefault("show", False) if case.call.func.startswith("pl.") else None
    f = function(case.call.func)
    return run(lambda: f(adata, *args, **kwargs), adata)


def iter_outcomes(cases: list[Case]) -> Iterator[tuple[Case, Outcome]]:
    for case in cases:
        yield case, run_case(case)


# ---- tampered records ------------------------------------------------------------------------

#: The functions that load each stored record: ``(dataset, record key) -> [(name, call)]``.
def _loaders() -> dict[tuple[str, str], list[tuple[str, Callable[[ad.AnnData], Any]]]]:
    import scadv

    tl, pl = scadv.tl, scadv.pl
    counts = _DATA["counts"]
    attr_pair = ["attr_saliency", "attr_grad"]
    return {
        ("trained", "classifier"): [
            ("tl.predict", lambda a: tl.predict(a, key_added="t")),
            ("tl.pgd", lambda a: tl.pgd(a, eps=0.3, steps=1, cells="all", key_added="t",
                                        progress=False)),
            ("tl.predict(source)", lambda a: tl.predict(counts.copy(), source=a))],
        ("trained", "prepare"): [
            ("pp.transform", lambda a: scadv.pp.transform(counts.copy(), reference=a)),
            ("tl.train_classifier", lambda a: tl.train_classifier(
                a, "cell_type", max_epochs=1, key_added="t", progress=False))],
        ("meta", "meta"): [
            ("tl.meta_score", lambda a: tl.meta_score(a, key_added="t", progress=False)),
            ("pl.roc", lambda a: pl.roc(a, show=False)),
            ("pl.meta_cell", lambda a: pl.meta_cell(a, "cell1", show=False))],
        ("meta", "pgd"): [
            ("tl.meta_evaluate", lambda a: tl.meta_evaluate(a, layers=["scadv_pgd_eps0.3"],
                                                            progress=False)),
            ("pl.flip_rate", lambda a: pl.flip_rate(a, show=False))],
        ("trained", "single_gene"): [
            ("pl.single_gene", lambda a: pl.single_gene(a, show=False))],
        ("trained", "overview"): [("pl.overview", lambda a: pl.overview(a, show=False))],
        ("trained", "cgd"): [("pl.cgd", lambda a: pl.cgd(a, show=False))],
        ("trained", "robustness"): [
            ("pl.robustness_curve", lambda a: pl.robustness_curve(a, show=False))],
        ("attr", "attr_saliency"): [
            ("tl.attribution_agreement", lambda a: tl.attribution_agreement(
                a, keys=attr_pair, key_added="t")),
            ("tl.marker_overlap", lambda a: tl.marker_overlap(a, keys=["attr_saliency"],
                                                              key_added="t")),
            ("tl.gene_set_enrichment", lambda a: tl.gene_set_enrichment(
                a, {"set": GENES3}, key="attr_saliency", min_size=1, key_added="t")),
            ("tl.score_attributions", lambda a: tl.score_attributions(
                a, keys=["attr_saliency"], truth={"type0": GENES3}, key_added="t")),
            ("tl.attribution_stability", lambda a: tl.attribution_stability(
                a, key="attr_saliency", perturbations=["noise"], n_repeats=1, key_added="t",
                progress=False)),
            ("pl.top_genes", lambda a: pl.top_genes(a, key="attr_saliency", show=False))],
        ("attr", "attr_agreement"): [
            ("pl.attribution_agreement", lambda a: pl.attribution_agreement(a, show=False))],
        ("attr", "marker_overlap"): [
            ("pl.marker_overlap", lambda a: pl.marker_overlap(a, show=False))],
        ("attr", "attr_integrated_gradients_stability"): [
            ("pl.attribution_stability", lambda a: pl.attribution_stability(a, show=False))],
        ("attr", "attr_integrated_gradients_enrichment"): [
            ("pl.enrichment", lambda a: pl.enrichment(a, show=False))],
        ("attr", "attr_truth"): [
            ("pl.attribution_truth", lambda a: pl.attribution_truth(a, show=False))],
        ("pert", "perturbations"): _perturbation_readers(),
        ("pert", OBSM): _perturbation_readers(),
    }


#: Pseudo record of :func:`tampered_cases`: the ``obsm`` matrix of a stored perturbation.
OBSM = "@obsm"
SPARSE = "scadv_sparse_eps0.3"
PERTURBED = ("scadv_pgd_eps0.3", "scadv_pgd_eps0.6", SPARSE)


def _perturbation_readers() -> list[tuple[str, Callable[[ad.AnnData], Any]]]:
    """Every public reader of stored perturbations."""
    import scadv

    return [
        ("get.perturbed", lambda a: [scadv.get.perturbed(a, n) for n in PERTURBED]),
        ("get.perturbations", lambda a: scadv.get.perturbations(a)),
        ("tl.meta_evaluate", lambda a: scadv.tl.meta_evaluate(a, layers=list(PERTURBED),
                                                              progress=False)),
        ("tl.meta_score(layers)", lambda a: scadv.tl.meta_score(a, layers=list(PERTURBED),
                                                                key_added="t",
                                                                progress=False)),
        ("pl.meta_scores", _evaluated_scores)]


def _evaluated_scores(adata: ad.AnnData) -> None:
    """``pl.meta_scores`` of the perturbations, evaluated on a copy first."""
    import scadv

    b = adata.copy()
    scadv.tl.meta_evaluate(b, layers=list(PERTURBED), progress=False)
    scadv.pl.meta_scores(b, layers=list(PERTURBED), show=False)


def _obsm_op(name: str, value: Any) -> Any:
    """Corrupt the sparse ``obsm`` matrix of a perturbation (``None``: the operator does
    not apply)."""
    m = sparse.csr_matrix(value, copy=True)
    if name in ("nan", "inf", "huge"):
        m.data[0 if name == "nan" else -1] = {"nan": np.nan, "inf": np.inf, "huge": 1e30}[name]
        return m
    if name == "shape":
        return m[:, :-1]
    if name == "dtype":
        return np.full(m.shape, "x")
    if name == "dense":
        return m.toarray()
    if name == "empty":
        return sparse.csr_matrix(m.shape, dtype=np.float32)
    return None


OBSM_OPS = ("delete", "nan", "inf", "huge", "shape", "dtype", "dense", "empty")


#: What a tampering operator does to a value (``None``: the operator does not apply).
CODE_MARKER = "/tmp/scadv_pwned"
CODE = f"__import__('os').system('touch {CODE_MARKER}')"


def _op(name: str, value: Any) -> Any:
    arr = value if isinstance(value, np.ndarray) else None
    numeric = arr is not None and arr.dtype.kind in "iuf" and arr.size > 0
    strings = arr is not None and arr.dtype.kind in "OU" and arr.size > 0
    if name == "string":
        return "junk"
    if name == "nested":
        return {"a": {"b": np.arange(3)}, "c": "d"}
    if name == "code":
        return CODE if isinstance(value, str) else None
    if name == "nan":
        if numeric:
            out = arr.astype(np.float64)
            out.flat[0] = np.nan
            return out
        return np.nan if isinstance(value, float) and not isinstance(value, bool) else None
    if name == "inf":
        if numeric:
            out = arr.astype(np.float64)
            out.flat[-1] = np.inf
            return out
        return np.inf if isinstance(value, float) and not isinstance(value, bool) else None
    if name == "huge":
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return 10**15
        return np.full(3, 10**15) if numeric and arr.dtype.kind in "iu" else None
    if name == "negative":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -abs(value) - 1
        return -np.abs(arr) - 1 if numeric else None
    if name == "shape":
        if arr is not None and arr.size > 1:
            return arr.reshape(-1)[:-1] if arr.ndim == 1 else arr[..., :-1]
        return None
    if name == "transpose":
        return arr.reshape(1, -1) if arr is not None and arr.ndim == 1 and arr.size > 1 else None
    if name == "dtype":
        if numeric:
            return arr.astype(str)
        if strings:
            return np.arange(arr.size, dtype=np.int64).reshape(arr.shape)
        return None
    if name == "duplicate":
        return np.repeat(arr.reshape(-1)[:1], arr.size) if strings and arr.size > 1 else None
    if name == "empty":
        if arr is not None:
            return arr.reshape(-1)[:0]
        if isinstance(value, pd.DataFrame):
            return value.iloc[:0]
        return {} if isinstance(value, dict) else None
    if name == "drop_column":
        return value.iloc[:, 1:] if isinstance(value, pd.DataFrame) and value.shape[1] else None
    if name == "bool":
        return True if isinstance(value, (int, float, str)) and not isinstance(value, bool) \
            else None
    raise ValueError(name)


OPS = ("delete", "string", "nested", "code", "nan", "inf", "huge", "negative", "shape",
       "transpose", "dtype", "duplicate", "empty", "drop_column", "bool")


@dataclass(frozen=True)
class Tamper:
    """One corrupted entry: ``record`` of dataset ``data``, entry ``path`` (``()``: the whole
    record), operator ``op``."""

    data: str
    record: str
    path: tuple[str, ...]
    op: str

    @property
    def id(self) -> str:
        return f"{self.record}/{'/'.join(self.path) or '.'}:{self.op}"


def _walk(rec: Any, path: tuple[str, ...], depth: int) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, rec
    if isinstance(rec, dict) and depth > 0:
        keys = sorted(rec)
        if path and path[-1] in ("weights", "triplet_weights", "detector_weights"):
            keys = keys[:1] + keys[-1:]  # the first and last weight
        if path[-1:] in (("provenance",), ("history",), ("versions",), ("params",),
                         ("calibration",), ("training",)):
            return  # read by no function
        if len(path) >= 2 and path[0] == "evaluation":
            return  # an evaluated layer's metrics: corrupted as a whole, not one by one
        for key in keys:
            yield from _walk(rec[key], (*path, str(key)), depth - 1)


def tampered_cases(*, every: bool = False) -> list[Tamper]:
    """Corrupted entries over every stored record type: for each entry (the whole record and
    every entry down to three levels, weights sampled), one operator that applies to it, taken
    in turn from :data:`OPS` so that every operator is used (``every=True``: all operators
    that apply to each entry)."""
    data = datasets()
    out = []
    turn = 0
    first: dict[str, Tamper] = {}  # per operator, the first entry it applies to
    for (dname, key), _ in _loaders().items():
        if key == OBSM:
            continue
        for path, value in _walk(data[dname].uns["scadv"][key], (), 3):
            ops = [op for op in OPS if (op == "delete" and path)
                   or (op != "delete" and _op(op, value) is not None)]
            for op in ops:
                first.setdefault(op, Tamper(dname, key, path, op))
            if not every and ops:
                ops = [ops[turn % len(ops)]]
                turn += 1
            out += [Tamper(dname, key, path, op) for op in ops]
    # the turns depend on the records' entries: an operator they skipped is used once anyway
    used = {t.op for t in out}
    out += [t for op, t in first.items() if op not in used]
    out += [Tamper("pert", OBSM, (SPARSE,), op) for op in OBSM_OPS]
    return out


def _roundtrip(value: Any) -> Any:
    """``value`` as ``read_h5ad`` returns it after ``write_h5ad`` (anndata's element codec)."""
    import io

    import h5py
    from anndata.io import read_elem, write_elem

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write_elem(f, "v", value)
    with h5py.File(buf, "r") as f:
        return read_elem(f["v"])


def tampered(t: Tamper) -> ad.AnnData:
    """A copy of ``t``'s dataset (as read back from an .h5ad) with the entry corrupted; the new
    value itself goes through the .h5ad codec, so it has the types a tampered file gives."""
    base = read_back()[t.data]
    adata = base.copy()
    if t.record == OBSM:
        if t.op == "delete":
            del adata.obsm[t.path[0]]
        else:
            adata.obsm[t.path[0]] = _obsm_op(t.op, adata.obsm[t.path[0]])
        return adata
    rec = _copy.deepcopy(adata.uns["scadv"][t.record])
    if not t.path:
        adata.uns["scadv"][t.record] = _roundtrip(_op(t.op, rec))
        return adata
    holder = rec
    for part in t.path[:-1]:
        holder = holder[part]
    if t.op == "delete":
        del holder[t.path[-1]]
    else:
        holder[t.path[-1]] = _roundtrip(_op(t.op, holder[t.path[-1]]))
    adata.uns["scadv"][t.record] = rec
    return adata


_READ: dict[str, ad.AnnData] = {}


def read_back() -> dict[str, ad.AnnData]:
    """The datasets written to .h5ad and read back once (the clean files)."""
    if not _READ:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, adata in datasets().items():
                path = Path(tmp) / f"{name}.h5ad"
                adata.write_h5ad(path)
                _READ[name] = ad.read_h5ad(path)
    return _READ


def run_tampered(t: Tamper) -> list[tuple[str, Outcome]]:
    """Every loader of ``t``'s record on the tampered data."""
    read_back()
    out = []
    for name, call in _loaders()[(t.data, t.record)]:
        adata = tampered(t)
        out.append((name, run(lambda c=call, a=adata: c(a), adata)))
    return out
