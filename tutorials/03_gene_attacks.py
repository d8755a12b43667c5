# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which genes does a cell-type classifier depend on?
#
# adverSCarial's gene-level questions, per cluster and for any classifier: which single genes
# flip the cluster's label, which genes must never move (its signature), and can a gene-by-gene
# walk switch the whole cluster to another type? We ask them of three classifiers of PBMC3k:
# scadv's MLP, a random forest, and a marker scorer that learned nothing.
#
# It runs offline on the data shipped with the project (`shared/data/pbmc3k_raw.h5ad`; set
# `SCADV_DATA` to the folder that holds it) in about a minute on two CPU cores.

# %%
import os
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from sklearn.ensemble import RandomForestClassifier

import scadv
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier, marker_genes

sc.settings.verbosity = 1
DATA = Path(os.environ.get("SCADV_DATA", Path.cwd().parent / "shared" / "data"))
OUT = Path(os.environ.get("SCADV_TUTORIAL_OUT", "tutorial_out"))
OUT.mkdir(parents=True, exist_ok=True)
if not (DATA / "pbmc3k_raw.h5ad").exists():
    raise SystemExit(f"pbmc3k_raw.h5ad not found in {DATA}: set SCADV_DATA to its folder")

# %% [markdown]
# ## 1. Data and classifiers
# The classifiers read the prepared input: z-scores of 2,000 highly variable genes. Five
# canonical markers (CD14, CD8A, IL7R, CCR7, CD3E) are not among them, so we force every
# marker of `PBMC_MARKERS` into the model genes.

# %%
adata = scadv.datasets.pbmc3k(DATA / "pbmc3k_raw.h5ad")
scadv.pp.prepare(adata, include_genes=marker_genes(PBMC_MARKERS))
scadv.tl.train_classifier(adata, "cell_type", progress=False)  # the MLP, stored in adata
labelled = adata.obs["cell_type"].notna().to_numpy()
# the forest is trained on the same input as the MLP: the model input (z-scores of the model
# genes), which scadv computes from the counts and the gene-level attacks modify
x_model = scadv.get.model_input(adata)
genes = adata.uns["scadv"]["prepare"]["genes"]
forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=2).fit(
    x_model[labelled], adata.obs["cell_type"][labelled].astype(str))
markers = MarkerClassifier(PBMC_MARKERS)  # per type: mean positive − mean negative markers
print(adata)

# %% [markdown]
# ## 2. Single genes that flip a cluster
# Each gene is set, in the cluster's cells only, to its 1st or 99th percentile over all cells
# (switched off / fully on), and the cluster is classified again: its label is the majority of
# its cells' labels. For the marker scorer, switching off one B-cell marker is enough.

# %%
scadv.tl.single_gene(adata, cluster_key="cell_type", target=["B", "CD14+ Mono"],
                     classifier=markers, modification=["perc1", "perc99"],
                     key_added="markers_single", progress=False)
table = adata.uns["scadv"]["markers_single"]["table"]
print(table[table["flipped"]][["cluster", "modification", "gene", "new_label", "new_score"]])
scadv.pl.single_gene(adata, key="markers_single", target="B", top=15, show=False)
plt.savefig(OUT / "single_gene_markers.png", dpi=120, bbox_inches="tight")

# %% [markdown]
# The MLP is another story. Every model gene × two cell types × perc1 and perc99 (8,020
# variants of clusters) takes seconds, because only the cells a modification changes are
# re-classified, with a rank-one update of the network's cached first layer (the scan of all
# nine types is in `benchmarks/single_gene.py`). No single gene flips either of them: the MLP
# spreads its decisions over many genes.

# %%
scadv.tl.single_gene(adata, cluster_key="cell_type", target=["B", "NK"],
                     modification=["perc1", "perc99"], progress=False)
rec = adata.uns["scadv"]["single_gene"]
print(f"{int(rec['table']['flipped'].sum())} flipping (gene, modification) pairs; "
      f"{rec['n_classifier_calls']} classifier calls, {rec['seconds']:.1f} s")

