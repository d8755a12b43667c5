"""``scadv.pp.prepare``: record how counts (or scanpy-processed data) become the classifier's
input."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
from anndata import AnnData
from scipy import sparse

from .. import _keys as K
from .. import _provenance as P
from .. import _recipe as R
from .. import _rows as RW
from .. import _validate as V
from .._errors import ScadvInputError
from .._results import scadv_uns, write_results
from . import _stats as S

Flavor = Literal["seurat_v3", "seurat", "cell_ranger"]


def prepare(
    adata: AnnData,
    *,
    n_top_genes: int = 2000,
    target_sum: float = 1e4,
    max_value: float = 10.0,
    std_floor: float | None = None,
    min_detection: float = 0.0,
    zscore: bool = True,
    flavor: Flavor | None = None,
    include_genes: Sequence[str] = (),
    expect: Literal["auto", "counts", "lognorm", "scaled"] = "auto",
    layer: str | None = None,
    subset: bool = False,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Record how expression becomes the classifier's input, for these cells and new ones.

    The input kind is detected (and logged):

    raw counts (non-negative whole numbers)
        Each cell is normalised to ``target_sum`` and ``log1p``-transformed, ``n_top_genes``
        highly variable genes are selected, and each gene's mean and standard deviation are
        recorded, so that the model input (z-scores clipped to ``±max_value``) can be computed
        from the counts of any cell.
    log-normalised values (non-negative, fractional)
        Nothing is normalised again: gene selection and z-score statistics only.
    already-scaled values (negative values present, e.g. :func:`scanpy.datasets.pbmc68k_reduced`)
        ``X`` is used unchanged as the model input with all its genes. Statistics to scale new
        data come from a log-normalised ``.raw`` when there is one.

    By default nothing of the user's data changes: ``X``, the layers, ``.raw`` and ``var`` stay
    as they are, and every scadv tool computes the model input batch by batch from them with
    the stored recipe. The statistics are gathered in one or two passes over the cells, a batch
    at a time, so the matrix may be larger than memory (an AnnData read with
    ``read_h5ad(..., backed='r')``, or dask-backed). ``subset=True`` gives scanpy's classic
    in-place behaviour instead.

    Running ``prepare`` again on data it prepared gives the same recipe.

    Parameters
    ----------
    adata
        Cells × genes.
    n_top_genes
        Number of highly variable genes that become the model's input.
    target_sum
        Library size each cell is normalised to (counts input).
    max_value
        Z-scores are clipped to ``[-max_value, max_value]``; 0 disables clipping. A smaller
        clip (e.g. 3) bounds how far any gene can move, which makes count-space attacks
        need more UMIs (see *How many molecules does it take?* in the documentation).
    std_floor
        Robust preprocessing against count-space attacks (counts input): a floor on each
        gene's standard deviation, so that one UMI switching on an undetected gene in a cell
        of the median library size moves its z-score by at most ``std_floor`` SD
        (floor ``= log1p(target_sum / median library size) / std_floor``). Without it, rarely
        detected genes have tiny standard deviations and one UMI moves them by ~9 SD on
        PBMC3k. ``None`` (default): no floor.
    min_detection
        Leave out genes detected (count > 0) in fewer than this fraction of the cells
        (``include_genes`` are kept regardless); 0 (default): only genes detected in fewer than
        3 cells are left out.
    zscore
        ``False``: the model input is the clipped ``log1p`` of the normalised values, without
        centring and scaling (the recipe's ``mean`` and ``std`` are then 0 and 1; the
        per-gene statistics are kept in ``lognorm_mean`` / ``lognorm_std``).
    flavor
        Gene selection method of :func:`scanpy.pp.highly_variable_genes` (computed here from
        streamed statistics, with the same result). ``None`` (default) picks ``'seurat_v3'``
        (Seurat's *vst*, on counts) when counts are available and ``'seurat'``
        (dispersion-based, on log data) otherwise; if ``seurat_v3``'s loess fit is impossible
        on unusual counts, the automatic choice falls back to ``'seurat'`` (logged). Genes
        detected in fewer than 3 cells are never selected.
    include_genes
        Genes always kept as model input in addition to the highly variable ones (e.g. known
        markers). Unknown names are an error.
    expect
        What the input is: ``'auto'`` (default) detects it; naming it (e.g. ``'counts'``)
        turns a mismatch into an error instead of a different processing path.
    layer
        Read the input from ``adata.layers[layer]`` instead of ``adata.X`` (the model input of
        this AnnData is then computed from that layer).
    subset
        scanpy's classic in-place behaviour: subset the AnnData to the model genes, write the
        dense z-scores into ``X``, keep the counts of the model genes in ``layers['counts']``
        and the log-normalised values of all genes in ``.raw``. Needs the data in memory.
    progress
        Show progress bars over the passes through the cells.
    copy
        Return a prepared copy instead of modifying ``adata``.

    Returns
    -------
    The prepared copy if ``copy=True``, else ``None``. Writes:

    ``adata.uns['scadv']['prepare']``
        The recipe (genes, means, standard deviations, target sum, clip, zero levels, observed
        ranges, gene selection, the matrix it was computed from, the robust options
        ``std_floor`` / ``min_detection`` / ``zscore``, each model gene's detection rate and,
        for counts, the observed library-size range ``library_min`` / ``library_max``) and its
        provenance; see :func:`scadv.pp.transform`.
    ``adata.obs['scadv_library_size']``
        Total counts per cell over all genes (counts input).

    With ``subset=True`` (counts / log-normalised input) also: ``adata.X`` (dense float32
    z-scores; the AnnData is subset to the model genes), ``adata.layers['counts']`` (raw counts
    of the model genes, counts input or a ``'counts'`` layer already present), ``adata.raw``
    (log-normalised values of all genes, only when no ``.raw`` existed).
    """
    V.options(locals())
    V.positive_int("n_top_genes", n_top_genes)
    V.positive("target_sum", target_sum)
    V.nonneg("max_value", max_value)
    V.choice("flavor", flavor, (None, "seurat_v3", "seurat", "cell_ranger"))
    V.names("include_genes", include_genes, allow_empty=True, single=False)
    V.choice("expect", expect, ("auto", "counts", "lognorm", "scaled"))
    start = logg.info("preparing data for scadv")
    params = P.call_params(locals(), prepare)
    _check_options(n_top_genes=n_top_genes, target_sum=target_sum, max_value=max_value,
                   expect=expect, std_floor=std_floor, min_detection=min_detection)
    adata = V.start(adata, copy=copy)
    ns = adata.uns.get(K.UNS)
    if ns is not None and not isinstance(ns, Mapping):
        scadv_uns(adata)  # raises the error that names the fix, before anything is written

    existing = R.stored(adata)
    if existing is not None and R.x_is_model_input(adata, existing):
        if layer is not None:
            raise ScadvInputError(
                "adata was already prepared by scadv in place (its X holds the model input and "
                f"its layers only the {len(np.asarray(existing['genes']))} model genes), so "
                f"layer={layer!r} cannot be prepared again: library sizes would be computed "
                "from the model genes alone. Prepare the original AnnData instead (as read "
                "from disk).")
        logg.info("    adata was already prepared by scadv (uns['scadv']['prepare']); "
                  "nothing to do")
        return adata if copy else None

    x = V.matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if expect == "counts":
        V.check_counts(R.probe(x), what=where)
    kind = R._sample_kind(x, label=where)
    if expect not in ("auto", kind):
        raise ScadvInputError(
            f"expect={expect!r}, but {where} looks like {_KIND_TEXT[kind].split(':')[0]}. "
            "Pass the matching matrix (layer=...), or expect='auto'."
        )
    logg.info(f"    {where} looks like {_KIND_TEXT[kind]}")
    missing = [g for g in include_genes if g not in adata.var_names]
    if missing:
        raise ScadvInputError(
            f"include_genes names {len(missing)} genes that are not in adata.var_names "
            f"(e.g. {missing[:8]}). Check the spelling and the gene naming (symbols vs IDs)."
        )
    if subset and not RW.in_memory(x):
        raise ScadvInputError(
            "subset=True writes the dense model input into X, which needs the data in memory; "
            "this AnnData is backed on disk or lazy. Use the default subset=False (every scadv "
            "tool reads the model input batch by batch), or load it first: adata.to_memory().")

    if kind != "counts" and std_floor is not None:
        raise ScadvInputError(
            f"std_floor bounds the z-score change of one UMI, so it needs raw counts, but "
            f"{where} looks like {_KIND_TEXT[kind].split(':')[0]}. Pass the raw counts "
            "(layer=...), or leave std_floor=None.")
    if kind == "scaled" and (min_detection > 0 or not zscore):
        raise ScadvInputError(
            "min_detection and zscore=False need counts or log-normalised data; this input is "
            "already scaled and is used unchanged. Pass the counts (layer=...).")
    if kind == "scaled":
        scaled = _recipe_for_scaled(adata, x, max_value=max_value)
        scaled.update(flavor="none", n_top_genes=adata.n_vars, include_genes=list(include_genes),
                      layer=str(layer), x_is_model_input=layer is None)
        write_results(adata, step="prepare", start=start,
                      uns={K.PREPARE: {**scaled, "provenance": P.record(params)}})
        return adata if copy else None

    counts_x = x if kind == "counts" else _counts_layer(adata)
    check = _block_check(adata, kind=kind, where=where, strict=expect == "counts")
    stats = S.first_pass(x, kind=kind, target_sum=target_sum, check=check, progress=progress)
    if stats.library_size is not None and (stats.library_size <= 0).any():
        empty = int((stats.library_size <= 0).sum())
        raise ScadvInputError(
            f"{empty} cells have zero total counts, so they cannot be normalised. "
            "Remove them first: sc.pp.filter_cells(adata, min_counts=1).")
    counts_stats = stats
    if kind == "lognorm" and counts_x is not None:
        # a user-kept counts layer drives seurat_v3, as scanpy would use it
        counts_stats = S.first_pass(counts_x, kind="counts", target_sum=target_sum,
                                    check=_block_check(adata, kind="counts",
                                                       where=f"adata.layers[{K.COUNTS_LAYER!r}]",
                                                       strict=True),
                                    progress=progress)

    auto = flavor is None
    flavor = _choose_flavor(flavor, counts_x)
    selected, flavor = _select_genes(adata.var_names, stats, counts_stats, counts_x,
                                     n_top_genes=n_top_genes, flavor=flavor, auto=auto,
                                     include_genes=include_genes, progress=progress,
                                     min_detection=min_detection)
    genes = adata.var_names[selected]
    mean, var = stats.lognorm.mean_var(stats.n_obs)
    std = np.sqrt(np.maximum(var[selected], 0.0))
    std[std == 0] = 1.0
    lognorm_mean, lognorm_std = mean[selected].astype(np.float32), std.astype(np.float32)
    robust: dict[str, Any] = {"std_floor": 0.0 if std_floor is None else float(std_floor),
                              "min_detection": float(min_detection), "zscore": bool(zscore),
                              "lognorm_mean": lognorm_mean, "lognorm_std": lognorm_std,
                              "detection": (stats.detected[selected] / stats.n_obs
                                            ).astype(np.float32)}
    if stats.library_size is not None:
        lib = stats.library_size
        robust.update(library_min=float(lib.min()), library_max=float(lib.max()),
                      library_median=float(np.median(lib)))
    if std_floor is not None and stats.library_size is not None:
        floor = np.float32(np.log1p(target_sum / float(np.median(stats.library_size)))
                           / float(std_floor))
        robust["std_floor_value"] = float(floor)
        std = np.maximum(std, floor)
        logg.info(f"    std floor {float(floor):.3g} (one UMI at the median library moves a "
                  f"gene by at most {float(std_floor):g} SD): raised the SD of "
                  f"{int((lognorm_std < floor).sum())} of {len(genes)} genes")
    center = mean[selected].astype(np.float32)
    if not zscore:
        center, std = np.zeros_like(center), np.ones_like(std)
    recipe: dict[str, Any] = {
        "input_kind": kind,
        "genes": np.asarray(genes, dtype=str),
        "mean": center,
        "std": std.astype(np.float32),
        **robust,
        "has_stats": True,
        "max_value": float(max_value),
        "target_sum": float(target_sum),
        "log1p": True,
        "flavor": flavor,
        "n_top_genes": int(n_top_genes),
        "include_genes": list(include_genes),
        "layer": str(layer),
        "x_is_model_input": bool(subset),
    }
    # the observed range in model space: the transform is increasing in each gene, so the
    # extremes of the z-scores are the transformed extremes of the log-normalised values
    ends = np.stack([stats.lognorm_min[selected], stats.lognorm_max[selected]]).astype(np.float32)
    z_ends = R.lognorm_to_model(ends, recipe)
    recipe.update(zero_level=R.zero_level(recipe), x_min=z_ends[0], x_max=z_ends[1])
    obs = {K.LIBRARY_SIZE: stats.library_size} if stats.library_size is not None else None
    uns = {K.PREPARE: {**recipe, "provenance": P.record(params)}}
    step = f"prepare ({len(genes)} genes, {flavor} selection)"
    if not subset:
        logg.info("    adata.X, layers, .raw and var are unchanged; the model input is computed "
                  "from them when needed")
        write_results(adata, step=step, start=start, uns=uns, obs=obs)
        return adata if copy else None
    _subset_in_place(adata, x, kind=kind, counts=counts_x, selected=selected, recipe=recipe,
                     library_size=stats.library_size, target_sum=target_sum)
    write_results(adata, step=step, start=start, uns=uns, obs=obs)
    return adata if copy else None


