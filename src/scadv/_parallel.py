"""Cell-parallel work, in this process or on Dask: the execution layer of scadv's tools.

The tools that work cell by cell (:func:`scadv.tl.predict`, the gradient attacks, the
meta-detector's scores and its training attack) or cluster by cluster (the gene scans of
:func:`scadv.tl.single_gene` and :func:`scadv.tl.overview`) describe their work as *tasks*: a
module-level function applied to one block of cells (or one cluster) and to inputs shared by
every task (model records, the recipe, options). It returns per-cell (per-cluster) outputs,
which the tool gathers in task order and writes with :func:`scadv._results.write_results` as
usual. This module runs the tasks:

**In this process** (the default): one after the other, in order. That is the loop the tool
would otherwise contain; nothing about it changes.

**On Dask**, when the cells' expression matrix is a dask array: ``adata.X`` read lazily
(:func:`anndata.experimental.read_lazy`, :func:`anndata.experimental.read_elem_lazy`) or set by
hand (``adata.X = dask.array.from_array(...)``). Each task then reads its own block of cells
from that array where it runs, and the tasks are computed by **dask's active scheduler**, as
any dask computation is: the :class:`dask.distributed.Client` if one is active (creating a
``Client(address)`` makes it the default), else dask's local threads, or whatever
``dask.config.set(scheduler=...)`` selects. scadv adds no scheduler of its own and takes no
``client=`` argument: pointing dask at a cluster is enough. At most a few tasks per worker
thread are in flight, so the memory of this process stays bounded by the results.

Tasks use the same blocks of cells (and the same seed per block) as the in-process loop, so the
results are those of the in-process run, bit for bit on the same hardware (on workers with
another device, e.g. a GPU, within that device's floating-point rounding).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from scipy import sparse

from . import _progress as PB
from . import _recipe as R
from . import _rows as RW

T = TypeVar("T")

#: Inputs larger than this (bytes) are sent to distributed workers once (``scatter``), not
#: inside every task.
SCATTER_ABOVE = 2**20
#: Tasks in flight per worker thread.
IN_FLIGHT_PER_THREAD = 2


def lazy(matrix: Any) -> bool:
    """Whether work on ``matrix`` runs on Dask (it is a dask array)."""
    return RW.is_dask(matrix)


def distributed_client() -> Any | None:
    """The :class:`dask.distributed.Client` dask computes with now, if any (``None`` when no
    client is active, or ``dask.config.set(scheduler=...)`` chose another scheduler)."""
    try:
        import dask.base
        from distributed import Client
    except ImportError:
        return None
    scheduler = dask.base.get_scheduler()
    owner = getattr(scheduler, "__self__", None)
    return owner if isinstance(owner, Client) else None


def _threads(client: Any | None) -> int:
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    import dask

    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def run(fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], *, n_jobs: int,
        shared: tuple[Any, ...] = (), on_dask: bool = False,
        done: Callable[[int, T], None] | None = None) -> list[T]:
    """``[fn(*job, *shared) for job in jobs]``, in this process or on Dask.

    ``jobs`` is consumed lazily (a task's inputs are made just before it is submitted);
    ``shared`` inputs are sent to each distributed worker once. Dask collections among a
    job's inputs (e.g. the rows of a dask array) are computed where the task runs. ``done(i,
    result)`` is called as task ``i`` finishes (for progress bars). Results are returned in
    job order.
    """
    if not on_dask:
        out = []
        for i, job in enumerate(jobs):
            res = fn(*job, *shared)
            if done is not None:
                done(i, res)
            out.append(res)
        return out
    client = distributed_client()
    window = IN_FLIGHT_PER_THREAD * _threads(client)
    if client is None:
        return _run_local(fn, jobs, n_jobs=n_jobs, shared=shared, window=window, done=done)
    return _run_distributed(client, fn, jobs, n_jobs=n_jobs, shared=shared, window=window,
                            done=done)


def _run_local(fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], *, n_jobs: int,
               shared: tuple[Any, ...], window: int,
               done: Callable[[int, T], None] | None) -> list[T]:
    """dask's local scheduler (threads by default): windows of ``window`` delayed tasks."""
    import dask

    out: list[T] = []
    batch: list[Any] = []

    def flush() -> None:
        results = dask.compute(*batch)
        for res in results:
            if done is not None:
                done(len(out), res)
            out.append(res)
        batch.clear()

    for job in jobs:
        batch.append(dask.delayed(fn, pure=False)(*job, *shared))
        if len(batch) >= window:
            flush()
    if batch:
        flush()
    return out


