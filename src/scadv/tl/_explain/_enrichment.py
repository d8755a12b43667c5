"""``scadv.tl.gene_set_enrichment``: are a class's top attributed genes enriched in known gene
sets? (hypergeometric test, Benjamini–Hochberg FDR; gene sets from a user's GMT file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from scipy import stats

from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from ..._results import write_results
from . import _rankings as RK

GeneSets = str | Path | Mapping[str, Sequence[str]]


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets from a GMT file: one set per line, ``name<TAB>description<TAB>gene<TAB>gene…``.

    Blank lines and lines starting with ``#`` are skipped. Raises :class:`ScadvInputError`
    naming the line for anything else that is not a gene set.
    """
    path = Path(path)
    if not path.is_file():
        raise ScadvInputError(f"gene set file {str(path)!r} does not exist. Pass the path of a "
                              "GMT file (e.g. downloaded from MSigDB) or a dict {name: genes}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ScadvInputError(f"{path.name} is not a text GMT file ({err.reason}); pass a "
                              "tab-separated GMT file.") from err
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.rstrip("\n").split("\t")]
        if len(fields) < 3:
            raise ScadvInputError(
                f"{path.name}, line {number}: a GMT line needs a name, a description and at "
                f"least one gene, separated by tabs; found {len(fields)} field(s) "
                f"({line[:60]!r}). Is the file tab-separated?"
            )
        name, genes = fields[0], [g for g in fields[2:] if g]
        if not name:
            raise ScadvInputError(f"{path.name}, line {number}: the gene set has no name.")
        if not genes:
            raise ScadvInputError(f"{path.name}, line {number}: gene set {name!r} lists no genes.")
        if name in sets:
            raise ScadvInputError(f"{path.name}, line {number}: gene set {name!r} appears twice.")
        sets[name] = list(dict.fromkeys(genes))
    if not sets:
        raise ScadvInputError(f"{path.name} holds no gene set.")
    return sets