def _subset_in_place(adata: AnnData, x: Any, *, kind: str, counts: Any, selected: np.ndarray,
                     recipe: Mapping[str, Any], library_size: np.ndarray | None,
                     target_sum: float) -> None:
    """scanpy's classic layout: ``.raw`` with all log-normalised genes, counts of the model
    genes in a layer, the AnnData subset to the model genes and ``X`` the dense z-scores."""
    if kind == "counts":
        lognorm = R.lognormalize(x, target_sum=target_sum, library_size=library_size)
    else:
        lognorm = sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else x
    if adata.raw is None:
        adata.raw = AnnData(X=lognorm, obs=pd.DataFrame(index=adata.obs_names), var=adata.var)
        logg.info("    log-normalised values of all genes are kept in adata.raw")
    else:
        logg.info("    adata.raw already existed and was left unchanged")
    z = R.lognorm_to_model(lognorm[:, selected], recipe)
    kept = None if counts is None else sparse.csr_matrix(counts[:, selected], dtype=np.float32)
    adata._inplace_subset_var(selected)
    adata.X = z
    if kept is not None:
        adata.layers[K.COUNTS_LAYER] = kept


_KIND_TEXT = {
    "counts": "raw counts: normalise, log1p, select genes, z-score, clip",
    "lognorm": "log-normalised data: no normalisation; select genes, z-score, clip",
    "scaled": "already-scaled data (negative values): used unchanged as the model input",
}


