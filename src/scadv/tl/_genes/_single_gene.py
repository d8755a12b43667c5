"""``scadv.tl.single_gene``: every gene whose modification alone changes a cluster's label."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from tqdm import tqdm

from ... import _device as D
from ... import _parallel as PAR
from ... import _progress as PB
from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from . import _common as G
from . import _engine as E
from . import _modifications as MOD

Search = Literal["exhaustive", "dichotomy"]


def single_gene(
    adata: AnnData,
    *,
    cluster_key: str,
    target: str | Sequence[str],
    classifier: Any = None,
    modification: MOD.ModSpec | Sequence[MOD.ModSpec] = ("perc1", "perc99"),
    genes: G.Genes = None,
    search: Search = "exhaustive",
    first_split: int = 100,
    layer: str | None = None,
    key_added: str | None = None,
    batch_rows: int = 4096,
    seed: int = 0,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Find every gene whose modification alone changes a cluster's label.

    For each target cluster, each modification and each gene, the gene is modified in the
    cluster's cells only (statistics such as percentiles are taken over all cells) and the
    cluster is classified again: its label is the majority of its cells' predicted labels.
    A gene *flips* the cluster when that label changes.

    ``search='exhaustive'`` (default) evaluates every (gene, modification) variant exactly, many
    variants per classifier call, and only re-classifies the cells whose value really changes;
    for scadv's MLP and the marker scorer it updates a cached first layer (rank one per
    variant), for random forests it re-traverses only the trees whose path the gene lies on.
    ``search='dichotomy'`` is adverSCarial's search: the genes are dealt into ``first_split``
    buckets, a whole bucket is modified at once, buckets that change nothing are dropped and
    buckets that do are halved, down to single genes. It makes fewer evaluations but misses a
    flipping gene whenever the rest of its bucket compensates for it; each level of the
    dichotomy is one batched call here.

    Parameters
    ----------
    adata
        The cells, with the matrix the classifier reads in ``X`` (the prepared model input for
        scadv's MLP) or in ``layers[layer]``.
    cluster_key
        ``obs`` column with the clusters (or cell types).
    target
        One cluster, or several (one table for all).
    classifier
        ``None`` (the stored scadv MLP), a stored classifier's key, a fitted scikit-learn
        estimator with ``predict_proba``, a callable returning probabilities, or a
        :class:`scadv.classifiers.Classifier` (e.g. a
        :class:`~scadv.classifiers.MarkerClassifier`).
    modification
        One or several of ``'perc1'``, ``'perc99'`` (any ``'perc<q>'``), ``'random'``,
        ``'positive_aberrant'``, ``'negative_aberrant'``, ``'decile+k'`` / ``'decile-k'``, a
        number (fixed value) or a function ``f(cluster_values, all_values)``; see the docs'
        gene-attack page.
    genes
        Genes to scan (names or a boolean mask over ``var_names``); default all. Genes the
        classifier does not read (or provably ignores, e.g. a forest's unused genes) are
        reported as not flipping without being evaluated.
    search
        ``'exhaustive'`` (exact) or ``'dichotomy'`` (adverSCarial's).
    first_split
        Number of initial buckets of the dichotomy.
    layer
        Attack ``adata.layers[layer]`` instead of ``adata.X``.
    key_added
        Name of the result; default ``'single_gene'`` (``'single_gene_<model>'`` for a stored
        model other than the default).
    batch_rows
        Rows (cell variants) per classifier call.
    seed
        Seeds the ``'random'`` modification.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (scadv's MLP).
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]`` with:

    ``table``
        A DataFrame, one row per (cluster, modification, gene) evaluated (exhaustive), or per
        flipping gene found (dichotomy): ``cluster``, ``modification``, ``gene``, ``flipped``,
        ``new_label`` (the cluster's label after the change), ``new_score`` (its mean
        probability), ``original_score`` (mean probability of the original label after the
        change), ``frac_original`` (fraction of cells still predicted the original label) and
        ``n_cells_changed`` (cells whose value the modification changed).
    ``summary``
        A DataFrame, one row per (cluster, modification): ``original_label``,
        ``original_score``, ``n_cells``, ``n_genes``, ``n_flip_genes``.
    ``n_classifier_calls``, ``n_rows_classified``, ``seconds``
        The work done; plus ``classifier``, ``classes``, parameters and provenance.
    """
    V.options(locals())
    V.name("cluster_key", cluster_key)
    V.names("target", target)
    V.choice("search", search, ("exhaustive", "dichotomy"))
    V.positive_int("first_split", first_split)
    start = logg.info("running single-gene attack")
    params = P.call_params(locals(), single_gene)
    adata = V.start(adata, copy=copy)
    G.check_common(batch_rows=batch_rows, seed=seed)
    if search not in ("exhaustive", "dichotomy"):
        raise ScadvInputError(f"search must be 'exhaustive' or 'dichotomy', got {search!r}.")
    if int(first_split) < 1:
        raise ScadvInputError(f"first_split must be ≥ 1, got {first_split}.")
    mods = MOD.parse_many(modification)
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=layer, device=device,
                action="scadv.tl.single_gene")
    targets = [target] if isinstance(target, str) else list(target)
    if not targets:
        raise ScadvInputError("target names no cluster; pass one cluster name or a list.")
    masks = [G.cluster_mask(s, t) for t in targets]
    idx = G.gene_index(s, genes)
    cols = G.classifier_cols(s, idx)

    total = len(targets) * len(mods) * len(idx)
    scan = s.scan()

    def jobs() -> Iterator[tuple[Any, ...]]:
        # each cluster's rows and new values are read here; the scan itself is a task
        for t, mask in zip(targets, masks, strict=True):
            yield t, G.block(s, mask), G.values_for(s, mods, idx, mask, seed, str(t))

    with PB.bar(total=total, desc="single-gene scan", unit="variant", progress=progress) as bar:
        if search == "exhaustive" and not s.lazy and not any(m.kind == "function"
                                                              for m in mods):
            # in memory: each cluster a block of cells at a time (atlas clusters never whole)
            results = [_scan_in_blocks(s, scan, str(t), mask, mods, idx, cols, seed,
                                       int(batch_rows), bar)
                       for t, mask in zip(targets, masks, strict=True)]
        else:
            results = PAR.run(
                _scan_cluster, jobs(), n_jobs=len(targets),
                shared=(scan, mods, idx, cols, search, int(first_split), int(batch_rows),
                        None if s.lazy else bar),
                on_dask=s.lazy, done=(lambda i, r: bar.update(len(mods) * len(idx))) if s.lazy
                else None)
    tables = [r[0] for r in results]
    summaries = [row for r in results for row in r[1]]
    for r in results:
        s.counter.calls += r[2].calls
        s.counter.rows += r[2].rows
    table = pd.concat(tables, ignore_index=True)
    summary = pd.DataFrame(summaries)
    key = key_added or G.default_key("single_gene", s)
    rec = {
        **G.base_record(s, method="single_gene", params=params, seed=seed),
        "search": search,
        "targets": np.asarray([str(t) for t in targets], dtype=str),
        "modifications": np.asarray([m.name for m in mods], dtype=str),
        "table": table,
        "summary": summary,
    }
    n_flip = int(table["flipped"].sum())
    G.write(s, step=f"single-gene attack ({n_flip} flipping gene × modification pairs, "
            f"{s.counter.calls} classifier calls)", start=start, key=key, rec=rec)
    return adata if copy else None


