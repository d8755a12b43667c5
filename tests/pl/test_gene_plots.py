"""Plots of the gene-level attacks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError
from scadv.classifiers import PBMC_MARKERS, MarkerClassifier
from tests.pl import visible as V


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
    # bars start at the unmodified value, on an axis that spans the values shown
    base = a.uns["scadv"]["single_gene"]["summary"].query("cluster == 'NK'")[
        "original_score"].iloc[0]
    lefts = {round(b.get_x(), 9) for b in ax.patches}
    assert lefts == {round(float(base), 9)}
    ends = np.array([b.get_x() + b.get_width() for b in ax.patches])
    lo, hi = min(ends.min(), base), max(ends.max(), base)
    x0, x1 = ax.get_xlim()
    assert x0 < lo and x1 > hi and (x1 - x0) <= 1.25 * (hi - lo) + 3e-4
    V.inside_figure(ax.figure)
    ax = scadv.pl.overview(a, save=tmp_path / "ov.png")
    assert ax.images
    assert len(ax.texts) == 3 * 2
    V.inside_figure(ax.figure)
    scadv.pl.overview(a, value="n_signature_genes")
    ax = scadv.pl.cgd(a, save=tmp_path / "cgd.png")
    assert "switched" in ax.get_title()
    assert len(ax.lines) >= 2
    rec = a.uns["scadv"]["cgd"]
    switch = [line for line in ax.get_lines() if line.get_label().startswith("cluster labelled")]
    assert len(switch) == 1 and rec["switched"]
    x_switch = switch[0].get_xdata()[0]
    assert ax.get_xlim()[0] < x_switch < ax.get_xlim()[1] - 0.4  # not under the frame
    assert x_switch == rec["trajectory"].query("label == @rec['to']")["n_genes_modified"].min()
    V.inside_figure(ax.figure)
    for name in ("sg", "ov", "cgd"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    plt.close("all")


def test_overview_of_zeros_is_light_with_a_non_negative_scale(attacked):
    a = attacked
    table = a.uns["scadv"]["overview"]["table"]
    table["n_flip_genes"] = 0
    ax = scadv.pl.overview(a, show=False)
    im = ax.images[0]
    assert im.norm.vmin == 0 and im.norm.vmax >= 1
    np.testing.assert_allclose(im.cmap(im.norm(im.get_array())),
                               np.broadcast_to(im.cmap(0.0), (3, 2, 4)))
    bar = ax.figure.axes[-1]
    assert min(bar.get_ylim()) >= 0
    assert {t.get_color() for t in ax.texts} == {"black"}  # dark text on the light cells
    plt.close("all")


def test_gene_attack_plots_need_their_results(attacked):
    with pytest.raises(ScadvInputError, match=r"run scadv\.tl\.cgd first"):
        scadv.pl.cgd(attacked, key="nothing")
    with pytest.raises(ScadvInputError, match="was not attacked"):
        scadv.pl.single_gene(attacked, target="DC")