def _check_options(*, n_top_genes: int, target_sum: float, max_value: float, expect: str,
                   std_floor: float | None = None, min_detection: float = 0.0) -> None:
    if expect not in ("auto", "counts", "lognorm", "scaled"):
        raise ScadvInputError(
            f"expect must be 'auto', 'counts', 'lognorm' or 'scaled', got {expect!r}.")
    if int(n_top_genes) < 1:
        raise ScadvInputError(f"n_top_genes must be a positive number, got {n_top_genes}.")
    if not target_sum > 0:
        raise ScadvInputError(f"target_sum must be positive, got {target_sum}.")
    if max_value < 0:
        raise ScadvInputError(f"max_value must be ≥ 0 (0 disables clipping), got {max_value}.")
    if std_floor is not None and not (np.isfinite(std_floor) and std_floor > 0):
        raise ScadvInputError(
            f"std_floor must be a positive number of SD per UMI (or None), got {std_floor!r}.")
    if not 0.0 <= float(min_detection) < 1.0:
        raise ScadvInputError(
            f"min_detection is a fraction of cells in [0, 1), got {min_detection!r}.")


def _counts_layer(adata: AnnData) -> sparse.spmatrix | np.ndarray | None:
    """A 'counts' layer holding whole non-negative numbers, if the user kept one."""
    counts = adata.layers.get(K.COUNTS_LAYER)
    if counts is None:
        return None
    V.check_counts(counts, what=f"adata.layers[{K.COUNTS_LAYER!r}]")
    return counts


