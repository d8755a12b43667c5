"""Every key scadv reads or writes in an AnnData, in one place.

Layout
------
``adata.uns['scadv']``
    The namespace of all scadv records: ``'prepare'`` (the preprocessing recipe),
    one entry per stored classifier (default ``'classifier'``), one entry per
    attack run (default ``'pgd'`` / ``'fgsm'``) and ``'provenance'``.
Per-cell results
    Columns and matrices are prefixed so they never collide with user keys:
    the default classifier writes ``obs['scadv_pred']``, ``obs['scadv_split']``,
    ``obsm['scadv_proba']`` and ``obsm['X_scadv_emb']``; a classifier stored under
    another key ``k`` writes ``scadv_k_pred`` and so on. An attack stored under key
    ``a`` writes the perturbation ``scadv_a_eps0.1`` (its change of the model input, compact,
    in ``obsm['scadv_a_eps0.1']``, see :mod:`scadv._store`) and ``obs['scadv_a_eps0.1_pred']``
    etc.
"""

from __future__ import annotations

UNS = "scadv"
PREFIX = "scadv"
PREPARE = "prepare"
PROVENANCE = "provenance"
#: ``uns['scadv']`` entry registering the compact perturbations stored in ``obsm`` (see
#: :mod:`scadv._store`).
PERTURBATIONS = "perturbations"
DEFAULT_MODEL = "classifier"
COUNTS_LAYER = "counts"
#: obs column written by :func:`scadv.pp.prepare` with each cell's library size (total
#: counts over all genes) before normalisation.
LIBRARY_SIZE = f"{PREFIX}_library_size"

SPLIT_TRAIN = "train"
SPLIT_VAL = "val"
SPLIT_TEST = "test"
SPLIT_UNLABELLED = "unlabelled"
SPLITS = (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST, SPLIT_UNLABELLED)


def cell_prefix(model_key: str) -> str:
    """Prefix of the per-cell outputs of the classifier stored under ``model_key``."""
    return PREFIX if model_key == DEFAULT_MODEL else f"{PREFIX}_{model_key}"


def pred(model_key: str) -> str:
    """``obs`` column holding the predicted class."""
    return f"{cell_prefix(model_key)}_pred"


def split(model_key: str) -> str:
    """``obs`` column holding the train / val / test / unlabelled split."""
    return f"{cell_prefix(model_key)}_split"


def proba(model_key: str) -> str:
    """``obsm`` key of the class probabilities (columns in the model's class order)."""
    return f"{cell_prefix(model_key)}_proba"


def embedding(model_key: str) -> str:
    """``obsm`` key of the last hidden layer (the cell embedding)."""
    return f"X_{cell_prefix(model_key)}_emb"


def default_attack_key(method: str, model_key: str) -> str:
    """Default ``key_added`` of an attack: ``'pgd'`` for the default model, else
    ``'pgd_<model>'``."""
    return method if model_key == DEFAULT_MODEL else f"{method}_{model_key}"


def format_eps(eps: float) -> str:
    """Readable, round-trippable text of a budget: ``0.1`` → ``'0.1'``, ``1.0`` → ``'1'``."""
    return f"{float(eps):g}"


def attack_layer(attack_key: str, eps: float) -> str:
    """Name of the perturbation of one budget, e.g. ``scadv_pgd_eps0.1`` (stored compactly in
    ``obsm[name]``; scadv 0.1 wrote a dense ``layers[name]``)."""
    return f"{PREFIX}_{attack_key}_eps{format_eps(eps)}"


def attack_pred(attack_key: str, eps: float) -> str:
    """``obs`` column with the class predicted for the adversarial cell (NaN: not attacked)."""
    return f"{attack_layer(attack_key, eps)}_pred"


def attack_flipped(attack_key: str, eps: float) -> str:
    """``obs`` column, categorical ``False``/``True``: did the predicted class change (NaN: not
    attacked)."""
    return f"{attack_layer(attack_key, eps)}_flipped"


def attack_flipped_to(attack_key: str, eps: float) -> str:
    """``obs`` column for colouring a UMAP: the new class, ``'unchanged'``, or NaN."""
    return f"{attack_layer(attack_key, eps)}_flipped_to"


UNCHANGED = "unchanged"


# ---- meta-detector (scadv.tl.meta_detect / meta_score) and benign perturbations -------------

#: Default ``key_added`` of :func:`scadv.tl.meta_detect`.
DEFAULT_DETECTOR = "meta"
#: Default ``key_added`` of :func:`scadv.tl.benign_perturb`.
DEFAULT_BENIGN = "benign"


def meta_score(detector_key: str, layer: str | None = None) -> str:
    """``obs`` column with the detector's score of the cells in ``X`` (``scadv_meta_score``)
    or of their version in ``layers[layer]`` (``scadv_pgd_eps0.1_meta_score``)."""
    return f"{PREFIX}_{detector_key}_score" if layer is None else f"{layer}_{detector_key}_score"


def meta_flag(detector_key: str, layer: str | None = None) -> str:
    """``obs`` column, categorical ``False``/``True``: flagged as manipulated (NaN: not scored)."""
    return f"{PREFIX}_{detector_key}_flag" if layer is None else f"{layer}_{detector_key}_flag"


def benign_layer(benign_key: str, kind: str) -> str:
    """Name of one benign perturbation, e.g. ``scadv_benign_downsample`` (stored like attack
    perturbations)."""
    return f"{PREFIX}_{benign_key}_{kind}"


