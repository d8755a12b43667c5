"""Fuzzed datasets through the whole chain: prepare → train → pgd → meta_detect → write/read.

:data:`PARAMS` is a hypothesis strategy over shapes, sparsity, dtypes, kinds of data (counts,
log-normalised, scaled, degenerate), class counts and options; :func:`pipeline` runs one
example through the public API and classifies the outcome. Every example must end either
with valid results or with a :class:`~scadv.ScadvInputError`; anything else (another
exception, invalid results, a crashed process) is a failure.

:func:`run_all` runs the examples in a separate worker process, so an example that kills the
process (a segfault in native code) is recorded as a failure instead of ending the run.
"""

from __future__ import annotations

import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

KINDS = ("counts", "counts", "counts", "lognorm", "scaled", "constant", "one_gene_varies",
         "duplicate_genes", "negative_counts", "nan", "inf", "huge", "empty_cells",
         "identical_cells")
DTYPES = ("float32", "float32", "float32", "float32", "float64", "int32", "int64", "uint16",
          "float16", "bool", "complex64", "object")

PARAMS = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16),
    "n_genes": st.integers(1, 60),
    "class_sizes": st.lists(st.integers(0, 30), min_size=1, max_size=4),
    "unlabelled": st.integers(0, 4),
    "kind": st.sampled_from(KINDS),
    "dtype": st.sampled_from(DTYPES),
    "sparse": st.booleans(),
    "density": st.floats(0.0, 1.0),
    "categorical": st.booleans(),
    "n_top_genes": st.sampled_from([1, 2, 5, 20, 50, 2000, 2000]),
    "flavor": st.sampled_from([None, None, "seurat", "cell_ranger"]),
    "input_rank": st.sampled_from([None, 1, 5, 50]),
    "hidden": st.sampled_from([(8,), (16, 8), (32, 16, 8), (256, 128, 64)]),
    "max_epochs": st.integers(1, 2),
    "batch_size": st.sampled_from([16, 64]),
    "eps": st.sampled_from([(0.1,), (0.3, 1.0), (0.05, 0.1, 0.15)]),
    "steps": st.integers(1, 3),
    "cells": st.sampled_from(["test", "all"]),
    "keep_zeros": st.booleans(),
    "detect": st.integers(0, 7),  # 0: run the meta-detector too
    "roundtrip": st.integers(0, 7),  # 0: write and read back the file
})


def examples(n: int = 500) -> list[dict[str, Any]]:
    """``n`` examples drawn by hypothesis, reproducibly (``derandomize=True``)."""
    out: list[dict[str, Any]] = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(PARAMS)
    def collect(params: dict[str, Any]) -> None:
        out.append(params)

    collect()
    return out


def dataset(p: dict[str, Any]) -> Any:
    """The AnnData of one example (a pure function of its parameters)."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(p["seed"])
    sizes = list(p["class_sizes"])
    labels = np.repeat([f"c{i}" for i in range(len(sizes))], sizes).astype(object)
    labels = np.r_[labels, np.full(p["unlabelled"], np.nan, dtype=object)]
    n, g = len(labels), p["n_genes"]
    kind = p["kind"]
    rates = rng.gamma(0.8, 2.0, size=g)[None, :] * rng.lognormal(0, 0.3, size=(n, 1))
    for i in range(len(sizes)):  # a marker block per class
        rows = labels == f"c{i}"
        rates[np.ix_(rows, np.arange(g)[i::max(len(sizes), 1)][:3])] *= 6.0
    x = rng.poisson(rates).astype(np.float64)
    if p["density"] < 1.0:
        x[rng.random(x.shape) > max(p["density"], 0.05)] = 0.0
    if n and g:  # every cell measured something (cells without counts are their own kind)
        empty = np.flatnonzero(x.sum(axis=1) == 0)
        x[empty, rng.integers(0, g, size=len(empty))] = 1.0
    if kind == "lognorm":
        tot = x.sum(axis=1, keepdims=True)
        x = np.log1p(x / np.where(tot > 0, tot, 1) * 1e4)
    elif kind == "scaled":
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-3)
    elif kind == "constant":
        x = np.ones_like(x)
    elif kind == "one_gene_varies":
        x = np.ones_like(x)
        x[:, 0] = rng.integers(0, 5, size=n)
    elif kind == "duplicate_genes":
        x[:, 1::2] = x[:, ::2][:, : x[:, 1::2].shape[1]]
    elif kind == "negative_counts":
        x[rng.random(x.shape) < 0.05] = -1.0
    elif kind == "nan" and x.size:
        x.flat[rng.integers(0, x.size)] = np.nan
    elif kind == "inf" and x.size:
        x.flat[rng.integers(0, x.size)] = np.inf
    elif kind == "huge":
        x *= 1e6
    elif kind == "empty_cells" and n:
        x[: max(1, n // 5)] = 0.0
    elif kind == "identical_cells" and n:
        x[:] = x[0]
    dtype = p["dtype"]
    with np.errstate(invalid="ignore", over="ignore"):
        arr = x.astype(object) if dtype == "object" else x.astype(dtype)
    mat: Any = arr
    if p["sparse"] and dtype not in ("object", "float16"):
        mat = sparse.csr_matrix(arr)
    obs = pd.DataFrame({"label": pd.Categorical(labels) if p["categorical"] else labels},
                       index=[f"cell{i}" for i in range(n)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.AnnData(X=mat, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


class Invalid(AssertionError):
    """A step "succeeded" with results that are not valid."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Invalid(what)