def _choose_flavor(flavor: Flavor | None, counts: Any) -> Flavor:
    if flavor is None:
        return "seurat_v3" if counts is not None else "seurat"
    if flavor == "seurat_v3" and counts is None:
        raise ScadvInputError(
            "flavor='seurat_v3' needs raw counts (in X or layers['counts']); the input is "
            "log-normalised. Use flavor='seurat' or pass the counts."
        )
    if flavor not in ("seurat_v3", "seurat", "cell_ranger"):
        raise ScadvInputError(
            f"unknown flavor {flavor!r}; use 'seurat_v3', 'seurat' or 'cell_ranger'.")
    return flavor


#: Genes detected in fewer cells are never selected (as ``sc.pp.filter_genes(min_cells=3)``).
MIN_CELLS_PER_GENE = 3


def _block_check(adata: AnnData, *, kind: str, where: str, strict: bool
                 ) -> Callable[[Any, np.ndarray], None]:
    """Validation of each streamed block: finite values; counts stay whole and non-negative."""

    def check(block: Any, cells: np.ndarray) -> None:
        vals = RW.stored_values(block)
        if vals.dtype.kind in "fc" and not np.isfinite(vals).all():
            sub = AnnData(X=block, obs=pd.DataFrame(index=adata.obs_names[cells]),
                          var=pd.DataFrame(index=adata.var_names))
            V.check_finite(block, what=where, adata=sub)
        if kind == "counts":
            if vals.size and vals.min() < 0:
                raise ScadvInputError(
                    f"{where} looked like raw counts but has negative values (min "
                    f"{vals.min():.3g}) among cells {cells[0]}–{cells[-1]}. Pass the raw count "
                    "matrix (e.g. layer='counts') or the raw AnnData.")
            if not V.is_integer_valued(block):
                raise ScadvInputError(
                    f"{where} looked like raw counts (whole numbers) in a sample of cells, but "
                    f"cells {cells[0]}–{cells[-1]} hold non-integer values. Pass raw counts, or "
                    "log-normalised data (expect='lognorm'), not a mixture.")
        elif strict:
            V.check_counts(block, what=where)
        elif vals.size and vals.min() < 0:
            raise ScadvInputError(
                f"{where} looked log-normalised but has negative values among cells "
                f"{cells[0]}–{cells[-1]}. Pass raw counts or log1p-normalised data.")

    return check


