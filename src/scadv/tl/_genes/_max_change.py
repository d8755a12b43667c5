"""``scadv.tl.max_change``: the largest gene set a cluster tolerates without changing its label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from tqdm import tqdm

from ... import _device as D
from ... import _progress as PB
from ... import _provenance as P
from ... import _validate as V
from . import _common as G
from . import _engine as E
from . import _modifications as MOD

#: Prefix lengths tested per call of the multi-section search.
_PROBES = 8
#: First window of single-gene screening on top of the accepted set.
_WINDOW = 4


@dataclass
class Grown:
    """Result of :func:`grow` over the live genes (those the classifier reads)."""

    accepted: np.ndarray  # bool (k,)
    alone_flips: np.ndarray  # bool (k,): flips the cluster alone (on the unmodified cluster)
    alone_label: np.ndarray  # int (k,): cluster label with the gene modified alone
    alone_score: np.ndarray  # (k,): mean probability of the original label, gene alone
    order: np.ndarray  # (k,) the order genes were considered in
    passes: int


def grow(ev: E.Evaluator, genes: np.ndarray, values: np.ndarray, base_label: int,
         rng: np.random.Generator, *, bar: tqdm | None = None,
         alone: tuple[np.ndarray, np.ndarray] | None = None) -> Grown:
    """Greedily grow a set of genes whose joint modification keeps ``base_label``.

    Genes are taken least harmful first (the original label's mean probability when the gene
    is modified alone; ties in a seeded random order). A batched screen finds the next gene
    that can be added alone on top of the set; a multi-section search then adds the longest
    run of genes after it that keeps the label (one call tests ``_PROBES`` run lengths). Passes
    over the rejected genes repeat until none can be added alone: the final set is maximal for
    single additions, and its label is the original one by construction (every accepted set
    was evaluated). ``ev`` ends in the modified state.

    Parameters
    ----------
    ev
        Evaluator of the unmodified cluster.
    genes, values
        Classifier columns of the candidate genes and their new values (cells × genes).
    alone
        Optional precomputed single-gene scan ``(counts, sums)`` of these genes (genes ×
        classes) on the unmodified cluster.
    """
    k = len(genes)

    def tick(n: int) -> None:
        if bar is not None:
            bar.update(n)
    if alone is None:
        counts, sums, _ = E.single_gene_scan(ev, genes, values[None])
        counts, sums = counts[0], sums[0]
    else:
        counts, sums = alone
    alone_label, _ = E.decide(counts, sums)
    alone_score = sums[:, base_label] / ev.n
    tie = rng.permutation(k)
    order = np.lexsort((tie, -alone_score))
    accepted = np.zeros(k, dtype=bool)
    pending = order
    passes = 0
    while len(pending):
        passes += 1
        rejected: list[np.ndarray] = []
        pos, added, window = 0, 0, _WINDOW
        while pos < len(pending):
            run = pending[pos:]
            n_add = _longest_prefix(ev, genes[run], values[:, run], base_label)
            if n_add:
                ev.commit(genes[run[:n_add]], values[:, run[:n_add]])
                accepted[run[:n_add]] = True
                tick(n_add)
                added += n_add
                pos += n_add
                continue
            # pending[pos] cannot be added: screen a window of single additions to skip the
            # genes that cannot be added either (the window adapts to the run lengths seen)
            win = run[:window]
            c, s_, _ = E.single_gene_scan(ev, genes[win], values[None][:, :, win],
                                          labels_only=True)
            lab, _ = E.decide(c[0], s_[0])
            ok = np.flatnonzero(lab == base_label)
            first = int(ok[0]) if len(ok) else len(win)
            rejected.append(win[:first])
            tick(first)
            pos += first
            window = window * 2 if not len(ok) else max(_WINDOW, 2 * (first + 1))
        pending = np.concatenate(rejected) if rejected else np.empty(0, dtype=np.int64)
        if not added:
            break
        if bar is not None:  # the rejected genes are screened again in the next pass
            bar.total += len(pending)
            bar.refresh()
    return Grown(accepted=accepted, alone_flips=alone_label != base_label,
                 alone_label=alone_label, alone_score=alone_score, order=order, passes=passes)


def _longest_prefix(ev: E.Evaluator, genes: np.ndarray, values: np.ndarray, base_label: int
                    ) -> int:
    """Largest ``L`` such that modifying ``genes[:L]`` on top of the current state keeps the
    label (0 if even the first gene changes it); multi-section search, ``_PROBES`` lengths per
    call (the largest length that keeps the label among those tried: exact when the label's
    survival is monotone in ``L``, a valid set in any case)."""
    best, upper = 0, len(genes)
    while upper > best:
        # geometric spacing: short runs (near the decision boundary) are found in one call,
        # long runs in a few
        cand = np.unique(np.geomspace(1, upper - best, min(_PROBES, upper - best)).round()
                         ).astype(np.int64) + best
        labels, _ = E.decide_proba(ev.prefixes(genes, values, cand))
        good = cand[labels == base_label]
        if len(good):
            best = max(best, int(good.max()))
        fails = cand[(labels != base_label) & (cand > best)]
        if not len(fails):
            break
        upper = int(fails.min()) - 1
    return best


def max_change(
    adata: AnnData,
    *,
    cluster_key: str,
    target: str,
    classifier: Any = None,
    modification: MOD.ModSpec = "perc99",
    genes: G.Genes = None,
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
    """The largest set of genes that can be modified together without changing a cluster's label.

    The genes outside that set are the cluster's *signature*: the genes the classifier needs to
    keep its call. adverSCarial finds the set by a randomised dichotomy; here the search is
    deterministic under ``seed`` (it only breaks ties) and greedy: genes are considered least
    harmful first (by how much modifying each alone lowers the original label's probability),
    batched single-gene screens skip genes that cannot be added, and a multi-section search adds
    the longest run of genes that keeps the label, 32 run lengths per classifier call. Passes
    over the rejected genes repeat until none of them can be added alone. The set's label is
    the original one by construction: every accepted set was classified.

    Parameters
    ----------
    adata
        The cells, with the classifier's input matrix in ``X`` or ``layers[layer]``.
    cluster_key
        ``obs`` column with the clusters.
    target
        The cluster to attack.
    classifier
        As in :func:`scadv.tl.single_gene`.
    modification
        One modification (see :func:`scadv.tl.single_gene`); default ``'perc99'`` as in
        adverSCarial.
    genes
        Candidate genes (names or a boolean mask); default all. Genes the classifier does not
        read are always in the set.
    layer
        Attack ``adata.layers[layer]`` instead of ``adata.X``.
    add_layer
        Also write the matrix with the whole set modified in the cluster's cells.
    add_obs
        Also write the cluster cells' predictions after the modification.
    key_added
        Name of the result; default ``'max_change'``.
    batch_rows
        Rows (cell variants) per classifier call.
    seed
        Breaks ties in the gene order; seeds ``'random'``.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (scadv's MLP).
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]`` with:

    ``modifiable``, ``signature``
        Gene names: the set modified together, and the rest.
    ``table``
        A DataFrame, one row per candidate gene: ``gene``, ``status`` (``'modifiable'``,
        ``'signature'``; genes the classifier ignores are ``'modifiable'`` with ``read=False``),
        ``read``, ``flips_alone``, ``label_alone``, ``original_score_alone`` and ``rank`` (the
        order the genes were considered in).
    ``original_label``, ``original_score``, ``final_label``, ``final_score``
        The cluster's label and mean probability before and after modifying the whole set.
    ``n_passes``, ``n_classifier_calls``, ``n_rows_classified``, ``seconds``
        The work done; plus parameters and provenance.

    With ``add_layer``: ``adata.layers['scadv_<key_added>']`` (the input with the set
    modified in the cluster's cells). With ``add_obs``: ``adata.obs['scadv_<key_added>_pred']``
    (the cluster cells' new predictions; NaN elsewhere).
    """
    V.options(locals())
    V.name("cluster_key", cluster_key)
    V.flag("add_layer", add_layer)
    V.flag("add_obs", add_obs)
    start = logg.info("running max-change attack")
    params = P.call_params(locals(), max_change)
    adata = V.start(adata, copy=copy)
    G.check_common(batch_rows=batch_rows, seed=seed)
    mod = MOD.parse(modification)
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=layer, device=device,
                action="scadv.tl.max_change")
    mask = G.cluster_mask(s, target)
    idx = G.gene_index(s, genes)
    cols = G.classifier_cols(s, idx)
    blk = G.block(s, mask)
    values = G.values_for(s, [mod], idx, mask, seed, str(target))[0]
    ev = G.evaluator(s, blk, batch_rows=batch_rows)
    decided, base_score = E.decide_proba(ev.proba)
    base_label = int(decided)
    live = np.flatnonzero(cols >= 0)
    with PB.bar(total=len(live), desc="max-change", unit="gene", progress=progress) as bar:
        grown = grow(ev, cols[live], values[:, live], base_label,
                     G.rng_for(seed, "max_change", str(target)), bar=bar)
    final_label, final_score = E.decide_proba(ev.proba)

    table = signature_table(s, idx, cols, live, grown, base_label, float(base_score))
    modifiable = table["gene"][table["status"] == "modifiable"].to_numpy(dtype=str)
    signature = table["gene"][table["status"] == "signature"].to_numpy(dtype=str)
    modified = blk.copy()
    keep = np.ones(len(idx), dtype=bool)
    keep[live[~grown.accepted]] = False
    modified[:, idx[keep]] = values[:, keep]
    key = key_added or G.default_key("max_change", s)
    rec = {
        **G.base_record(s, method="max_change", params=params, seed=seed),
        "target": str(target),
        "modification": mod.name,
        "modifiable": modifiable,
        "signature": signature,
        "table": table,
        "original_label": s.classes[base_label],
        "original_score": float(base_score),
        "final_label": s.classes[int(final_label)],
        "final_score": float(final_score),
        "n_passes": int(grown.passes),
    }
    G.write(s, step=f"max-change attack on {target!r} ({len(modifiable)} genes modifiable, "
            f"signature of {len(signature)})", start=start, key=key, rec=rec, mask=mask,
            modified=modified, pred=ev.pred, add_layer=add_layer, add_obs=add_obs)
    return adata if copy else None


def signature_table(s: G.Setup, idx: np.ndarray, cols: np.ndarray, live: np.ndarray,
                    grown: Grown, base_label: int, base_score: float) -> pd.DataFrame:
    """One row per candidate gene (see :func:`max_change`); genes the classifier does not
    read keep the original label and score."""
    k = len(idx)
    status = np.full(k, "modifiable", dtype=object)
    status[live[~grown.accepted]] = "signature"
    flips = np.zeros(k, dtype=bool)
    flips[live] = grown.alone_flips
    label = np.full(k, s.classes[base_label], dtype=object)
    label[live] = G.label_names(s, grown.alone_label)
    score = np.full(k, base_score)
    score[live] = grown.alone_score
    rank = np.full(k, -1, dtype=np.int64)
    rank[live[grown.order]] = np.arange(len(live))
    return pd.DataFrame({
        "gene": s.var_names[idx],
        "status": status.astype(str),
        "read": cols >= 0,
        "flips_alone": flips,
        "label_alone": label.astype(str),
        "original_score_alone": score,
        "rank": rank,
    })
