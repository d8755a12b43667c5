"""scanpy's plotting contract: colours shared with sc.pl.umap, save=, verbosity, layouts."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.colors import to_hex

import scadv
from scadv import _colors
from tests.pl import visible as V


@pytest.mark.parametrize("n", [3, 9, 12, 25])
def test_class_colors_are_the_ones_scanpy_assigns(n):
    from scanpy.plotting._utils import _set_default_colors_for_categorical_obs

    labels = [f"c{i:02d}" for i in range(n)]
    a = ad.AnnData(X=np.zeros((n, 1), dtype=np.float32),
                   obs=pd.DataFrame({"lab": pd.Categorical(labels)}, index=labels))
    ours = _colors.class_colors(a, "lab", labels[::-1])  # any class order
    _set_default_colors_for_categorical_obs(a, "lab")
    theirs = dict(zip(labels, a.uns["lab_colors"], strict=True))
    assert [to_hex(c) for c in ours] == [to_hex(theirs[c]) for c in labels[::-1]]
    # and once stored (by scanpy or the user), the stored colours win
    a.uns["lab_colors"] = np.array(["#000000"] * n)
    assert set(_colors.class_colors(a, "lab", labels)) == {"#000000"}


def test_attack_columns_match_the_label_column_in_sc_pl_umap(small_trained):
    a = small_trained
    scadv.tl.pgd(a, eps=0.5, cells="test", progress=False)
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2))
    sc.pl.umap(a, color="cell_type", show=False)  # scanpy stores its colours now
    plt.close("all")
    label = dict(zip(a.obs["cell_type"].cat.categories, a.uns["cell_type_colors"], strict=True))
    for col in ("scadv_pgd_eps0.5_pred", "scadv_pgd_eps0.5_flipped_to"):
        cats = a.obs[col].cat.categories
        stored = dict(zip(cats, a.uns[f"{col}_colors"], strict=True))
        for c in label:
            assert to_hex(stored[c]) == to_hex(label[c]), (col, c)
    flipped_to = dict(zip(a.obs["scadv_pgd_eps0.5_flipped_to"].cat.categories,
                          a.uns["scadv_pgd_eps0.5_flipped_to_colors"], strict=True))
    unchanged = to_hex(flipped_to["unchanged"])
    assert a.obs["scadv_pgd_eps0.5_flipped_to"].isna().any()  # train cells: not attacked
    assert unchanged != to_hex(_colors.NOT_ATTACKED_COLOR)  # two different greys
    all_class_colors = {to_hex(c) for c in sc.pl.palettes.default_102 + sc.pl.palettes.default_20}
    assert unchanged not in all_class_colors


@pytest.fixture
def scanpy_settings():
    """Restores the scanpy settings a test changes."""
    saved = {k: getattr(sc.settings, k) for k in ("figdir", "file_format_figs", "verbosity")}
    yield sc.settings
    for k, v in saved.items():
        setattr(sc.settings, k, v)


def test_save_follows_scanpy(small_trained, tmp_path, scanpy_settings):
    a = small_trained
    scadv.tl.pgd(a, eps=0.3, progress=False)
    scanpy_settings.figdir = tmp_path / "figs"
    scanpy_settings.file_format_figs = "png"
    scadv.pl.flip_rate(a, show=False, save=True)
    assert (tmp_path / "figs" / "flip_rate.png").stat().st_size > 1000
    scadv.pl.flip_rate(a, show=False, save="_pbmc.pdf")
    assert (tmp_path / "figs" / "flip_rate_pbmc.pdf").stat().st_size > 1000
    scadv.pl.flip_rate(a, show=False, save=tmp_path / "exact.svg")
    assert (tmp_path / "exact.svg").stat().st_size > 1000
    plt.close("all")


def test_progress_bars_follow_scanpy_verbosity(small_trained, capsys, scanpy_settings):
    a = small_trained
    scanpy_settings.verbosity = 1
    scadv.tl.pgd(a, eps=0.3, progress=True, key_added="loud")
    assert "attack" in capsys.readouterr().err
    scanpy_settings.verbosity = 0
    scadv.tl.pgd(a, eps=0.3, progress=True, key_added="quiet")
    assert capsys.readouterr().err == ""
    scanpy_settings.verbosity = 1
    with pytest.MonkeyPatch.context() as mp:  # tqdm's own switch (rendered notebooks)
        mp.setenv("TQDM_DISABLE", "1")
        scadv.tl.pgd(a, eps=0.3, progress=True, key_added="quiet")
    assert capsys.readouterr().err == ""


def test_new_figures_survive_a_plain_savefig(small_trained):
    a = small_trained
    scadv.tl.pgd(a, eps=(0.2, 0.5), progress=False)
    ax = scadv.pl.flip_rate(a, show=False)
    V.inside_figure(ax.figure)
    plt.close("all")
