"""scadv.pl.flip_rate."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc

import scadv
from scadv._errors import ScadvInputError


def test_flip_rate_plot(small_trained, tmp_path):
    scadv.tl.pgd(small_trained, eps=(0.2, 0.5), cells="all", progress=False)
    ax = scadv.pl.flip_rate(small_trained, show=False, save=tmp_path / "flip.png")
    assert (tmp_path / "flip.png").stat().st_size > 1000
    bars = [p for p in ax.patches]
    assert len(bars) == 3 * 3  # clean accuracy + 2 budgets, for 3 classes
    rec = small_trained.uns["scadv"]["pgd"]
    widths = np.array([b.get_width() for b in bars]).reshape(3, 3)
    np.testing.assert_allclose(widths[1], rec["flip_rate_per_class"][0])
    np.testing.assert_allclose(widths[0], rec["clean_accuracy_per_class"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("type0 (n=")
    plt.close("all")


def test_draws_into_given_axes_and_umap_colours(small_trained):
    scadv.tl.pgd(small_trained, eps=0.3, cells="all", progress=False)
    _, axes = plt.subplots(1, 2)
    assert scadv.pl.flip_rate(small_trained, ax=axes[0], show=False) is axes[0]
    sc.pp.pca(small_trained, n_comps=10)
    sc.pp.neighbors(small_trained)
    sc.tl.umap(small_trained)
    for column in ("scadv_pgd_eps0.3_flipped", "scadv_pgd_eps0.3_flipped_to",
                   "scadv_pgd_eps0.3_pred"):
        sc.pl.umap(small_trained, color=column, ax=axes[1], show=False)
    plt.close("all")


def test_missing_attack(small_trained):
    with pytest.raises(ScadvInputError, match="run scadv.tl.pgd"):
        scadv.pl.flip_rate(small_trained, show=False)
