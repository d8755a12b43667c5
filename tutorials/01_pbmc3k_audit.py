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
# # How easily can a PBMC cell-type classifier be fooled?
#
# This tutorial starts from the raw PBMC3k counts (10x Genomics) with the nine cell types of
# Seurat's tutorial, and ends with a flip-rate plot next to a UMAP and one `.h5ad` that a
# colleague can reload to apply the classifier to their own cells.
#
# It runs offline on the data shipped with the project (`shared/data/pbmc3k_raw.h5ad`; set
# `SCADV_DATA` to the folder that holds it). Run it as a script (`python
# tutorials/01_pbmc3k_audit.py`) or open it as a notebook with
# [jupytext](https://jupytext.readthedocs.io) (`jupytext --to ipynb 01_pbmc3k_audit.py`).

# %%
import os
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc

import scadv

sc.settings.verbosity = 1
DATA = Path(os.environ.get("SCADV_DATA", Path.cwd().parent / "shared" / "data"))
OUT = Path(os.environ.get("SCADV_TUTORIAL_OUT", "tutorial_out"))
OUT.mkdir(parents=True, exist_ok=True)
if not (DATA / "pbmc3k_raw.h5ad").exists():
    raise SystemExit(f"pbmc3k_raw.h5ad not found in {DATA}: set SCADV_DATA to its folder")

# %% [markdown]
# ## 1. Raw counts and cell types
# 2,700 cells × 32,738 genes of raw UMI counts. 62 cells have no label: Seurat's tutorial
# removed them in quality control. scadv will not train on them, but it will predict them.

# %%
adata = scadv.datasets.pbmc3k(DATA / "pbmc3k_raw.h5ad")
print(adata)
print(adata.obs["cell_type"].value_counts(dropna=False))

# %% [markdown]
# ## 2. Prepare the classifier's input
# `scadv.pp.prepare` sees raw counts and records how they become the classifier's input: each
# cell normalised to 10,000 counts, `log1p`, 2,000 highly variable genes (Seurat's *vst*), each
# gene z-scored and clipped at 10. It only *records* this recipe (genes, means, standard
# deviations) in `uns['scadv']['prepare']`: `X` stays the raw counts of all genes, and every
# scadv tool computes the model input from them batch by batch — for these cells and for any
# new cells, identically. (`prepare(adata, subset=True)` gives scanpy's classic in-place
# layout instead.)

# %%
scadv.pp.prepare(adata)
recipe = adata.uns["scadv"]["prepare"]
print(adata)
print("input kind:", recipe["input_kind"], "| gene selection:", recipe["flavor"],
      "| first model genes:", recipe["genes"][:8].tolist())

# %% [markdown]
# ## 3. Train the cell-type classifier
# The MLP (genes → 256 → 128 → 64 → 9) sits behind a fixed projection onto the top 50
# principal components of the training cells. Cells are split per cell type into 70% train,
# 10% validation (early stopping) and 20% test; the split is in `obs['scadv_split']`.

# %%
scadv.tl.train_classifier(adata, "cell_type")
model = adata.uns["scadv"]["classifier"]
test = model["metrics"]["test"]
print(f"test accuracy {test['accuracy']:.3f}, balanced {test['balanced_accuracy']:.3f}, "
      f"{len(model['history']['epoch'])} epochs")
per_class = pd.DataFrame({"test cells": test["n_cells_per_class"],
                          "accuracy": np.round(test["per_class_accuracy"], 3)},
                         index=model["classes"])
print(per_class)

# %% [markdown]
# A UMAP for orientation: the cells as the classifier sees them, from its 64-d embedding
# (`obsm['X_scadv_emb']`).

# %%
sc.pp.neighbors(adata, use_rep="X_scadv_emb", random_state=0)
sc.tl.umap(adata, random_state=0)

# %% [markdown]
# ## 4. Attack it
# Projected gradient descent moves each test cell within an L∞ ball of radius ε (in z-score
# units of every gene) to change the classifier's answer. `flip rate` is the fraction of cells
# whose predicted type changed.

# %%
scadv.tl.pgd(adata, eps=(0.05, 0.1, 0.15))
attack = adata.uns["scadv"]["pgd"]
print(pd.DataFrame({"flip rate": attack["flip_rate"],
                    "robust accuracy": attack["robust_accuracy"],
                    "genes moved per cell": attack["genes_moved_mean"]},
                   index=[f"ε={e:g}" for e in attack["eps"]]).round(3))

