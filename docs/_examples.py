"""Data for the example figure on every ``scadv.pl`` API page (built offline, once per
Sphinx run, in about a minute on two CPU cores).

Everything starts from scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, FACS cell types in
``obs['bulk_labels']``), prepared from its log-normalised ``.raw``; training runs are kept
short (fewer epochs) so the docs build fast. :data:`SNIPPETS` holds the code shown and run on
each page.
"""

from __future__ import annotations

import functools
import warnings

import matplotlib
import numpy as np
import scanpy as sc

import scadv
from scadv import _demo

matplotlib.use("Agg")
sc.settings.verbosity = 0
warnings.filterwarnings("ignore")
LABELS = _demo.LABEL_KEY
MONO, DC = "CD14+ Monocyte", "Dendritic"


@functools.cache
def _base():
    adata = _demo.load()
    scadv.pp.prepare(adata)
    scadv.tl.train_classifier(adata, LABELS, max_epochs=30, progress=False)
    scadv.tl.pgd(adata, eps=(0.05, 0.1, 0.15), progress=False)
    scadv.tl.pgd(adata, eps=(0.5, 1.0), keep_zeros=True, clip="observed", key_added="realistic",
                 progress=False)
    return adata


@functools.cache
def _detector():
    adata = _base().copy()
    scadv.tl.meta_detect(adata, triplet_epochs=5, detector_epochs=10, progress=False)
    return adata


@functools.cache
def _genes():
    adata = _base().copy()
    targets = [MONO, DC]
    scadv.tl.single_gene(adata, cluster_key=LABELS, target=targets, progress=False)
    scadv.tl.overview(adata, cluster_key=LABELS, target=[MONO, DC, "CD19+ B"],
                      signature=False, progress=False)
    scadv.tl.cgd(adata, cluster_key=LABELS, target=MONO, to=DC, progress=False)
    return adata


@functools.cache
def _robust():
    adata = _base().copy()
    scadv.tl.adversarial_train(adata, LABELS, split_key="scadv_split", steps=3, max_epochs=10,
                               progress=False)
    scadv.tl.robust_accuracy(adata, models=["classifier", "robust"], eps=(0, 0.05, 0.1, 0.2),
                             progress=False)
    return adata


@functools.cache
def _attributions():
    adata = _base().copy()
    for method in ("integrated_gradients", "saliency", "grad_x_input"):
        scadv.tl.attribute(adata, method=method, progress=False)
    keys = ["attr_integrated_gradients", "attr_saliency", "attr_grad_x_input"]
    # pbmc68k_reduced has no raw counts: noise and attack only (no down-sampling)
    scadv.tl.attribution_stability(adata, key="attr_integrated_gradients", n_repeats=1,
                                   perturbations=("noise", "adversarial"), progress=False)
    scadv.tl.attribution_agreement(adata, keys=keys)
    sc.tl.rank_genes_groups(adata, LABELS, method="t-test")
    scadv.tl.marker_overlap(adata, keys=keys)
    # gene sets: each class's 30 top rank_genes_groups markers (an illustration)
    names = adata.uns["rank_genes_groups"]["names"]
    sets = {f"DE_{c}": [str(g) for g in names[c][:30]] for c in names.dtype.names}
    scadv.tl.gene_set_enrichment(adata, sets, key="attr_integrated_gradients", k=30,
                                 min_size=3)
    return adata


@functools.cache
def _simulated():
    sim = scadv.datasets.simulate(n_cells=600, n_genes=500, n_types=4, markers_per_type=25,
                                  genes_per_lineage=25, genes_per_activity_program=25, seed=0)
    scadv.pp.prepare(sim, n_top_genes=500)
    scadv.tl.train_classifier(sim, "cell_type", max_epochs=20, progress=False)
    keys = []
    for method in ("integrated_gradients", "saliency"):
        scadv.tl.attribute(sim, method=method, key_added=f"attr_{method}", progress=False)
        keys.append(f"attr_{method}")
    scadv.tl.score_attributions(sim, keys=keys, k=20)
    return sim


@functools.cache
def _models():
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    adata = _base().copy()
    genes = [str(g) for g in adata.uns["scadv"]["prepare"]["genes"]]
    x = pd.DataFrame(adata[:, genes].X.toarray(), columns=genes)  # log-normalised values
    y = adata.obs[LABELS].astype(str).to_numpy()
    logreg = scadv.models.from_sklearn(LogisticRegression(max_iter=300).fit(x, y))
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(x, y)
    scadv.tl.compare_models(adata, {"scadv MLP": "classifier", "logistic regression": logreg,
                                    "random forest": forest}, label_key=LABELS,
                            eps=(0.05, 0.1, 0.2, 0.5), genes=genes[:40], progress=False)
    return adata


@functools.cache
def _counts():
    # pbmc68k_reduced has no raw counts: the count attack runs on simulated UMI counts
    sim = scadv.datasets.simulate(n_cells=600, n_genes=500, n_types=4, markers_per_type=25,
                                  genes_per_lineage=25, genes_per_activity_program=25, seed=0)
    scadv.pp.prepare(sim, n_top_genes=300)
    scadv.tl.train_classifier(sim, "cell_type", max_epochs=20, progress=False)
    scadv.tl.count_attack(sim, budgets=(1, 2, 5, 10, 20, 50), progress=False)
    scadv.tl.adversarial_train(sim, "cell_type", space="counts", umis=10, max_epochs=10,
                               split_key="scadv_split", progress=False)
    scadv.tl.count_attack(sim, model="robust", budgets=(1, 2, 5, 10, 20, 50), progress=False)
    scadv.tl.fragility(sim, progress=False)
    return sim


