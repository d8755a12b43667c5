"""scadv.pl.meta_scores, roc, meta_confusion, meta_cell, meta_embedding."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import scadv
from scadv._errors import ScadvInputError
from tests.pl import visible as V


@pytest.fixture
def with_benign(small_meta):
    scadv.tl.benign_perturb(small_meta, kinds=("downsample",))
    scadv.tl.meta_evaluate(small_meta, progress=False)
    return small_meta


def test_meta_scores(with_benign, tmp_path):
    a = with_benign
    ax = scadv.pl.meta_scores(a, show=False, save=tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("clean (n=")
    assert any(t.startswith("pgd ε=0.3") for t in labels)
    assert not any("benign" in t for t in labels)  # adversarial layers by default
    # every series visible: one filled histogram per row, in its own band, none transparent
    fills = [p for p in ax.patches if p.get_fill()]
    assert len(fills) == len(labels) == 3
    bands = sorted(round(p.get_path().vertices[:, 1].min(), 6) for p in fills)
    assert bands == [0.0, 1.0, 2.0]
    for p in fills:
        ys = p.get_path().vertices[:, 1]
        assert ys.max() - ys.min() > 0.5 and ys.max() < ax.get_ylim()[1]
        assert V.visible_alpha(p)
    assert len({p.get_facecolor() for p in fills}) == 3
    V.inside_figure(ax.figure)
    ax = scadv.pl.meta_scores(a, layers=["scadv_benign_downsample"], show=False)
    assert any("perturbed" in t.get_text() for t in ax.get_yticklabels())
    thr = a.uns["scadv"]["meta"]["threshold"]
    assert any(np.allclose(line.get_xdata(), thr) for line in ax.get_lines())
    plt.close("all")


def test_roc_matches_the_evaluation(small_meta):
    a = small_meta
    ax = scadv.pl.roc(a, show=False)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    ev = a.uns["scadv"]["meta"]["evaluation"]["scadv_pgd_eps0.6"]["detector"]
    assert any(t.startswith("pgd ε=0.6") and f"AUROC {ev['auroc']:.3f}" in t for t in texts)
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(curves) == 2
    V.distinct_styles(curves)
    V.lines_within_limits(ax, curves)  # perfect curves at x=0 / y=1 stay off the frame
    V.inside_figure(ax.figure)
    plt.close("all")


def test_meta_confusion(small_meta):
    a = small_meta
    axes = scadv.pl.meta_confusion(a, layer="scadv_pgd_eps0.6", show=False)
    assert len(axes) == 3
    det = a.uns["scadv"]["meta"]["evaluation"]["scadv_pgd_eps0.6"]["detector"]
    shown = axes[2].get_images()[0].get_array()
    cm = np.asarray(det["confusion_matrix"])
    np.testing.assert_allclose(shown, cm / cm.sum(axis=1, keepdims=True))
    n_test = (a.obs["scadv_split"] == "test").sum()
    assert axes[0].get_images()[0].get_array().shape == (3, 3)
    assert f"n={n_test}" in axes[0].get_title()
    _, given = plt.subplots(1, 3)
    assert scadv.pl.meta_confusion(a, ax=given, show=False)[1] is given[1]
    with pytest.raises(ScadvInputError, match="three axes"):
        scadv.pl.meta_confusion(a, ax=given[:2], show=False)
    with pytest.raises(ScadvInputError, match="not among the layers"):
        scadv.pl.meta_confusion(a, layer="counts", show=False)
    plt.close("all")


def test_meta_cell(small_meta, tmp_path):
    a = small_meta
    cell = a.obs_names[(a.obs["scadv_split"] == "test").to_numpy()][0]
    ax = scadv.pl.meta_cell(a, cell, layer="scadv_pgd_eps0.6", show=False,
                            save=tmp_path / "c.png")
    assert cell in ax.get_title() and "detector" in ax.get_title()
    bars = ax.patches
    assert len(bars) == 2 * 3
    assert sum(b.get_width() for b in bars[:3]) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ScadvInputError, match="not in adata.obs_names"):
        scadv.pl.meta_cell(a, "nope", show=False)
    plt.close("all")


def test_meta_embedding(small_meta):
    ax = scadv.pl.meta_embedding(small_meta, layers=["scadv_pgd_eps0.6"], n_neighbors=5,
                                 show=False)
    n_test = (small_meta.obs["scadv_split"] == "test").sum()
    flipped = ((small_meta.obs["scadv_split"] == "test")
               & (small_meta.obs["scadv_pgd_eps0.6_flipped"] == True)).sum()  # noqa: E712
    sizes = [len(c.get_offsets()) for c in ax.collections]
    assert sizes == [n_test, flipped]
    plt.close("all")


def test_missing_detector(small_trained):
    for plot in (scadv.pl.meta_scores, scadv.pl.roc, scadv.pl.meta_confusion,
                 scadv.pl.meta_embedding):
        with pytest.raises(ScadvInputError, match="run scadv.tl.meta_detect"):
            plot(small_trained, show=False)


def test_benign_layers_have_flag_rates_not_a_confusion_matrix(with_benign):
    """A benign layer's evaluation holds flag rates only: the plots read it without asking for
    a confusion matrix, and meta_confusion says it draws adversarial layers only."""
    a = with_benign
    assert "confusion_matrix" not in a.uns["scadv"]["meta"]["evaluation"][
        "scadv_benign_downsample"]["detector"]
    scadv.pl.meta_scores(a, layers=["scadv_benign_downsample"], show=False)
    with pytest.raises(ScadvInputError, match="not among the layers"):
        scadv.pl.meta_confusion(a, layer="scadv_benign_downsample", show=False)
    plt.close("all")
