"""``scadv.tl.random_walk``: a small gene combination that changes a cluster's label, by a
seeded random walk (for gene lists too long for :func:`scadv.tl.grid`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData

from ... import _device as D
from ... import _progress as PB
from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from . import _common as G
from . import _modifications as MOD
from ._grid import Combos


def random_walk(
    adata: AnnData,
    *,
    cluster_key: str,
    target: str,
    genes: Sequence[str] | np.ndarray,
    classifier: Any = None,
    modification: MOD.ModSpec | Sequence[MOD.ModSpec] = ("perc1", "perc99"),
    first_batch: int = 100,
    walk_length: int = 100,
    proposals: int = 32,
    change_ratio: float = 0.2,
    max_rows: int = 100_000_000,
    layer: str | None = None,
    add_layer: bool = False,
    add_obs: bool = False,
    key_added: str | None = None,
    batch_rows: int = 4096,
    seed: int = 0,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """A small combination of gene modifications that changes a cluster's label (random walk).

    adverSCarial's ``advRandWalkMinChange``, batched and seeded. Each gene is unmodified or
    modified one of the given ways. First ``first_batch`` random combinations (and "every gene
    modified the same way", once per modification) are classified in one batch; the flipping
    one with the fewest modified genes is the start. Then each of ``walk_length`` steps
    classifies ``proposals`` variants of the best combination so far — each modified gene is
    reverted with probability ``change_ratio`` (at least one is) and switched to another
    modification with probability ``change_ratio / 2`` — and keeps the smallest one that still
    flips. A final polish removes single genes while the label stays changed, so the result is
    minimal: no gene of it can be dropped alone. The walk is deterministic under ``seed``.

    Parameters
    ----------
    adata
        The cells, with the classifier's input matrix in ``X`` or ``layers[layer]``.
    cluster_key
        ``obs`` column with the clusters.
    target
        The cluster to attack.
    genes
        The genes to combine.
    classifier
        As in :func:`scadv.tl.single_gene`.
    modification
        One or several modifications (see :func:`scadv.tl.single_gene`).
    first_batch
        Random combinations tried to find a start.
    walk_length
        Steps of the walk.
    proposals
        Variants classified per step (one batch).
    change_ratio
        Probability that a proposal reverts each modified gene.
    max_rows
        Refuse walks that would classify more cell variants than this (``(first_batch +
        walk_length × proposals) × cells``); the error says how many.
    layer
        Attack ``adata.layers[layer]`` instead of ``adata.X``.
    add_layer, add_obs
        Also write the matrix, and the cluster cells' predictions, with the combination found
        applied.
    key_added
        Name of the result; default ``'random_walk'``.
    batch_rows
        Rows (cell variants) per classifier call.
    seed
        Seeds the walk and ``'random'`` modifications.
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
        A DataFrame, one row per improvement of the walk (``step``, ``size``, ``genes``,
        ``modifications``, ``new_label``, ``new_score``, ``frac_original``); the last row is
        the result. Empty when no start was found.
    ``found``, ``best_genes``, ``best_modifications``, ``best_size``, ``new_label``
        The combination found (aligned arrays of genes and their modifications); plus the
        original label, the work done, parameters and provenance.

    With ``add_layer``: ``adata.layers['scadv_<key_added>']``. With ``add_obs``:
    ``adata.obs['scadv_<key_added>_pred']``.
    """
    V.options(locals())
    V.name("cluster_key", cluster_key)
    V.positive_int("first_batch", first_batch)
    V.nonneg_int("walk_length", walk_length)
    V.positive_int("proposals", proposals)
    V.fraction("change_ratio", change_ratio, closed_high=True)
    V.positive_int("max_rows", max_rows)
    V.flag("add_layer", add_layer)
    V.flag("add_obs", add_obs)
    start = logg.info("running random-walk search for a small attack")
    params = P.call_params(locals(), random_walk)
    adata = V.start(adata, copy=copy)
    G.check_common(batch_rows=batch_rows, seed=seed)
    for name, value in (("first_batch", first_batch), ("proposals", proposals)):
        if int(value) < 1:
            raise ScadvInputError(f"{name} must be ≥ 1, got {value}.")
    if int(walk_length) < 0:
        raise ScadvInputError(f"walk_length must be ≥ 0, got {walk_length}.")
    if not 0 < change_ratio <= 1:
        raise ScadvInputError(f"change_ratio must be in (0, 1], got {change_ratio}.")
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=layer, device=device,
                action="scadv.tl.random_walk")
    mask = G.cluster_mask(s, target)
    planned = (int(first_batch) + int(walk_length) * int(proposals)) * int(mask.sum())
    if planned > int(max_rows):
        raise ScadvInputError(
            f"this random walk would classify {planned:,} cell variants ((first_batch "
            f"{first_batch} + walk_length {walk_length} × proposals {proposals}) × "
            f"{int(mask.sum())} cells), more than max_rows={int(max_rows):,}. Lower "
            "first_batch, walk_length or proposals, or raise max_rows."
        )
    cb = Combos(s, target=target, genes=genes, modification=modification, seed=seed,
                batch_rows=batch_rows, what="scadv.tl.random_walk")
    rng = G.rng_for(seed, "random_walk", str(target))
    n_mod, k = len(cb.mods), cb.k
    history: list[pd.DataFrame] = []

    def improve(choice: np.ndarray, step: int, best: tuple | None) -> tuple | None:
        labels, scores, frac = cb.evaluate(choice)
        hit = np.flatnonzero(labels != cb.base_label)
        if not len(hit):
            return best
        size = (choice[hit] > 0).sum(axis=1)
        pick = hit[np.lexsort((-scores[hit], size))[0]]
        cand = (choice[pick], labels[pick], scores[pick], frac[pick])
        if best is None or (cand[0] > 0).sum() < (best[0] > 0).sum():
            history.append(cb.table(cand[0][None], np.asarray([cand[1]]), np.asarray([cand[2]]),
                                    np.asarray([cand[3]]), step=[step]))
            return cand
        return best

    with PB.bar(total=int(walk_length) + 1, desc="random walk", unit="step",
              progress=progress) as bar:
        seeds = rng.integers(0, n_mod + 1, size=(int(first_batch), k)).astype(np.int8)
        uniform = np.repeat(np.arange(1, n_mod + 1, dtype=np.int8)[:, None], k, axis=1)
        best = improve(np.concatenate([uniform, seeds]), 0, None)
        bar.update(1)
        for step in range(1, int(walk_length) + 1):
            if best is None or (best[0] > 0).sum() <= 1:
                break
            best = improve(_propose(best[0], int(proposals), float(change_ratio), n_mod, rng),
                           step, best)
            bar.update(1)
        best = _polish(cb, best, improve, int(walk_length) + 1)
    table = (pd.concat(history, ignore_index=True) if history
             else cb.table(np.zeros((0, k), dtype=np.int8), np.zeros(0, dtype=np.int64),
                           np.zeros(0), np.zeros(0), step=np.zeros(0, dtype=np.int64)))
    on = np.flatnonzero(best[0]) if best is not None else np.zeros(0, dtype=np.int64)
    key = key_added or G.default_key("random_walk", s)
    rec = {
        **G.base_record(s, method="random_walk", params=params, seed=seed),
        **cb.base_fields(),
        "found": best is not None,
        "best_genes": np.asarray(s.var_names[cb.idx[on]], dtype=str),
        "best_modifications": np.asarray([cb.mods[m - 1].name for m in best[0][on]]
                                         if best is not None else [], dtype=str),
        "best_size": len(on),
        "new_label": s.classes[int(best[1])] if best is not None else "None",
        "table": table,
    }
    G.write(s, step=f"random walk on {target!r}: " + (
        f"{len(on)} modified genes change the label to {rec['new_label']!r}"
        if best is not None else "no combination found that changes the label"), start=start,
        key=key, rec=rec, mask=cb.mask, modified=None if best is None else cb.modified(best[0]),
        pred=None if best is None else cb.predict(best[0]), add_layer=add_layer,
        add_obs=add_obs)
    return adata if copy else None


def _propose(best: np.ndarray, n: int, ratio: float, n_mod: int, rng: np.random.Generator
             ) -> np.ndarray:
    """``n`` variants of ``best`` with fewer modified genes (at least one reverted)."""
    on = np.flatnonzero(best)
    out = np.repeat(best[None], n, axis=0)
    revert = rng.random((n, len(on))) < ratio
    none = ~revert.any(axis=1)
    revert[none, rng.integers(0, len(on), size=int(none.sum()))] = True
    if n_mod > 1:
        switch = (rng.random((n, len(on))) < ratio / 2) & ~revert
        shift = rng.integers(1, n_mod, size=(n, len(on))).astype(np.int8)
        cur = out[:, on]
        out[:, on] = np.where(switch, (cur - 1 + shift) % n_mod + 1, cur)
    sub = out[:, on]
    sub[revert] = 0
    out[:, on] = sub
    return out


def _polish(cb: Combos, best: tuple | None, improve: Any, step: int) -> tuple | None:
    """Drop single genes while the label stays changed (one batch per round)."""
    while best is not None and (best[0] > 0).sum() > 1:
        on = np.flatnonzero(best[0])
        drops = np.repeat(best[0][None], len(on), axis=0)
        drops[np.arange(len(on)), on] = 0
        new = improve(drops, step, best)
        if new is best:
            break
        best = new
    return best
