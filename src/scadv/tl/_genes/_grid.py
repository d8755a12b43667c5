"""``scadv.tl.grid``: the smallest gene combinations that change a cluster's label, exhaustively."""

from __future__ import annotations

import itertools
import math
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
from . import _engine as E
from . import _modifications as MOD

#: Variants × cells per batched decision (bounds the probabilities held at once).
_CELLS_PER_CHUNK = 1 << 20


def need_genes(genes: G.Genes, what: str) -> None:
    if genes is None:
        raise ScadvInputError(
            f"{what} needs genes=[...]: the genes to combine (e.g. the candidates "
            "scadv.tl.single_gene or the signature of scadv.tl.max_change points to)."
        )


class Combos:
    """Shared set-up of the combination searches: genes, modifications and new values."""

    def __init__(self, s: G.Setup, *, target: str, genes: G.Genes, modification: Any,
                 seed: int, batch_rows: int, what: str) -> None:
        need_genes(genes, what)
        self.s = s
        self.target = str(target)
        self.mask = G.cluster_mask(s, target)
        self.mods = MOD.parse_many(modification)
        self.idx = G.gene_index(s, genes)
        self.cols = G.classifier_cols(s, self.idx)
        self.block = G.block(s, self.mask)
        self.values = G.values_for(s, self.mods, self.idx, self.mask, seed, self.target)
        self.ev = G.evaluator(s, self.block, batch_rows=batch_rows)
        label, score = E.decide_proba(self.ev.proba)
        self.base_label, self.base_score = int(label), float(score)
        # genes the classifier ignores cannot matter: they stay unmodified in evaluations
        self.live = self.cols >= 0

    @property
    def k(self) -> int:
        return len(self.idx)

    def evaluate(self, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label, score and fraction of cells keeping the original label, per combination
        (rows of ``choice``: 0 unmodified, m + 1 modification m, one column per gene)."""
        labels = np.empty(len(choice), dtype=np.int64)
        scores = np.empty(len(choice))
        frac = np.empty(len(choice))
        live = np.flatnonzero(self.live)
        per = max(1, _CELLS_PER_CHUNK // self.ev.n)
        for lo in range(0, len(choice), per):
            ch = choice[lo:lo + per][:, live]
            proba = self.ev.sets(self.cols[live], ch, self.values[:, :, live])
            lab, sc = E.decide_proba(proba)
            labels[lo:lo + per], scores[lo:lo + per] = lab, sc
            frac[lo:lo + per] = (proba.argmax(axis=-1) == self.base_label).mean(axis=-1)
        return labels, scores, frac

    def describe(self, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``'gene;gene'`` and ``'mod;mod'`` text of each combination."""
        names = self.s.var_names[self.idx]
        mod_names = np.asarray([m.name for m in self.mods])
        genes_txt, mods_txt = [], []
        for row in choice:
            on = np.flatnonzero(row)
            genes_txt.append(";".join(names[on]))
            mods_txt.append(";".join(mod_names[row[on] - 1]))
        return np.asarray(genes_txt, dtype=str), np.asarray(mods_txt, dtype=str)

    def table(self, choice: np.ndarray, labels: np.ndarray, scores: np.ndarray,
              frac: np.ndarray, **extra: Any) -> pd.DataFrame:
        genes_txt, mods_txt = self.describe(choice)
        return pd.DataFrame({
            **extra,
            "size": (choice > 0).sum(axis=1).astype(np.int64),
            "genes": genes_txt,
            "modifications": mods_txt,
            "new_label": G.label_names(self.s, labels),
            "new_score": scores.astype(np.float64),
            "frac_original": frac.astype(np.float64),
        })

    def modified(self, row: np.ndarray) -> np.ndarray:
        """The cluster's rows (cells × all attacked genes) with combination ``row`` applied."""
        out = self.block.copy()
        for j in np.flatnonzero(row):
            out[:, self.idx[j]] = self.values[row[j] - 1, :, j]
        return out

    def predict(self, row: np.ndarray) -> np.ndarray:
        live = np.flatnonzero(self.live)
        proba = self.ev.sets(self.cols[live], row[None, live], self.values[:, :, live])[0]
        return proba.argmax(axis=1)

    def base_fields(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "genes": np.asarray(self.s.var_names[self.idx], dtype=str),
            "modifications": np.asarray([m.name for m in self.mods], dtype=str),
            "original_label": self.s.classes[self.base_label],
            "original_score": self.base_score,
        }


def n_combinations(k: int, n_mod: int, max_size: int) -> int:
    """Combinations of at most ``max_size`` modified genes among ``k``, each modified one of
    ``n_mod`` ways."""
    return sum(math.comb(k, size) * n_mod**size for size in range(1, max_size + 1))


def size_choices(k: int, n_mod: int, size: int) -> np.ndarray:
    """Every combination of exactly ``size`` modified genes (rows), as a choice matrix."""
    subsets = np.asarray(list(itertools.combinations(range(k), size)), dtype=np.int64)
    mods = np.asarray(list(itertools.product(range(1, n_mod + 1), repeat=size)), dtype=np.int8)
    n = len(subsets) * len(mods)
    choice = np.zeros((n, k), dtype=np.int8)
    rows = np.arange(n)[:, None]
    choice[rows, np.repeat(subsets, len(mods), axis=0)] = np.tile(mods, (len(subsets), 1))
    return choice


def grid(
    adata: AnnData,
    *,
    cluster_key: str,
    target: str,
    genes: Sequence[str] | np.ndarray,
    classifier: Any = None,
    modification: MOD.ModSpec | Sequence[MOD.ModSpec] = ("perc1", "perc99"),
    max_size: int | None = None,
    max_combinations: int = 1_000_000,
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
    """The smallest combinations of gene modifications that change a cluster's label (grid).

    Each of the given genes is either left unmodified or modified with one of the
    modifications. Combinations are tried by increasing size (one modified gene, then two, …),
    many per classifier call, and the search stops after the first size at which some
    combination changes the cluster's label: all combinations of that size that do are
    reported. The full grid has ``(modifications + 1) ** genes`` points; a search larger than
    ``max_combinations`` is refused with an error that says how large it would be.

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
    max_size
        Largest number of genes modified at once; default all of them.
    max_combinations
        Refuse searches with more combinations than this.
    layer
        Attack ``adata.layers[layer]`` instead of ``adata.X``.
    add_layer, add_obs
        Also write the matrix, and the cluster cells' predictions, with the best smallest
        combination (highest new score) applied.
    key_added
        Name of the result; default ``'grid'``.
    batch_rows
        Rows (cell variants) per classifier call.
    seed
        Seeds ``'random'`` modifications.
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
        A DataFrame, one row per smallest combination that changes the label: ``size``,
        ``genes`` and ``modifications`` (``;``-separated, aligned), ``new_label``,
        ``new_score`` and ``frac_original`` (fraction of cells still predicted the original
        label). Empty when none does.
    ``found``, ``smallest_size``, ``n_combinations_evaluated``, ``n_combinations_total``
        The outcome (``smallest_size`` is 0 when nothing was found); plus the genes,
        modifications, original label, the work done, parameters and provenance.

    With ``add_layer``: ``adata.layers['scadv_<key_added>']``. With ``add_obs``:
    ``adata.obs['scadv_<key_added>_pred']``.
    """
    V.options(locals())
    V.name("cluster_key", cluster_key)
    V.optional_int("max_size", max_size)
    V.positive_int("max_combinations", max_combinations)
    V.flag("add_layer", add_layer)
    V.flag("add_obs", add_obs)
    start = logg.info("running grid search for the smallest attack")
    params = P.call_params(locals(), grid)
    adata = V.start(adata, copy=copy)
    G.check_common(batch_rows=batch_rows, seed=seed)
    need_genes(genes, "scadv.tl.grid")
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=layer, device=device,
                action="scadv.tl.grid")
    n_mod = len(MOD.parse_many(modification))
    k = len(G.gene_index(s, genes))
    size_cap = k if max_size is None else int(max_size)
    if not 1 <= size_cap <= k:
        raise ScadvInputError(f"max_size must be between 1 and the number of genes ({k}), got "
                              f"{max_size}.")
    total = n_combinations(k, n_mod, size_cap)
    if total > int(max_combinations):
        full = (n_mod + 1) ** k
        raise ScadvInputError(
            f"a grid search over {k} genes with {n_mod} modifications (each gene unmodified or "
            f"modified one of {n_mod} ways) up to {size_cap} genes at once is {total:,} "
            f"combinations (the full grid has {n_mod + 1}^{k} = {full:.3g} points), more than "
            f"max_combinations={int(max_combinations):,}. Pass fewer genes (e.g. those "
            "scadv.tl.single_gene or the signature of scadv.tl.max_change points to), a smaller "
            "max_size, use scadv.tl.random_walk, or raise max_combinations."
        )
    cb = Combos(s, target=target, genes=genes, modification=modification, seed=seed,
                batch_rows=batch_rows, what="scadv.tl.grid")
    evaluated = 0
    found = None
    with PB.bar(total=total, desc="grid", unit="combination", progress=progress) as bar:
        for size in range(1, size_cap + 1):
            choice = size_choices(k, n_mod, size)
            labels, scores, frac = cb.evaluate(choice)
            evaluated += len(choice)
            bar.update(len(choice))
            hit = labels != cb.base_label
            if hit.any():
                found = (choice[hit], labels[hit], scores[hit], frac[hit])
                break
    if found is None:
        table = cb.table(np.zeros((0, k), dtype=np.int8), np.zeros(0, dtype=np.int64),
                         np.zeros(0), np.zeros(0))
    else:
        order = np.argsort(-found[2], kind="stable")
        table = cb.table(*(a[order] for a in found))
    key = key_added or G.default_key("grid", s)
    rec = {
        **G.base_record(s, method="grid", params=params, seed=seed),
        **cb.base_fields(),
        "found": found is not None,
        "smallest_size": int(table["size"].iloc[0]) if len(table) else 0,
        "n_combinations_evaluated": int(evaluated),
        "n_combinations_total": int(total),
        "table": table,
    }
    best = None if found is None else found[0][np.argsort(-found[2], kind="stable")[0]]
    G.write(s, step=f"grid search on {target!r}: " + (
        f"{len(table)} combinations of {rec['smallest_size']} genes change the label"
        if found is not None else "no combination changes the label"), start=start, key=key,
        rec=rec, mask=cb.mask, modified=None if best is None else cb.modified(best),
        pred=None if best is None else cb.predict(best), add_layer=add_layer, add_obs=add_obs)
    return adata if copy else None