def _valid_classifier(a: Any, key: str = "classifier") -> None:
    from scadv import ScadvInputError
    from scadv import _model as M

    try:
        M.architecture(a.uns["scadv"][key])
    except ScadvInputError as err:
        raise Invalid(f"the stored classifier is not valid: {err}") from None
    proba = np.asarray(a.obsm["scadv_proba"])
    _check(proba.shape == (a.n_obs, len(a.uns["scadv"][key]["classes"])), "proba shape")
    _check(bool(np.all(np.isfinite(proba))) and np.allclose(proba.sum(axis=1), 1, atol=1e-4),
           "class probabilities not finite or not summing to 1")
    _check(a.obs["scadv_pred"].notna().all(), "a cell without prediction")


#: Set by :func:`worker`: report each step as it starts, so that the step an example died in
#: is known.
REPORT_STEPS = False
MARK = "@@scadv-fuzz-result "
STEP_MARK = "@@scadv-fuzz-step "


def _step(name: str) -> str:
    if REPORT_STEPS:
        import sys

        sys.stdout.write(STEP_MARK + name + "\n")
        sys.stdout.flush()
    return name


def pipeline(p: dict[str, Any]) -> tuple[str, str, str]:
    """Run one example; returns ``(outcome, step, detail)`` with outcome ``'ok'`` (every step
    succeeded with valid results), ``'error'`` (a ScadvInputError at ``step``), ``'crash'``
    (another exception) or ``'invalid'`` (results that are not valid)."""
    import anndata as ad

    import scadv

    step = _step("data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = dataset(p)
            step = _step("prepare")
            scadv.pp.prepare(a, n_top_genes=p["n_top_genes"], flavor=p["flavor"])
            recipe = a.uns["scadv"]["prepare"]
            _check(bool(np.all(np.isfinite(recipe["mean"]))) and bool(
                np.all(np.asarray(recipe["std"]) > 0)), "recipe not finite")
            _check(len(recipe["genes"]) >= 1, "no model genes")
            step = _step("train")
            scadv.tl.train_classifier(a, "label", hidden=p["hidden"],
                                      dropout=(0.2,) * len(p["hidden"]),
                                      input_rank=p["input_rank"], max_epochs=p["max_epochs"],
                                      batch_size=p["batch_size"], progress=False)
            _valid_classifier(a)
            step = _step("pgd")
            scadv.tl.pgd(a, eps=p["eps"], steps=p["steps"], cells=p["cells"],
                         keep_zeros=p["keep_zeros"], progress=False)
            rec = a.uns["scadv"]["pgd"]
            rates = np.asarray(rec["flip_rate"])
            _check(rates.shape == (len(p["eps"]),) and bool(np.all((rates >= 0) & (rates <= 1))),
                   f"flip rates {rates}")
            for layer in rec["layers"]:
                _check(bool(np.all(np.isfinite(np.asarray(scadv.get.perturbed(a, layer))))),
                       "adversarial layer not finite")
            if p["detect"] == 0:
                step = _step("meta_detect")
                scadv.tl.meta_detect(a, attack="pgd_realistic", eps=(0.3, 0.6, 1.0),
                                     steps=p["steps"], triplet_epochs=1, detector_epochs=1,
                                     baselines=False, progress=False)
                score = a.obs["scadv_meta_score"].to_numpy(dtype=float)
                _check(bool(np.all((score >= 0) & (score <= 1))), "meta scores outside [0, 1]")
            if p["roundtrip"] == 0:
                step = _step("write/read")
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "a.h5ad"
                    a.write_h5ad(path)
                    b = ad.read_h5ad(path)
                pred = b.obs["scadv_pred"].astype(str).to_numpy()
                scadv.tl.predict(b)
                _check(np.array_equal(b.obs["scadv_pred"].astype(str).to_numpy(), pred),
                       "predictions changed after write/read")
                _valid_classifier(b)
        return "ok", step, ""
    except scadv.ScadvInputError as err:
        return "error", step, str(err)[:300]
    except Invalid as err:
        return "invalid", step, str(err)
    except Exception as err:
        return "crash", step, (f"{type(err).__name__}: {err}"[:300] + "\n"
                               + traceback.format_exc()[-2000:])


def _params(p: dict[str, Any]) -> dict[str, Any]:
    """JSON gives lists where the strategy gave tuples."""
    return {k: tuple(v) if k in ("hidden", "eps") else v for k, v in p.items()}


DIED_MARK = "@@scadv-fuzz-died "
#: An example that runs every step, for the worker to run before it forks the children (numba
#: compiles scanpy's functions and torch initialises once, not once per example).
WARM_UP: dict[str, Any] = {
    "seed": 0, "n_genes": 40, "class_sizes": (30, 30), "unlabelled": 0, "kind": "counts",
    "dtype": "float32", "sparse": True, "density": 1.0, "categorical": True,
    "n_top_genes": 20, "flavor": None, "input_rank": None, "hidden": (8,), "max_epochs": 1,
    "batch_size": 64, "eps": (0.3, 1.0), "steps": 2, "cells": "all", "keep_zeros": False,
    "detect": 0, "roundtrip": 0}


def worker(timeout: float = 300.0) -> None:
    """Read examples (JSON, one per line) from stdin and run each in a child forked from this
    process (which has imported everything once): a child that dies (a segfault in native
    code) or hangs cannot take the run down. Outcomes are written as marked lines to stdout
    (other output of the libraries is ignored by the reader)."""
    import json
    import os
    import signal
    import sys
    import time

    import torch

    global REPORT_STEPS
    REPORT_STEPS = True
    torch.set_num_threads(1)  # before any computation: no thread pool exists when forking
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    sc.settings.verbosity = 0
    REPORT_STEPS = False
    for flavor in (None, "seurat", "cell_ranger"):  # compile and load everything once, here
        pipeline({**WARM_UP, "flavor": flavor})
    REPORT_STEPS = True
    for line in sys.stdin:
        params = _params(json.loads(line))
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: run the example, report, leave without cleanup
            try:
                result = pipeline(params)
                sys.stdout.write(MARK + json.dumps(result) + "\n")
                sys.stdout.flush()
            finally:
                os._exit(0)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            code = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                    else os.WEXITSTATUS(status))
            sys.stdout.write(DIED_MARK + str(code) + "\n")
            sys.stdout.flush()