# %% [markdown]
# The flip rate per cell type next to a UMAP coloured by where the flipped cells went.
# Naive and memory CD4 T cells, the boundary that is hard even for the labels, flip first.

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
scadv.pl.flip_rate(adata, ax=axes[0], show=False)
sc.pl.umap(adata, color="scadv_pgd_eps0.1_flipped_to", ax=axes[1], show=False,
           title="PGD ε=0.1: new type of flipped test cells")
fig.tight_layout()
fig.savefig(OUT / "flip_rate_and_umap.png", dpi=120)

# %% [markdown]
# ## 5. A realistic attacker
# Unconstrained PGD moves almost every gene, including the many that are not expressed in a
# cell: no real cell looks like that. With `keep_zeros=True` genes at zero stay at zero and
# expressed genes stay above zero; `clip='observed'` keeps every gene within its observed
# range. Such an attacker needs a larger budget for fewer flips.

# %%
scadv.tl.pgd(adata, eps=(0.5, 1.0), keep_zeros=True, clip="observed", key_added="realistic")
real = adata.uns["scadv"]["realistic"]
print(pd.DataFrame({"flip rate": real["flip_rate"],
                    "genes moved per cell": real["genes_moved_mean"]},
                   index=[f"ε={e:g}" for e in real["eps"]]).round(3))

# %% [markdown]
# ## 6. How many molecules does it take?
# Even this attacker moves z-scores, and its changes do not correspond to whole UMI counts. The
# count attack edits the raw counts themselves, one UMI at a time (whole numbers ≥ 0, at
# most 3 UMIs added to or removed from a gene, library size within the observed range), and
# pushes every edited cell through the stored recipe and the classifier.
# `obs['scadv_min_umis']` is the fewest UMIs it found that change each test cell's type; its
# binned version colours a UMAP (see the [count-space page](../counts.md) for the benchmark
# over seeds and the hardening options).

# %%
scadv.tl.count_attack(adata, budgets=(1, 2, 5, 10, 20, 50))
counts = adata.uns["scadv"]["count_attack"]
print(pd.Series(counts["flip_rate"], index=[f"≤ {b} UMIs" for b in counts["budgets"]],
                name="flip rate").round(3))
print("median fewest UMIs:", counts["median_min_umis"])

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 1.2]})
scadv.pl.fragility(adata, key="count_attack", ax=axes[0], show=False)
sc.pl.umap(adata, color="scadv_min_umis_bin", ax=axes[1], show=False,
           title="fewest UMIs that change each test cell's type")
fig.tight_layout()
fig.savefig(OUT / "min_umis_and_umap.png", dpi=120)

# %% [markdown]
# ## 7. Save, send, reload, apply to new cells
# Everything is in the AnnData: the model as plain arrays (no pickle; a file from a stranger
# cannot run code), the recipe, the split, the attacks and their parameters. The attacks keep
# only what they changed, for the cells they changed (`scadv.get.perturbations(adata)`), so
# the file stays close to the size of the raw counts.

# %%
print(scadv.get.perturbations(adata))
path = OUT / "pbmc3k_scadv.h5ad"
adata.write_h5ad(path)
reloaded = ad.read_h5ad(path)
print(f"{path.stat().st_size / 2**20:.1f} MiB on disk")

# %% [markdown]
# A colleague has new cells as raw counts (here: 300 cells of the raw file, with the genes in
# another order). `scadv.tl.predict` rebuilds the classifier from the reloaded file, matches
# genes by name and applies the stored recipe; the colleague's `X` is not modified.

# %%
new = ad.read_h5ad(DATA / "pbmc3k_raw.h5ad")[:300].copy()
new = new[:, np.random.default_rng(0).permutation(new.n_vars)].copy()
scadv.tl.predict(new, source=reloaded)
same = (new.obs["scadv_pred"].astype(str).to_numpy()
        == adata.obs["scadv_pred"].astype(str).to_numpy()[:300]).mean()
print(f"predictions identical to the original model on the same cells: {same:.1%}")

# %% [markdown]
# What produced these numbers is recorded next to them:

# %%
prov = reloaded.uns["scadv"]["classifier"]["provenance"]
print({k: prov[k] for k in ("seed", "device", "time")})
print({k: prov["versions"][k] for k in ("scadv", "scanpy", "anndata", "torch")})
