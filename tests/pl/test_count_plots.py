"""scadv.pl.count_attack, count_genes, fragility and the report's count section."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex

import scadv
from scadv._errors import ScadvInputError
from tests.pl import visible as V


@pytest.fixture(scope="module")
def attacked(_small_trained_once):
    a = _small_trained_once.copy()
    scadv.tl.count_attack(a, budgets=(1, 2, 5, 10), progress=False)
    scadv.tl.count_attack(a, budgets=(1, 3, 10), beam=1, top_k=1, key_added="greedy",
                          progress=False)
    scadv.tl.fragility(a, progress=False)
    return a


def test_flip_rate_against_umis_per_class_and_runs(attacked, tmp_path):
    a = attacked
    ax = scadv.pl.count_attack(a, key=["count_attack", "greedy"], show=False,
                               save=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    lines = ax.get_lines()
    assert len(lines) == 2 * (3 + 1)  # per run: 3 classes and all cells
    rec = a.uns["scadv"]["count_attack"]
    overall = [ln for ln in lines if to_hex(ln.get_color()) == "#000000"]
    np.testing.assert_allclose(overall[0].get_ydata(), rec["flip_rate"])
    np.testing.assert_allclose(overall[0].get_xdata(), rec["budgets"])
    assert overall[0].get_linestyle() != overall[1].get_linestyle()
    V.lines_within_limits(ax, lines)
    V.inside_figure(ax.figure)
    colors = {to_hex(ln.get_color()) for ln in lines} - {"#000000"}
    assert colors == {to_hex(c) for c in scadv._colors.class_colors(a, "cell_type",
                                                                     ["type0", "type1", "type2"])}
    plt.close("all")


def test_genes_edited_with_their_detection(attacked):
    a = attacked
    genes = a.uns["scadv"]["count_attack"]["genes"]
    ax = scadv.pl.count_genes(a, top=5, show=False)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == list(genes["gene"].head(5))
    widths = np.array([p.get_width() for p in ax.patches]).reshape(3, 5).sum(axis=0)
    np.testing.assert_allclose(widths, genes["umis"].head(5))
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == f"detected in {100 * genes['detection'].iloc[0]:.1f}%"
    V.inside_figure(ax.figure)
    plt.close("all")


@pytest.mark.parametrize("key", ["count_attack", "fragility"])
def test_fragility_per_cell_type_beside_a_umap(attacked, key):
    a = attacked
    fig, axs = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ax = scadv.pl.fragility(a, key=key, ax=axs[1], show=False)
    assert ax is axs[1]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == int((a.obs["scadv_split"] == "test").sum())
    assert len(ax.get_yticklabels()) == 3
    col = "scadv_min_umis" if key == "count_attack" else "scadv_min_eps"
    n_out = int(np.isinf(a.obs[col]).sum())
    assert sum(int(t.get_text()) for t in ax.texts) == n_out
    V.inside_figure(fig)
    plt.close("all")


def test_plots_need_their_results(small_trained):
    with pytest.raises(ScadvInputError, match="scadv.tl.count_attack"):
        scadv.pl.count_attack(small_trained, show=False)
    with pytest.raises(ScadvInputError, match="count_attack or scadv.tl.fragility"):
        scadv.pl.fragility(small_trained, show=False)


def test_report_has_a_count_section(attacked, tmp_path):
    path = scadv.pl.report(attacked, save=tmp_path / "r.html")
    html = path.read_text()
    assert "Count-space attacks and fragility" in html
    assert "Count attack count_attack" in html and "Fragility in model space" in html
    assert "Figure not drawn" not in html
    assert "Runs compared" in html