def run_all(params: list[dict[str, Any]], *, timeout: float = 300.0
            ) -> list[tuple[str, str, str]]:
    """:func:`pipeline` of every example, each in a process of its own (see :func:`worker`):
    an example that kills its process (or runs past ``timeout`` seconds) is recorded as a
    ``'crash'`` at the step it was in."""
    import json
    import os
    import queue
    import subprocess
    import sys
    import threading

    root = str(Path(__file__).resolve().parents[2])
    # numba's OpenMP layer refuses to run in a forked child: use its fork-safe layer
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "NUMBA_THREADING_LAYER": "workqueue"}
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"from tests.reliability.fuzz import worker; worker({float(timeout)!r})"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=root, env=env)
    results: queue.Queue[tuple[str, str, str]] = queue.Queue()
    last_step = ["start"]

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            if text.startswith(MARK):
                results.put(tuple(json.loads(text[len(MARK):])))  # type: ignore[arg-type]
            elif text.startswith(STEP_MARK):
                last_step[0] = text[len(STEP_MARK):].strip()
            elif text.startswith(DIED_MARK):
                code = text[len(DIED_MARK):].strip()
                results.put(("crash", last_step[0], f"the process died (exit code {code}) or "
                                                     f"hung during {last_step[0]}"))
        results.put(("crash", "worker", "the worker process ended"))

    threading.Thread(target=read, daemon=True).start()
    assert proc.stdin is not None
    out: list[tuple[str, str, str]] = []
    try:
        for p in params:
            last_step[0] = "start"
            proc.stdin.write(json.dumps(p) + "\n")
            proc.stdin.flush()
            out.append(results.get(timeout=timeout + 60))
    finally:
        proc.stdin.close()
        proc.wait(60)
    return out