def _select_genes(var_names: pd.Index, stats: S.Pass1, counts_stats: S.Pass1, counts_x: Any, *,
                  n_top_genes: int, flavor: Flavor, auto: bool, include_genes: Sequence[str],
                  progress: bool, min_detection: float = 0.0) -> tuple[np.ndarray, Flavor]:
    """Boolean mask of the model genes (highly variable genes plus ``include_genes``) and the
    flavour actually used."""
    n_vars = len(var_names)
    min_cells = max(MIN_CELLS_PER_GENE, int(np.ceil(float(min_detection) * stats.n_obs)))
    detected = stats.detected >= min_cells
    if not detected.any() and not include_genes:
        raise ScadvInputError(
            f"no gene is detected in at least {min_cells} of the {stats.n_obs} cells, "
            "so there is nothing to select model genes from. scadv needs more cells (a "
            "classifier needs at least three per class) with real expression data"
            + (", or a smaller min_detection." if min_detection > 0 else "."))
    if n_top_genes >= detected.sum():
        logg.info(f"    n_top_genes={n_top_genes} ≥ {int(detected.sum())} detected genes: "
                  "all detected genes are used")
        mask = detected.copy()
    else:
        cand = np.flatnonzero(detected)
        try:
            if flavor == "seurat_v3":
                hvg = S.seurat_v3(counts_stats, counts_x, cand, n_top_genes, progress=progress)
            else:
                hvg = S.dispersion(stats, cand, n_top_genes, flavor)
        except ValueError as err:  # seurat_v3's loess cannot fit unusual count data
            if isinstance(err, ScadvInputError) or not (auto and flavor == "seurat_v3"):
                if isinstance(err, ScadvInputError):
                    raise
                raise ScadvInputError(
                    f"flavor='seurat_v3' failed on these counts ({err}). Use flavor='seurat', "
                    "or check the data (a constant or near-constant matrix has no variable "
                    "genes).") from err
            logg.warning(f"seurat_v3 gene selection failed ({err}); using flavor='seurat'")
            flavor = "seurat"
            hvg = S.dispersion(stats, cand, n_top_genes, flavor)
        mask = np.zeros(n_vars, dtype=bool)
        mask[cand[hvg]] = True
    if include_genes:
        mask |= var_names.isin(list(include_genes))
    return mask, flavor