# %% [markdown]
# Aberrant values (10,000 × a gene's maximum) are another matter, for both learned models:

# %%
for name, clf in (("MLP", None), ("random forest", forest)):
    scadv.tl.single_gene(adata, cluster_key="cell_type", target="NK", classifier=clf,
                         modification="positive_aberrant", key_added="aberrant",
                         progress=False)
    t = adata.uns["scadv"]["aberrant"]["table"]
    print(f"{name}: {int(t['flipped'].sum())} of {len(t)} genes flip NK cells alone when "
          f"set to an aberrant value; e.g. {', '.join(t[t['flipped']]['gene'][:5])}")

# %% [markdown]
# ## 3. The signature: genes that must not move
# The largest set of genes that can be switched off together without changing the label of
# the B cells leaves a short signature — the B-cell program of the textbooks.

# %%
scadv.tl.max_change(adata, cluster_key="cell_type", target="B", modification="perc1",
                    add_layer=True, progress=False)
mc = adata.uns["scadv"]["max_change"]
print(f"{len(mc['modifiable'])} genes switched off together, B cells still called "
      f"{mc['final_label']!r}; signature: {', '.join(mc['signature'])}")

# %% [markdown]
# ## 4. Switching a whole cluster, gene by gene (CGD)
# Memory CD4 T cells sit next to naive ones. CGD probes one gene at a time in both directions,
# keeps per cell the change that favours "Naive CD4 T" over "Memory CD4 T", and stops when the
# cluster's label switches.

# %%
scadv.tl.cgd(adata, cluster_key="cell_type", target="Memory CD4 T", add_obs=True,
             progress=False)
cgd = adata.uns["scadv"]["cgd"]
print(f"switched: {cgd['switched']} ({cgd['original_label']} → {cgd['final_label']}) after "
      f"modifying {cgd['n_genes_modified']} genes: {', '.join(cgd['modified_genes'][:10])} …")
scadv.pl.cgd(adata, show=False)
plt.savefig(OUT / "cgd.png", dpi=120, bbox_inches="tight")

# %% [markdown]
# ## 5. The smallest combination
# Which combination of B-cell signature genes, each left alone, switched off or fully on, is
# the smallest that changes the marker scorer's call? The grid tries them by size; the random
# walk is for lists too long for a grid.

# %%
scadv.tl.grid(adata, cluster_key="cell_type", target="B", classifier=markers,
              genes=["MS4A1", "CD79A", "CD74", "HLA-DRA", "CD3E", "LYZ"], progress=False)
print(adata.uns["scadv"]["grid"]["table"])
scadv.tl.random_walk(adata, cluster_key="cell_type", target="CD14+ Mono", classifier=markers,
                     genes=[*genes[:200], "CD14", "LYZ"], progress=False)
rw = adata.uns["scadv"]["random_walk"]
print(f"random walk: {', '.join(rw['best_genes'])} ({', '.join(rw['best_modifications'])}) "
      f"turns CD14+ monocytes into {rw['new_label']!r}")

# %% [markdown]
# ## 6. Overview
# For every cell type and modification: how many genes flip it alone, how many must stay.

# %%
scadv.tl.overview(adata, cluster_key="cell_type", classifier=markers, progress=False)
scadv.pl.overview(adata, value="n_signature_genes", show=False)
plt.savefig(OUT / "overview.png", dpi=120, bbox_inches="tight")
print(adata.uns["scadv"]["overview"]["table"][
    ["cluster", "modification", "n_flip_genes", "n_signature_genes"]])

# %% [markdown]
# ## 7. Everything is in the AnnData

# %%
adata.write_h5ad(OUT / "pbmc3k_gene_attacks.h5ad")
back = ad.read_h5ad(OUT / "pbmc3k_gene_attacks.h5ad")
assert np.array_equal(back.uns["scadv"]["max_change"]["signature"], mc["signature"])
print(sorted(back.uns["scadv"]))