#: Cells of one cluster that the in-memory exhaustive scan holds at a time: their rows, the
#: new values of every scanned gene and the classifier's inputs. Counts and probability sums
#: over a cluster's cells add up block by block, so the table is the same for any block size.
CELL_BLOCK = 16_384


def _scan_in_blocks(s: G.Setup, scan: G.Scan, target: str, mask: np.ndarray,
                    mods: list[MOD.Modification], idx: np.ndarray, cols: np.ndarray, seed: int,
                    batch_rows: int, bar: tqdm) -> tuple[pd.DataFrame, list[dict[str, Any]],
                                                         E.Counter]:
    """The exhaustive scan of one cluster, :data:`CELL_BLOCK` cells at a time (same result as
    :func:`_scan_cluster`, in memory bounded by the block instead of the cluster)."""
    counter = E.Counter()
    local = G.Scan(clf=scan.clf, var_names=scan.var_names, classes=scan.classes,
                   counter=counter)
    cells = np.flatnonzero(mask)
    c, n_mod, k = len(scan.classes), len(mods), len(idx)
    rng = G.rng_for(seed, "values", target)
    base_counts = np.zeros(c, dtype=np.int64)
    base_sums = np.zeros(c, dtype=np.float64)
    counts = np.zeros((n_mod, k, c), dtype=np.int64)
    sums = np.zeros((n_mod, k, c), dtype=np.float64)
    n_changed = np.zeros((n_mod, k), dtype=np.int64)
    done = 0
    for lo in range(0, len(cells), CELL_BLOCK):
        part = cells[lo:lo + CELL_BLOCK]
        blk = np.ascontiguousarray(s.x.rows(part), dtype=np.float32)
        current = blk[:, idx]
        values = MOD.new_values(mods, s.x, idx, mask, rng, current=current)
        ev = G.evaluator(local, blk, batch_rows=batch_rows)
        base_counts += np.bincount(ev.pred, minlength=c)
        base_sums += ev.proba.sum(axis=0, dtype=np.float64)
        got = E.single_gene_scan(ev, cols, values)
        counts += got[0]
        sums += got[1]
        n_changed += (values != current[None]).sum(axis=1)  # also genes the classifier ignores
        del blk, current, values, ev
        share = n_mod * k * (lo + len(part)) // len(cells)
        bar.update(share - done)
        done = share
    base_label = int(E.decide(base_counts, base_sums)[0])
    base_score = float(base_sums[base_label] / max(len(cells), 1))
    table = _table(local, target, np.repeat([m.name for m in mods], k),
                   np.tile(scan.var_names[idx], n_mod), counts.reshape(-1, c),
                   sums.reshape(-1, c), n_changed.reshape(-1), base_label)
    return table, _summaries(scan, table, target, mods, base_label, base_score, len(cells),
                             k), counter


