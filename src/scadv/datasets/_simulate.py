"""``scadv.datasets.simulate``: single-cell counts from a hierarchical topic model, with the
genes that truly define each cell type known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys as K
from .. import _provenance as P
from .. import _validate as V
from .._errors import ScadvInputError
from .._results import h5ad_safe


def simulate(
    *,
    n_cells: int = 3000,
    n_genes: int = 2000,
    n_types: int = 6,
    n_lineages: int = 2,
    markers_per_type: int = 30,
    genes_per_lineage: int = 40,
    n_activity_programs: int = 3,
    genes_per_activity_program: int = 40,
    type_weight: float = 0.03,
    lineage_weight: float = 0.08,
    activity_weight: float = 0.06,
    concentration: float = 30.0,
    library_size: float = 2000.0,
    library_sd: float = 0.5,
    dispersion: float = 0.4,
    type_proportions: np.ndarray | None = None,
    label_key: str = "cell_type",
    seed: int = 0,
) -> AnnData:
    r"""Simulate raw UMI counts from a hierarchical topic model with known marker genes.

    Gene *programs* (topics) are distributions over genes; each cell mixes programs, and its
    counts are drawn from the mixture (as in LDA, the model the study of the limits of
    integrated gradients used to obtain ground truth):

    1. Programs, on disjoint gene sets except the background: a *background* program over all
       genes (log-normal weights: a realistic spread of gene means), one *lineage* program per
       lineage (shared by the types of that lineage), one *type* program per cell type (its
       ``markers_per_type`` genes are that type's true markers), and ``n_activity_programs``
       *activity* programs (e.g. cell cycle, stress) used by cells of every type to a varying
       degree — genes that vary a lot but define no type. Within a program, gene weights are
       log-normal, so some markers are strong and some weak.
    2. Cell types: type :math:`t` (lineage :math:`t \bmod` ``n_lineages``) has expected program
       weights: ``type_weight`` on its own program, ``lineage_weight`` on its lineage's,
       ``activity_weight`` split over the activity programs, the rest on the background.
    3. Cells: program mixture :math:`\theta_c \sim \mathrm{Dirichlet}(\text{concentration}
       \cdot \alpha_{t(c)})` (small weights, such as each activity program's, vary most
       from cell to cell), library
       size :math:`L_c \sim \mathrm{LogNormal}(\log \text{library\_size}, \text{library\_sd})`,
       mean :math:`\mu_{cg} = L_c \sum_k \theta_{ck}\,\phi_{kg}`, counts negative binomial
       with mean :math:`\mu` and variance :math:`\mu + \text{dispersion}\cdot\mu^2`
       (a gamma–Poisson mixture).

    Deterministic under ``seed`` (a numpy ``Generator``). The result holds raw counts, so
    :func:`scadv.pp.prepare` works on it directly.

    Parameters
    ----------
    n_cells, n_genes, n_types, n_lineages
        Size of the data set and its hierarchy (types are dealt to lineages in turn).
    markers_per_type, genes_per_lineage, n_activity_programs, genes_per_activity_program
        Sizes of the programs.
    type_weight, lineage_weight, activity_weight
        Expected share of a cell's counts from its type, lineage and activity programs.
    concentration
        Dirichlet concentration of the mixtures: higher, less cell-to-cell variation.
    library_size, library_sd
        Median library size and the SD of its logarithm.
    dispersion
        Negative-binomial over-dispersion (0: Poisson).
    type_proportions
        Probability of each type (default uniform).
    label_key
        ``obs`` column for the cell types.
    seed
        Seed of the generator.

    Returns
    -------
    Cells × genes AnnData with float32 counts (whole numbers, sparse) in ``X``:

    ``obs[label_key]``, ``obs['lineage']``
        Cell type (``'type0'``, …) and lineage (``'lineage0'``, …).
    ``var['scadv_sim_program']``
        The program a gene belongs to (``'background'``, ``'type0'``, ``'lineage1'``,
        ``'activity0'``, …).
    ``var['scadv_sim_marker_of']``
        The cell type a gene is a true marker of (NaN for others).
    ``obsm['scadv_sim_theta']``
        Each cell's program mixture (columns as ``uns['scadv']['simulation']['programs']``).
    ``uns['scadv']['simulation']``
        The ground truth: ``classes``, ``genes``, ``markers`` (types × genes, bool: the type
        program's genes), ``lineage_genes`` (types × genes, bool: the lineage program's genes),
        ``programs``, ``phi`` (programs × genes), ``alpha`` (types × programs), ``lineage_of``
        and the parameters.
    """
    V.options(locals())
    V.name("label_key", label_key)
    params = P.call_params(locals(), simulate)
    _check(n_cells=n_cells, n_genes=n_genes, n_types=n_types, n_lineages=n_lineages,
           markers_per_type=markers_per_type, genes_per_lineage=genes_per_lineage,
           n_activity_programs=n_activity_programs,
           genes_per_activity_program=genes_per_activity_program, type_weight=type_weight,
           lineage_weight=lineage_weight, activity_weight=activity_weight,
           concentration=concentration, library_size=library_size, library_sd=library_sd,
           dispersion=dispersion)
    rng = np.random.default_rng(seed)
    types = [f"type{t}" for t in range(n_types)]
    lineages = [f"lineage{i}" for i in range(n_lineages)]
    lineage_of = np.arange(n_types) % n_lineages

    # 1. programs on disjoint gene blocks (a random permutation of the genes)
    perm = rng.permutation(n_genes)
    programs = (["background"] + [f"type{t}" for t in range(n_types)] + lineages
                + [f"activity{a}" for a in range(n_activity_programs)])
    sizes = ([markers_per_type] * n_types + [genes_per_lineage] * n_lineages
             + [genes_per_activity_program] * n_activity_programs)
    phi = np.zeros((len(programs), n_genes))
    phi[0] = rng.lognormal(0.0, 1.2, size=n_genes)
    program_of = np.full(n_genes, "background", dtype=object)
    lo = 0
    for k, size in enumerate(sizes, start=1):
        genes_k = perm[lo:lo + size]
        phi[k, genes_k] = rng.lognormal(0.0, 0.6, size=size)
        program_of[genes_k] = programs[k]
        lo += size
    phi /= phi.sum(axis=1, keepdims=True)

    # 2. expected program weights of each type
    n_act = n_activity_programs
    alpha = np.zeros((n_types, len(programs)))
    for t in range(n_types):
        alpha[t, 1 + t] = type_weight
        alpha[t, 1 + n_types + lineage_of[t]] = lineage_weight
        if n_act:
            alpha[t, 1 + n_types + n_lineages:] = activity_weight / n_act
        alpha[t, 0] = 1.0 - alpha[t].sum()

    # 3. cells
    probs = _proportions(type_proportions, n_types)
    cell_type = rng.choice(n_types, size=n_cells, p=probs)
    theta = np.zeros((n_cells, len(programs)))
    for t in range(n_types):
        rows = np.flatnonzero(cell_type == t)
        used = np.flatnonzero(alpha[t] > 0)
        theta[np.ix_(rows, used)] = rng.dirichlet(concentration * alpha[t, used], size=len(rows))
    lib = rng.lognormal(np.log(library_size), library_sd, size=n_cells)
    mu = lib[:, None] * (theta @ phi)
    if dispersion > 0:
        lam = rng.gamma(shape=1.0 / dispersion, scale=mu * dispersion)
    else:
        lam = mu
    counts = rng.poisson(lam).astype(np.float32)

    gene_names = np.asarray([f"gene{g:0{len(str(n_genes - 1))}d}" for g in range(n_genes)])
    markers = np.zeros((n_types, n_genes), dtype=bool)
    lineage_genes = np.zeros((n_types, n_genes), dtype=bool)
    for t in range(n_types):
        markers[t] = program_of == f"type{t}"
        lineage_genes[t] = program_of == lineages[lineage_of[t]]
    # genes of other programs are not among the categories, so they become NaN
    marker_of = pd.Categorical(program_of, categories=types)
    obs = pd.DataFrame({
        label_key: pd.Categorical.from_codes(cell_type, categories=types),
        "lineage": pd.Categorical.from_codes(lineage_of[cell_type], categories=lineages),
    }, index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame({
        K.sim_program(): pd.Categorical(program_of.astype(str), categories=programs),
        K.sim_marker_of(): marker_of,
    }, index=gene_names)
    adata = AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    adata.obsm[K.sim_theta()] = theta.astype(np.float32)
    truth: dict[str, Any] = {
        "classes": np.asarray(types),
        "genes": gene_names,
        "markers": markers,
        "lineage_genes": lineage_genes,
        "programs": np.asarray(programs),
        "phi": phi.astype(np.float32),
        "alpha": alpha,
        "lineage_of": np.asarray(lineages)[lineage_of],
        "label_key": label_key,
        "model": "hierarchical topic model (LDA-like), negative-binomial counts",
        "provenance": P.record(params, seed=seed),
    }
    adata.uns[K.UNS] = {K.SIMULATION: h5ad_safe(truth)}
    return adata


def _proportions(type_proportions: np.ndarray | None, n_types: int) -> np.ndarray:
    if type_proportions is None:
        return np.full(n_types, 1.0 / n_types)
    p = np.asarray(V.reals("type_proportions", type_proportions, low=0.0), dtype=float)
    if p.shape != (n_types,) or p.sum() <= 0:
        raise ScadvInputError(f"type_proportions needs {n_types} non-negative numbers with a "
                              f"positive sum, got {type_proportions!r}.")
    return p / p.sum()


#: Most values (cells × genes) a simulation may hold (4 bytes each).
MAX_VALUES = 2_000_000_000


def _check(**kw: Any) -> None:
    for name in ("n_cells", "n_genes", "n_types", "n_lineages", "markers_per_type",
                 "genes_per_lineage", "n_activity_programs", "genes_per_activity_program"):
        V.integer(name, kw[name], maximum=10_000_000)
    for name in ("type_weight", "lineage_weight", "activity_weight", "concentration",
                 "library_size", "library_sd", "dispersion"):
        V.real(name, kw[name])
    if kw["n_cells"] * kw["n_genes"] > MAX_VALUES:
        raise ScadvInputError(f"n_cells × n_genes = {kw['n_cells'] * kw['n_genes']:,} values; "
                              f"at most {MAX_VALUES:,} can be simulated at once.")
    problems = []
    for name in ("n_cells", "n_genes", "n_types", "n_lineages", "markers_per_type"):
        if int(kw[name]) < 1:
            problems.append(f"{name} must be ≥ 1")
    if int(kw["n_types"]) < 2:
        problems.append("n_types must be ≥ 2 (a classifier needs two classes)")
    if int(kw["n_lineages"]) > int(kw["n_types"]):
        problems.append("n_lineages cannot exceed n_types")
    for name in ("genes_per_lineage", "n_activity_programs", "genes_per_activity_program"):
        if int(kw[name]) < 0:
            problems.append(f"{name} must be ≥ 0")
    used = (kw["n_types"] * kw["markers_per_type"] + kw["n_lineages"] * kw["genes_per_lineage"]
            + kw["n_activity_programs"] * kw["genes_per_activity_program"])
    if used > kw["n_genes"]:
        problems.append(f"the programs need {used} genes but n_genes is {kw['n_genes']}")
    weights = kw["type_weight"] + kw["lineage_weight"] + kw["activity_weight"]
    if min(kw["type_weight"], kw["lineage_weight"], kw["activity_weight"]) < 0 or weights >= 1:
        problems.append("type_weight, lineage_weight and activity_weight must be ≥ 0 with a sum "
                        "below 1 (the rest is the background program)")
    if kw["type_weight"] <= 0:
        problems.append("type_weight must be positive (types need markers)")
    if not kw["concentration"] > 0 or not kw["library_size"] > 0:
        problems.append("concentration and library_size must be positive")
    if kw["library_sd"] < 0 or kw["dispersion"] < 0:
        problems.append("library_sd and dispersion must be ≥ 0")
    if problems:
        raise ScadvInputError("; ".join(problems) + ".")