def _big(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.nbytes > SCATTER_ABOVE
    if sparse.issparse(x):
        return x.data.nbytes > SCATTER_ABOVE
    return False


def _run_distributed(client: Any, fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], *,
                     n_jobs: int, shared: tuple[Any, ...], window: int,
                     done: Callable[[int, T], None] | None) -> list[T]:
    """A dask.distributed cluster: shared inputs scattered once, at most ``window`` tasks in
    flight, results gathered as they finish and returned in job order."""
    from distributed import as_completed

    shared_f = tuple(client.scatter([s], broadcast=False, hash=False)[0] for s in shared)

    def submit(job: tuple[Any, ...]) -> Any:
        args = []
        for a in job:
            if RW.is_dask(a):
                a = client.compute(a)  # read on a worker
            elif _big(a):
                a = client.scatter([a], hash=False)[0]
            args.append(a)
        return client.submit(fn, *args, *shared_f, pure=False)

    results: dict[int, T] = {}
    index: dict[str, int] = {}
    it = iter(jobs)
    pending = as_completed()
    submitted = 0
    for job in it:
        fut = submit(job)
        index[fut.key] = submitted
        pending.add(fut)
        submitted += 1
        if submitted >= window:
            break
    for fut in pending:
        res = fut.result()
        i = index.pop(fut.key)
        results[i] = res
        if done is not None:
            done(i, res)
        fut.release()
        nxt = next(it, None)
        if nxt is not None:
            new = submit(nxt)
            index[new.key] = submitted
            pending.add(new)
            submitted += 1
    for f in shared_f:
        f.release()
    return [results[i] for i in range(submitted)]


# ---- blocks of cells ---------------------------------------------------------------------------


def _on_block(fn: Callable[..., T], template: R.Source, block: Any, *rest: Any) -> T:
    """A task on a Dask worker: the block's model input comes from its rows, read there."""
    if RW.is_dask(block):  # pragma: no cover - dask computes collections before the call
        block = block.compute()
    if sparse.issparse(block) and block.format != "csr":
        block = sparse.csr_matrix(block)
    src = template.bind(block)
    return fn(src, np.arange(src.n_obs), *rest)


def _lazy_rows(matrix: Any, cells: np.ndarray) -> Any:
    """The rows ``cells`` (ascending) of a dask array, still lazy: one slice when contiguous."""
    lo, hi = int(cells[0]), int(cells[-1]) + 1
    if hi - lo == len(cells):
        return matrix[lo:hi]
    return matrix[cells]


def map_cells(fn: Callable[..., T], src: R.Source, chunks: Sequence[np.ndarray], *,
              per_chunk: Callable[[int, np.ndarray], tuple[Any, ...]] | None = None,
              shared: tuple[Any, ...] = (), progress: bool = True, desc: str = "cells"
              ) -> list[T]:
    """``fn(source, cells, *per_chunk(i, chunk), *shared)`` for each chunk of cells.

    Parameters
    ----------
    fn
        A module-level function. ``source.rows(cells)`` gives the chunk's model input: in this
        process ``source`` is ``src`` and ``cells`` the chunk's positions; on Dask ``source``
        holds only the chunk's rows (read on the worker) and ``cells`` is ``arange(len)``.
        Everything else a task needs about its cells comes from ``per_chunk``.
    src
        The model input of all cells.
    chunks
        Ascending cell positions per task; the same chunks in both modes.
    per_chunk
        ``(i, chunk) -> tuple`` of further per-task inputs (labels, stored perturbations),
        computed in this process just before the task is submitted.
    shared
        Inputs common to every task (records, options).
    progress, desc
        Progress bar over the cells (tasks on Dask should not show bars of their own).
    """
    extra = per_chunk or (lambda i, c: ())
    chunks = [np.asarray(c, dtype=np.int64) for c in chunks]
    on_dask = lazy(src.matrix)
    bar = PB.bar(total=sum(len(c) for c in chunks), desc=desc, unit="cell", progress=progress)

    def done(i: int, _: Any) -> None:
        bar.update(len(chunks[i]))

    try:
        if not on_dask:
            jobs: Iterable[tuple[Any, ...]] = (
                (src, c, *extra(i, c)) for i, c in enumerate(chunks))
            return run(fn, jobs, n_jobs=len(chunks), shared=shared, done=done)
        jobs = ((src.template(c), _lazy_rows(src.matrix, c), *extra(i, c))
                for i, c in enumerate(chunks))
        return run(functools.partial(_on_block, fn), jobs, n_jobs=len(chunks),
                   shared=shared, on_dask=True, done=done)
    finally:
        bar.close()