def _scan_cluster(target: str, blk: np.ndarray, values: np.ndarray, scan: G.Scan,
                  mods: list[MOD.Modification], idx: np.ndarray, cols: np.ndarray, search: str,
                  first_split: int, batch_rows: int, bar: tqdm | None
                  ) -> tuple[pd.DataFrame, list[dict[str, Any]], E.Counter]:
    """One cluster's scan (a task of :func:`scadv._parallel.run`): its table, its summary rows
    and the classifier calls it made. ``blk``: the cluster's rows (cells × attacked genes);
    ``values``: the new values of the scanned genes (modifications × cells × genes)."""
    counter = E.Counter()
    local = G.Scan(clf=scan.clf, var_names=scan.var_names, classes=scan.classes,
                   counter=counter)
    ev = G.evaluator(local, blk, batch_rows=batch_rows)
    decided, base_score = E.decide_proba(ev.proba)
    base_label = int(decided)
    tick = bar if bar is not None else PB.bar(progress=False)
    if search == "exhaustive":
        table = _exhaustive(local, ev, target, mods, idx, cols, values, blk[:, idx],
                            base_label, tick)
    else:
        table = _dichotomy(local, ev, target, mods, idx, cols, values, base_label,
                           first_split, tick)
    return table, _summaries(scan, table, target, mods, base_label, float(base_score),
                             len(blk), len(idx)), counter


def _summaries(scan: G.Scan, table: pd.DataFrame, target: str, mods: list[MOD.Modification],
               base_label: int, base_score: float, n_cells: int, n_genes: int
               ) -> list[dict[str, Any]]:
    """One summary row per modification: the genes whose modification flips the cluster."""
    summaries = []
    for m in mods:
        flips = table[(table["modification"] == m.name) & table["flipped"]]
        summaries.append({
            "cluster": str(target), "modification": m.name,
            "original_label": scan.classes[base_label], "original_score": base_score,
            "n_cells": n_cells, "n_genes": n_genes,
            "n_flip_genes": len(flips),
        })
    return summaries


