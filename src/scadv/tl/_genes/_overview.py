"""``scadv.tl.overview``: per cluster × modification, how many genes flip it and how many must
stay."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData

from ... import _device as D
from ... import _parallel as PAR
from ... import _progress as PB
from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from . import _common as G
from . import _engine as E
from . import _modifications as MOD
from ._max_change import grow


def overview(
    adata: AnnData,
    *,
    cluster_key: str,
    target: str | Sequence[str] | None = None,
    classifier: Any = None,
    modification: MOD.ModSpec | Sequence[MOD.ModSpec] = ("perc1", "perc99"),
    genes: G.Genes = None,
    signature: bool = True,
    layer: str | None = None,
    key_added: str | None = None,
    batch_rows: int = 4096,
    seed: int = 0,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """For every cluster and modification: how many genes flip it alone, how many must stay.

    The first count is :func:`scadv.tl.single_gene`'s exhaustive scan, the second the size of
    the signature left by :func:`scadv.tl.max_change` (which reuses the scan to order the
    genes). Plot it with :func:`scadv.pl.overview`.

    Parameters
    ----------
    adata
        The cells, with the classifier's input matrix in ``X`` or ``layers[layer]``.
    cluster_key
        ``obs`` column with the clusters.
    target
        Clusters to include; default all of them.
    classifier
        As in :func:`scadv.tl.single_gene`.
    modification
        One or several modifications (see :func:`scadv.tl.single_gene`).
    genes
        Genes to consider (names or a boolean mask); default all.
    signature
        Also run the max-change search for the signature (the slower half).
    layer
        Attack ``adata.layers[layer]`` instead of ``adata.X``.
    key_added
        Name of the result; default ``'overview'``.
    batch_rows
        Rows (cell variants) per classifier call.
    seed
        Seeds ``'random'`` modifications and the max-change tie-breaks.
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
        A DataFrame, one row per (cluster, modification): ``cluster``, ``modification``,
        ``original_label``, ``original_score``, ``n_cells``, ``n_genes``, ``n_flip_genes``,
        ``n_signature_genes`` (-1 without ``signature``), and the genes themselves
        (``flip_genes``, ``signature_genes``: ``;``-separated).
    ``targets``, ``modifications``
        The rows and columns of the heatmap; plus the work done, parameters and provenance.
    """
    V.options(locals())
    V.name("cluster_key", cluster_key)
    V.names("target", target, allow_none=True)
    V.flag("signature", signature)
    start = logg.info("running gene-attack overview")
    params = P.call_params(locals(), overview)
    adata = V.start(adata, copy=copy)
    G.check_common(batch_rows=batch_rows, seed=seed)
    mods = MOD.parse_many(modification)
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=layer, device=device,
                action="scadv.tl.overview")
    targets = G.all_clusters(s) if target is None else (
        [target] if isinstance(target, str) else list(target))
    if not targets:
        raise ScadvInputError(f"obs[{cluster_key!r}] has no cluster to attack.")
    masks = [G.cluster_mask(s, t) for t in targets]
    idx = G.gene_index(s, genes)
    cols = G.classifier_cols(s, idx)
    live = np.flatnonzero(cols >= 0)
    names = s.var_names[idx]
    scan = s.scan()

    def jobs() -> Iterator[tuple[Any, ...]]:
        # each cluster's rows and new values are read here; the scans are tasks
        for t, mask in zip(targets, masks, strict=True):
            yield t, G.block(s, mask), G.values_for(s, mods, idx, mask, seed, str(t))

    with PB.bar(total=len(targets) * len(mods), desc="overview", unit="cluster×modification",
                progress=progress) as bar:
        results = PAR.run(_overview_cluster, jobs(), n_jobs=len(targets),
                          shared=(scan, mods, names, cols, live, bool(signature), seed,
                                  int(batch_rows)),
                          on_dask=s.lazy, done=lambda i, r: bar.update(len(mods)))
    rows = [row for r in results for row in r[0]]
    for r in results:
        s.counter.calls += r[1].calls
        s.counter.rows += r[1].rows
    table = pd.DataFrame(rows)
    key = key_added or G.default_key("overview", s)
    rec = {
        **G.base_record(s, method="overview", params=params, seed=seed),
        "targets": np.asarray([str(t) for t in targets], dtype=str),
        "modifications": np.asarray([m.name for m in mods], dtype=str),
        "signature": bool(signature),
        "table": table,
    }
    G.write(s, step=f"gene-attack overview ({len(targets)} clusters × {len(mods)} "
            "modifications)", start=start, key=key, rec=rec)
    return adata if copy else None


def _overview_cluster(target: str, blk: np.ndarray, values: np.ndarray, scan: G.Scan,
                      mods: list[MOD.Modification], names: np.ndarray, cols: np.ndarray,
                      live: np.ndarray, signature: bool, seed: int, batch_rows: int
                      ) -> tuple[list[dict[str, Any]], E.Counter]:
    """One cluster's rows of the overview (a task of :func:`scadv._parallel.run`) and the
    classifier calls it made."""
    counter = E.Counter()
    local = G.Scan(clf=scan.clf, var_names=scan.var_names, classes=scan.classes,
                   counter=counter)
    ev = G.evaluator(local, blk, batch_rows=batch_rows)
    decided, base_score = E.decide_proba(ev.proba)
    base_label = int(decided)
    counts, sums, _ = E.single_gene_scan(ev, cols[live], values[:, :, live],
                                         labels_only=not signature)
    labels, _ = E.decide(counts, sums)
    rows = []
    for mi, mod in enumerate(mods):
        flips = names[live[labels[mi] != base_label]]
        row = {
            "cluster": str(target), "modification": mod.name,
            "original_label": scan.classes[base_label], "original_score": float(base_score),
            "n_cells": len(blk), "n_genes": len(names),
            "n_flip_genes": len(flips), "n_signature_genes": -1,
            "flip_genes": ";".join(flips), "signature_genes": "",
        }
        if signature:
            sub = G.evaluator(local, blk, batch_rows=batch_rows)
            grown = grow(sub, cols[live], values[mi][:, live], base_label,
                         G.rng_for(seed, "max_change", str(target)),
                         alone=(counts[mi], sums[mi]))
            sig = names[live[~grown.accepted]]
            row.update(n_signature_genes=len(sig), signature_genes=";".join(sig))
        rows.append(row)
    return rows, counter