def data(kind: str):
    """A fresh copy of the example AnnData ``kind``."""
    make = {"attack": _base, "detector": _detector, "genes": _genes, "robust": _robust,
            "attributions": _attributions, "simulated": _simulated, "models": _models,
            "counts": _counts}[kind]
    return make().copy()


def flipped_cell(adata, layer: str = "scadv_realistic_eps0.5") -> str:
    """A test cell whose prediction the attack in ``layer`` flipped."""
    flipped = adata.obs[f"{layer}_pred"].astype(str) != adata.obs["scadv_pred"].astype(str)
    ok = adata.obs[f"{layer}_pred"].notna() & flipped
    return str(adata.obs_names[np.flatnonzero(ok.to_numpy())[0]])


def _snippet(kind: str, call: str, comment: str) -> str:
    return (f"import scadv, _examples\n"
            f"adata = _examples.data({kind!r})  # {comment}\n{call}\n")


_ATTACK = "pbmc68k_reduced, classifier, pgd and a data-respecting pgd ('realistic')"
_DETECT = "… plus a meta-detector (short training)"

#: API page → the example shown and run on it.
SNIPPETS = {
    "scadv.pl.flip_rate": _snippet("attack", "scadv.pl.flip_rate(adata)", _ATTACK),
    "scadv.pl.meta_scores": _snippet("detector", "scadv.pl.meta_scores(adata)", _DETECT),
    "scadv.pl.roc": _snippet("detector", "scadv.pl.roc(adata)", _DETECT),
    "scadv.pl.meta_confusion": _snippet(
        "detector", 'scadv.pl.meta_confusion(adata, layer="scadv_realistic_eps0.5")', _DETECT),
    "scadv.pl.meta_cell": _snippet(
        "detector", 'cell = _examples.flipped_cell(adata)  # a test cell the attack flipped\n'
        'scadv.pl.meta_cell(adata, cell, layer="scadv_realistic_eps0.5")', _DETECT),
    "scadv.pl.meta_embedding": _snippet("detector", "scadv.pl.meta_embedding(adata)", _DETECT),
    "scadv.pl.single_gene": _snippet(
        "genes", f'scadv.pl.single_gene(adata, target="{MONO}", top=15)',
        f"tl.single_gene on {MONO} and {DC}, tl.overview, tl.cgd"),
    "scadv.pl.overview": _snippet("genes", "scadv.pl.overview(adata)",
                                  "tl.overview of three cell types"),
    "scadv.pl.cgd": _snippet("genes", "scadv.pl.cgd(adata)", f"tl.cgd: {MONO} → {DC}"),
    "scadv.pl.robustness_curve": _snippet(
        "robust", "scadv.pl.robustness_curve(adata)",
        "tl.adversarial_train ('robust') and tl.robust_accuracy (short training)"),
    "scadv.pl.top_genes": _snippet(
        "attributions", "scadv.pl.top_genes(adata, n_genes=4)", "tl.attribute (3 methods)"),
    "scadv.pl.attribution_stability": _snippet(
        "attributions",
        'scadv.pl.attribution_stability(adata, key="attr_integrated_gradients_stability")',
        "tl.attribution_stability of integrated gradients"),
    "scadv.pl.attribution_agreement": _snippet(
        "attributions", "scadv.pl.attribution_agreement(adata)", "three attribution methods"),
    "scadv.pl.marker_overlap": _snippet(
        "attributions", "scadv.pl.marker_overlap(adata)", "after sc.tl.rank_genes_groups"),
    "scadv.pl.enrichment": _snippet(
        "attributions",
        'scadv.pl.enrichment(adata, key="attr_integrated_gradients_enrichment")',
        "gene sets: each class's top markers"),
    "scadv.pl.compare_models": _snippet(
        "models", "scadv.pl.compare_models(adata)",
        "tl.compare_models: scadv's MLP, a logistic regression, a random forest"),
    "scadv.pl.count_attack": _snippet(
        "counts", 'scadv.pl.count_attack(adata, key=["count_attack", "count_attack_robust"])',
        "simulated counts; tl.count_attack on a plain and a count-trained model"),
    "scadv.pl.count_genes": _snippet("counts", "scadv.pl.count_genes(adata)",
                                     "simulated counts; tl.count_attack"),
    "scadv.pl.fragility": _snippet(
        "counts", "import matplotlib.pyplot as plt, scanpy as sc\n"
        "sc.pp.pca(adata); sc.pp.neighbors(adata); sc.tl.umap(adata)\n"
        "fig, axs = plt.subplots(1, 2, figsize=(11, 4), layout='constrained')\n"
        "sc.pl.umap(adata, color='scadv_min_umis_bin', ax=axs[0], show=False)\n"
        "scadv.pl.fragility(adata, ax=axs[1])",
        "simulated counts; tl.count_attack, tl.fragility"),
    "scadv.pl.attribution_truth": _snippet(
        "simulated", "scadv.pl.attribution_truth(adata)",
        "scadv.datasets.simulate: known markers, tl.score_attributions"),
}