def _table(s: G.Setup | G.Scan, target: str, mod_names: np.ndarray, genes: np.ndarray,
           counts: np.ndarray, sums: np.ndarray, n_changed: np.ndarray, base_label: int
           ) -> pd.DataFrame:
    labels, scores = E.decide(counts, sums)
    n = counts.sum(axis=-1)
    return pd.DataFrame({
        "cluster": np.full(len(genes), str(target), dtype=object),
        "modification": mod_names,
        "gene": genes,
        "flipped": labels != base_label,
        "new_label": G.label_names(s, labels),
        "new_score": scores.astype(np.float64),
        "original_score": (sums[..., base_label] / np.maximum(n, 1)).astype(np.float64),
        "frac_original": (counts[..., base_label] / np.maximum(n, 1)).astype(np.float64),
        "n_cells_changed": n_changed.astype(np.int64),
    })


def _exhaustive(s: G.Setup | G.Scan, ev: E.Evaluator, target: str, mods: list[MOD.Modification],
                idx: np.ndarray, cols: np.ndarray, values: np.ndarray, current: np.ndarray,
                base_label: int, bar: tqdm) -> pd.DataFrame:
    """Every (modification, gene) variant, exactly. ``current``: the cluster's values of the
    scanned genes (cells × genes)."""
    counts, sums, _ = E.single_gene_scan(ev, cols, values, bar=bar)
    n_changed = (values != current[None]).sum(axis=1)  # also for genes the classifier ignores
    n_mod, k = len(mods), len(idx)
    return _table(s, target, np.repeat([m.name for m in mods], k),
                  np.tile(s.var_names[idx], n_mod), counts.reshape(-1, counts.shape[-1]),
                  sums.reshape(-1, sums.shape[-1]), n_changed.reshape(-1), base_label)


def _dichotomy(s: G.Setup | G.Scan, ev: E.Evaluator, target: str, mods: list[MOD.Modification],
               idx: np.ndarray, cols: np.ndarray, values: np.ndarray, base_label: int,
               first_split: int, bar: tqdm) -> pd.DataFrame:
    """adverSCarial's bucket dichotomy, one batched call per level and modification."""
    live = np.flatnonzero(cols >= 0)
    rows = []
    for mi, mod in enumerate(mods):
        vals = values[mi][:, live]  # (n, k_live)
        genes_live = cols[live]
        n_buckets = min(first_split, len(live)) or 1
        buckets = [np.arange(len(live))[b::n_buckets] for b in range(n_buckets)]
        buckets = [b for b in buckets if len(b)]
        while buckets:
            choice = np.zeros((len(buckets), len(live)), dtype=np.int8)
            for i, b in enumerate(buckets):
                choice[i, b] = 1
            proba = ev.sets(genes_live, choice, vals[None])
            labels, scores = E.decide_proba(proba)
            nxt = []
            for i, b in enumerate(buckets):
                if labels[i] == base_label:
                    continue
                if len(b) == 1:
                    pred = proba[i].argmax(axis=1)
                    n = len(pred)
                    rows.append({
                        "cluster": str(target), "modification": mod.name,
                        "gene": s.var_names[idx[live[b[0]]]], "flipped": True,
                        "new_label": s.classes[int(labels[i])], "new_score": float(scores[i]),
                        "original_score": float(proba[i][:, base_label].mean()),
                        "frac_original": float((pred == base_label).sum() / n),
                        "n_cells_changed": int((vals[:, b[0]] != ev.block[:, genes_live[b[0]]]
                                                ).sum()),
                    })
                else:
                    nxt += [b[0::2], b[1::2]]
            buckets = nxt
        bar.update(len(idx))
    cols_ = ["cluster", "modification", "gene", "flipped", "new_label", "new_score",
             "original_score", "frac_original", "n_cells_changed"]
    table = pd.DataFrame(rows, columns=cols_)
    return table.astype({"flipped": bool, "n_cells_changed": np.int64})
