"""scadv.pl.robustness_curve and the attribution plots."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc

import scadv
from scadv._errors import ScadvInputError
from tests.pl import visible as V


@pytest.fixture
def explained(sim_trained):
    a = sim_trained
    for method in ("integrated_gradients", "saliency"):
        scadv.tl.attribute(a, method=method, progress=False)
    return a


def test_robustness_curve(sim_trained, tmp_path):
    a = sim_trained
    scadv.tl.robust_accuracy(a, models=["classifier", "robust"], eps=(0, 0.1, 0.2),
                             progress=False)
    ax = scadv.pl.robustness_curve(a, show=False, save=tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["classifier", "robust"]
    np.testing.assert_allclose(lines[1].get_ydata(), a.uns["scadv"]["robustness"]["accuracy"][1])
    _, given = plt.subplots()
    assert scadv.pl.robustness_curve(a, ax=given, show=False) is given
    plt.close("all")
    with pytest.raises(ScadvInputError, match="run scadv.tl.robust_accuracy"):
        scadv.pl.robustness_curve(a, key="nope", show=False)


def test_top_genes(explained, tmp_path):
    ax = scadv.pl.top_genes(explained, n_genes=3, show=False, save=tmp_path / "top.png")
    rec = explained.uns["scadv"]["attr_integrated_gradients"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    first = rec["ranking"].query("`class` == 'type0'")["gene"].head(3).tolist()
    assert labels[:3] == first
    assert [t.get_text() for t in ax.get_xticklabels()] == list(rec["classes"])
    ax = scadv.pl.top_genes(explained, key="attr_saliency", classes=["type1"], show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["type1"]
    plt.close("all")
    with pytest.raises(ScadvInputError, match="no attribution results"):
        scadv.pl.top_genes(explained, key="nope", show=False)


def test_check_plots(explained, tmp_path):
    a = explained
    scadv.tl.attribution_stability(a, perturbations=["noise", "adversarial"], n_repeats=1,
                                   progress=False)
    ax = scadv.pl.attribution_stability(a, show=False, save=tmp_path / "stab.png")
    widths = np.array([b.get_width() for b in ax.patches]).reshape(2, 4)
    np.testing.assert_allclose(
        widths, a.uns["scadv"]["attr_integrated_gradients_stability"]["jaccard"])
    scadv.pl.attribution_stability(a, metric="spearman", show=False)
    scadv.tl.attribution_agreement(a, keys=["attr_integrated_gradients", "attr_saliency"])
    ax = scadv.pl.attribution_agreement(a, show=False, save=tmp_path / "agree.png")
    # the diagonal (agreement 1: viridis yellow) carries dark text, dark cells light text
    im = ax.images[0]
    for t in ax.texts:
        x, y = (round(v) for v in t.get_position())
        assert t.get_color() == V.readable_on(im.cmap(im.norm(im.get_array()[y, x])))
    diagonal = [t for t in ax.texts if t.get_position()[0] == t.get_position()[1]]
    assert diagonal and {t.get_color() for t in diagonal} == {"black"}
    V.inside_figure(ax.figure)
    sc.tl.rank_genes_groups(a, "cell_type", method="t-test")
    scadv.tl.marker_overlap(a, keys=["attr_integrated_gradients", "attr_saliency"])
    scadv.pl.marker_overlap(a, show=False, save=tmp_path / "de.png")
    truth = a.uns["scadv"]["simulation"]
    sets = {f"P_{c}": list(np.asarray(truth["genes"])[m])
            for c, m in zip(truth["classes"], truth["markers"], strict=True)}
    scadv.tl.gene_set_enrichment(a, sets, k=20)
    ax = scadv.pl.enrichment(a, show=False, save=tmp_path / "gsea.png")
    assert {t.get_text() for t in ax.get_yticklabels()} >= {"P_type0", "P_type1"}
    scadv.tl.score_attributions(a, keys=["attr_integrated_gradients", "attr_saliency"])
    for metric in ("precision_at_k", "recall_at_k", "auprc"):
        scadv.pl.attribution_truth(a, metric=metric, show=False)
    scadv.pl.attribution_truth(a, show=False, save=tmp_path / "truth.png")
    assert len(list(tmp_path.glob("*.png"))) == 5
    plt.close("all")
    for plot, message in ((scadv.pl.attribution_stability, "attribution_stability"),
                          (scadv.pl.attribution_agreement, "attribution_agreement"),
                          (scadv.pl.marker_overlap, "marker_overlap"),
                          (scadv.pl.enrichment, "gene_set_enrichment"),
                          (scadv.pl.attribution_truth, "score_attributions")):
        with pytest.raises(ScadvInputError, match=message):
            plot(a, key="nope", show=False)
    with pytest.raises(ScadvInputError, match="metric must be"):
        scadv.pl.attribution_truth(a, metric="f1", show=False)
