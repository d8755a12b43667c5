"""scadv.tl.overview: flips and signatures per cluster × modification, as the single tools."""

from __future__ import annotations

import anndata as ad
import pytest

import scadv
from scadv._errors import ScadvInputError
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier


def test_overview_agrees_with_single_gene_and_max_change(pbmc3k_markers, tmp_path):
    a = pbmc3k_markers
    mc = MarkerClassifier(PBMC_MARKERS)
    kw = dict(cluster_key="cell_type", classifier=mc, progress=False)
    scadv.tl.overview(a, target=["B", "NK"], modification=["perc1", "perc99"], **kw)
    rec = a.uns["scadv"]["overview"]
    table = rec["table"]
    assert list(zip(table["cluster"], table["modification"], strict=True)) == [
        ("B", "perc1"), ("B", "perc99"), ("NK", "perc1"), ("NK", "perc99")]
    scadv.tl.single_gene(a, target=["B", "NK"], modification=["perc1", "perc99"], **kw)
    summary = a.uns["scadv"]["single_gene"]["summary"]
    assert list(table["n_flip_genes"]) == list(summary["n_flip_genes"])
    for _, row in table.iterrows():
        scadv.tl.max_change(a, target=row["cluster"], modification=row["modification"], **kw)
        sig = a.uns["scadv"]["max_change"]["signature"]
        assert row["n_signature_genes"] == len(sig)
        assert row["signature_genes"] == ";".join(sig)
    b_perc1 = table.iloc[0]
    assert set(b_perc1["flip_genes"].split(";")) == {"MS4A1", "CD79A"}
    a.write_h5ad(tmp_path / "o.h5ad")
    assert ad.read_h5ad(tmp_path / "o.h5ad").uns["scadv"]["overview"]["table"].equals(table)


def test_overview_of_every_cluster_without_signatures(pbmc3k_markers):
    a = pbmc3k_markers
    scadv.tl.overview(a, cluster_key="cell_type", classifier=MarkerClassifier(PBMC_MARKERS),
                      signature=False, modification="negative_aberrant", progress=False)
    table = a.uns["scadv"]["overview"]["table"]
    assert list(table["cluster"]) == list(a.obs["cell_type"].cat.categories)
    assert (table["n_signature_genes"] == -1).all()
    # destroying any positive marker of a cluster's own type flips it
    for _, row in table.iterrows():
        own = set(PBMC_MARKERS[row["original_label"]]["positive"])
        assert own <= set(row["flip_genes"].split(";")), row["cluster"]
    with pytest.raises(ScadvInputError, match="signature=False"):
        scadv.pl.overview(a, value="n_signature_genes")