def _recipe_for_scaled(adata: AnnData, x: Any, *, max_value: float) -> dict[str, Any]:
    """Recipe for input that is already z-scored: statistics from a log-normalised ``.raw``."""
    genes = np.asarray(adata.var_names, dtype=str)
    z = x.toarray() if sparse.issparse(x) else np.asarray(x)
    recipe: dict[str, Any] = {"input_kind": "scaled", "genes": genes, "target_sum": 1e4,
                              "log1p": True, "max_value": float(max_value),
                              "x_min": z.min(axis=0).astype(np.float32),
                              "x_max": z.max(axis=0).astype(np.float32)}
    raw_ok = False
    if adata.raw is not None and set(genes) <= set(adata.raw.var_names):
        raw_x = adata.raw[:, list(genes)].X
        try:
            raw_ok = V.detect_kind(raw_x, what="adata.raw") == "lognorm"
        except ScadvInputError:
            raw_ok = False
    if raw_ok:
        mean, std = R.zscore_stats(raw_x)
        recipe.update(mean=mean, std=std, has_stats=True)
        recipe["zero_level"] = R.zero_level(recipe)
        rebuilt = R.lognorm_to_model(raw_x, recipe)
        gap = float(np.abs(rebuilt - z).max())
        logg.info("    statistics to scale new data are taken from adata.raw (log-normalised)")
        if gap > 1e-3:
            logg.warning(
                f"adata.X differs from the z-scored adata.raw by up to {gap:.3g} (e.g. made with "
                "sc.pp.regress_out or other statistics): new cells scaled with the stored recipe "
                "will only approximate this X."
            )
    else:
        recipe.update(mean=np.zeros(len(genes), np.float32), std=np.ones(len(genes), np.float32),
                      has_stats=False, zero_level=recipe["x_min"].copy())
        logg.warning(
            "adata.X is already scaled and there is no log-normalised adata.raw to learn how it "
            "was scaled: the model can only be applied to new data scaled the same way."
        )
    return recipe