def _gene_sets(gene_sets: GeneSets) -> dict[str, list[str]]:
    if isinstance(gene_sets, (str, Path)):
        return read_gmt(gene_sets)
    if isinstance(gene_sets, Mapping):
        if not gene_sets:
            raise ScadvInputError("gene_sets is empty.")
        out = {}
        for name, genes in gene_sets.items():
            if isinstance(genes, str):
                raise ScadvInputError(f"gene set {name!r} must be a non-empty list of genes.")
            names = V.names(f"gene set {name!r}", genes, single=False) or ()
            out[str(name)] = list(dict.fromkeys(names))
        return out
    raise ScadvInputError(f"gene_sets must be a GMT file path or a dict {{name: genes}}, got "
                          f"{type(gene_sets).__name__}.")


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (FDR), same shape as ``p``."""
    p = np.asarray(p, dtype=float)
    flat = p.ravel()
    n = len(flat)
    if n == 0:
        return p.copy()
    order = np.argsort(flat)
    ranked = flat[order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(ranked, 1.0)
    return out.reshape(p.shape)


def gene_set_enrichment(
    adata: AnnData,
    gene_sets: GeneSets,
    *,
    key: str = "attr_integrated_gradients",
    k: int = 50,
    min_size: int = 3,
    max_size: int = 1000,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Enrichment of each class's top ``k`` attributed genes in gene sets (e.g. pathways).

    For every class and gene set, a one-sided hypergeometric test of the overlap between the
    class's top ``k`` genes and the set, against the universe of the model's genes (the only
    genes that can be attributed); gene sets are restricted to that universe and kept when
    ``min_size`` ≤ size ≤ ``max_size``. p-values are adjusted with Benjamini–Hochberg over all
    tests (every class and set).

    Parameters
    ----------
    adata
        Holds the attribution run ``key``.
    gene_sets
        A GMT file (tab-separated: name, description, genes…) or a dict ``{name: [genes]}``.
        Gene names must match the model's gene names (e.g. symbols).
    key
        The attribution run (``key_added`` of :func:`scadv.tl.attribute`).
    k
        Number of top genes per class tested.
    min_size, max_size
        Size range of the gene sets tested (after restriction to the model's genes).
    key_added
        Name of the record; default ``'<key>_enrichment'``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]``:
    ``table`` (a DataFrame with one row per class and gene set, sorted by FDR: ``class``,
    ``gene_set``, ``overlap``, ``set_size``, ``k``, ``expected``, ``pval``, ``fdr``,
    ``genes``), ``n_universe``, ``n_sets`` (tested), ``n_sets_skipped`` and provenance.
    """
    V.options(locals())
    V.name("key", key)
    V.positive_int("k", k)
    V.positive_int("min_size", min_size)
    V.positive_int("max_size", max_size)
    start = logg.info(f"gene-set enrichment of {key!r}")
    params = P.call_params(locals(), gene_set_enrichment)
    adata = V.start(adata, copy=copy)
    sets = _gene_sets(gene_sets)
    rec = RK.record(adata, key)
    scores, classes, genes = RK.scores(rec)
    k = RK.check_k(k, len(genes))
    if int(min_size) < 1 or int(max_size) < int(min_size):
        raise ScadvInputError(f"need 1 ≤ min_size ≤ max_size, got {min_size} and {max_size}.")
    universe = pd.Index(genes)
    members, names = [], []
    for name, gs in sets.items():
        pos = universe.get_indexer(gs)
        pos = np.unique(pos[pos >= 0])
        if int(min_size) <= len(pos) <= int(max_size):
            members.append(pos)
            names.append(name)
    if not names:
        n_any = sum(bool((universe.get_indexer(g) >= 0).any()) for g in sets.values())
        raise ScadvInputError(
            f"none of the {len(sets)} gene sets has between {min_size} and {max_size} of the "
            f"model's {len(genes)} genes ({n_any} share any gene with them). Check that the "
            "gene names match (symbols vs Ensembl IDs, case) or widen min_size/max_size."
        )
    membership = np.zeros((len(names), len(genes)), dtype=bool)
    for i, pos in enumerate(members):
        membership[i, pos] = True
    sizes = membership.sum(axis=1)
    rows = []
    n_universe = len(genes)
    for c, cls in enumerate(classes):
        if np.isnan(scores[c]).all():
            continue
        top = RK.top_k(scores[c], k)
        hits = membership[:, top]
        overlap = hits.sum(axis=1)
        pval = stats.hypergeom.sf(overlap - 1, n_universe, sizes, k)
        for i, name in enumerate(names):
            rows.append({"class": cls, "gene_set": name, "overlap": int(overlap[i]),
                         "set_size": int(sizes[i]), "k": k,
                         "expected": float(k * sizes[i] / n_universe), "pval": float(pval[i]),
                         "genes": ", ".join(genes[top[hits[i]]])})
    table = pd.DataFrame(rows)
    table["fdr"] = benjamini_hochberg(table["pval"].to_numpy())
    table = table.sort_values(["fdr", "pval", "class"], kind="stable").reset_index(drop=True)
    table = table[["class", "gene_set", "overlap", "set_size", "k", "expected", "pval", "fdr",
                   "genes"]]
    table["class"] = pd.Categorical(table["class"], categories=classes)
    out = {
        "attribution_key": key,
        "table": table,
        "n_universe": n_universe,
        "n_sets": len(names),
        "n_sets_skipped": len(sets) - len(names),
        "k": k,
        "provenance": P.record(params),
    }
    n_sig = int((table["fdr"] < 0.05).sum())
    write_results(adata, step=f"enrichment of {len(names)} gene sets ({n_sig} class-set pairs "
                              "at FDR < 0.05)", start=start,
                  uns={key_added or f"{key}_enrichment": out})
    return adata if copy else None
