"""Plots of the gene-level attacks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

import scadv
from scadv._errors import ScadvInputError
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier


@pytest.fixture
def attacked(pbmc3k_markers):
    a = pbmc3k_markers
    mc = MarkerClassifier(PBMC_MARKERS)
    kw = dict(cluster_key="cell_type", classifier=mc, progress=False)
    scadv.tl.single_gene(a, target=["B", "NK"], modification=["perc1", "perc99"], **kw)
    scadv.tl.overview(a, target=["B", "NK", "DC"], **kw)
    scadv.tl.cgd(a, target="B", to="Naive CD4 T", **kw)
    return a


def test_gene_attack_plots(attacked, tmp_path):
    a = attacked
    ax = scadv.pl.single_gene(a, target="NK", top=12, save=tmp_path / "sg.png")
    assert len(ax.patches) == 12
    assert "NK" in ax.get_title()
    ax = scadv.pl.overview(a, save=tmp_path / "ov.png")
    assert ax.images
    assert len(ax.texts) == 3 * 2
    scadv.pl.overview(a, value="n_signature_genes")
    ax = scadv.pl.cgd(a, save=tmp_path / "cgd.png")
    assert "switched" in ax.get_title()
    assert len(ax.lines) >= 2
    for name in ("sg", "ov", "cgd"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    plt.close("all")


def test_gene_attack_plots_need_their_results(attacked):
    with pytest.raises(ScadvInputError, match=r"run scadv\.tl\.cgd first"):
        scadv.pl.cgd(attacked, key="nothing")
    with pytest.raises(ScadvInputError, match="was not attacked"):
        scadv.pl.single_gene(attacked, target="DC")