def layer_pred(layer: str) -> str:
    """``obs`` column with the class predicted for a perturbed layer's cells (NaN: not
    perturbed); :func:`attack_pred` is this for attack layers."""
    return f"{layer}_pred"


# ---- gene-level attacks (scadv.tl.single_gene, max_change, cgd, grid, random_walk) ------------

def gene_attack_layer(attack_key: str) -> str:
    """Name of a gene-level attack's perturbation, e.g. ``scadv_max_change`` (the target
    cluster's cells modified)."""
    return f"{PREFIX}_{attack_key}"


def gene_attack_pred(attack_key: str) -> str:
    """``obs`` column with the target cluster's predictions after a gene-level attack (NaN for
    cells outside the cluster)."""
    return f"{PREFIX}_{attack_key}_pred"


# ---- adversarial training, attributions, simulation (issue 5) ------------------------------

#: Default ``key_added`` of :func:`scadv.tl.adversarial_train`.
ROBUST_MODEL = "robust"
#: Default ``key_added`` of :func:`scadv.tl.robust_accuracy`.
ROBUSTNESS = "robustness"
#: ``uns['scadv']`` entry written by :func:`scadv.datasets.simulate` (ground truth).
SIMULATION = "simulation"


def default_attribution_key(method: str, model_key: str) -> str:
    """Default ``key_added`` of an attribution run: ``'attr_<method>'`` for the default model,
    else ``'attr_<method>_<model>'``."""
    base = f"attr_{method}"
    return base if model_key == DEFAULT_MODEL else f"{base}_{model_key}"


def attribution_cells(attr_key: str) -> str:
    """``layers`` (or ``obsm``) key of per-cell attributions, e.g. ``scadv_attr_saliency``."""
    return f"{PREFIX}_{attr_key}"


def attribution_delta(attr_key: str) -> str:
    """``obs`` column with each cell's convergence delta (integrated gradients, DeepLIFT)."""
    return f"{PREFIX}_{attr_key}_delta"


def sim_marker_of() -> str:
    """``var`` column of simulated data: the cell type a gene is a true marker of (or NaN)."""
    return f"{PREFIX}_sim_marker_of"


def sim_program() -> str:
    """``var`` column of simulated data: the gene program a gene belongs to."""
    return f"{PREFIX}_sim_program"


def sim_theta() -> str:
    """``obsm`` key of simulated data: each cell's mixture over gene programs."""
    return f"{PREFIX}_sim_theta"


# ---- pseudo-labels (scadv.tl.pseudo_labels) ---------------------------------------------------

#: Default ``key_added`` of :func:`scadv.tl.pseudo_labels`: the ``obs`` column of the clusters
#: and, under the same name, their record in ``uns['scadv']``.
PSEUDO_LABEL = f"{PREFIX}_pseudo_label"


# ---- count-space attacks and per-cell fragility (scadv.tl.count_attack / fragility) ---------

#: Default ``key_added`` of :func:`scadv.tl.count_attack` (``'count_attack_<model>'`` for
#: other models, as :func:`default_attack_key` makes it).
COUNT_ATTACK = "count_attack"
#: Default ``key_added`` of :func:`scadv.tl.fragility`.
FRAGILITY = "fragility"


def count_layer(attack_key: str, umis: int) -> str:
    """Name of the count-space perturbation of one UMI budget, e.g.
    ``scadv_count_attack_umis10`` (integer count changes of the model genes, compact in
    ``obsm[name]``)."""
    return f"{PREFIX}_{attack_key}_umis{int(umis)}"


def count_pred(attack_key: str, umis: int) -> str:
    """``obs`` column with the class predicted for the attacked counts (NaN: not attacked)."""
    return f"{count_layer(attack_key, umis)}_pred"


def count_flipped(attack_key: str, umis: int) -> str:
    """``obs`` column, categorical ``False``/``True``: did the predicted class change."""
    return f"{count_layer(attack_key, umis)}_flipped"


def count_flipped_to(attack_key: str, umis: int) -> str:
    """``obs`` column for colouring a UMAP: the new class, ``'unchanged'``, or NaN."""
    return f"{count_layer(attack_key, umis)}_flipped_to"


def _named(key: str, default: str, what: str) -> str:
    return f"{PREFIX}_{what}" if key == default else f"{PREFIX}_{key}_{what}"


def min_umis(attack_key: str) -> str:
    """``obs`` column with the fewest UMIs found that flip each cell: ``scadv_min_umis`` for
    the default run, ``scadv_<key>_min_umis`` otherwise (NaN: not attacked; ``inf``: not
    flipped within the largest budget)."""
    return _named(attack_key, COUNT_ATTACK, "min_umis")


def min_umis_bin(attack_key: str) -> str:
    """Categorical companion of :func:`min_umis` for colouring a UMAP (``'1'``, ``'2'``,
    ``'3–5'``, ..., ``'> 50'``)."""
    return f"{min_umis(attack_key)}_bin"


def min_eps(fragility_key: str) -> str:
    """``obs`` column with the smallest L∞ ε found that flips each cell: ``scadv_min_eps`` for
    the default run, ``scadv_<key>_min_eps`` otherwise (NaN: not attacked; ``inf``: no flip up
    to the largest ε)."""
    return _named(fragility_key, FRAGILITY, "min_eps")
