"""The scadv command line and the HTML audit report."""

from __future__ import annotations

import base64
import subprocess
import sys
from html.parser import HTMLParser

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scadv
from scadv.cli import main
from scadv.pl import _report
from tests.conftest import make_counts


class _Page(HTMLParser):
    """Headings, images and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._in_h2 = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http", "//", "file:")):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2[-1] += data


def parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.mark.slow
def test_demo_writes_report_h5ad_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--realistic", "--detector", "--single-gene"]) == 0
    printed = capsys.readouterr()
    assert "clean test accuracy" in printed.out and "ε=0.1" in printed.out
    assert "data-respecting L∞ PGD" in printed.out and "AUROC" in printed.out
    assert "WARNING" not in printed.out + printed.err  # the demo's own data is clean
    for name in ("scadv_pbmc68k_reduced.h5ad", "flip_rate.png", "umap_flipped.png",
                 "report.html"):
        assert (out / name).stat().st_size > 1000
    back = ad.read_h5ad(out / "scadv_pbmc68k_reduced.h5ad")
    assert {"pgd", "pgd_realistic", "meta", "single_gene"} <= set(back.uns["scadv"])
    page = parse(out / "report.html")
    assert page.h2 == ["Data and model", "Accuracy per class", "Attacks: flip rates",
                       "Meta-detector", "Gene signatures", "Provenance"]
    text = " ".join(page.text)
    assert "data-respecting (key 'pgd_realistic')" in text and "AUROC" in text
    assert not page.external  # self-contained
    # flip rate ×2, UMAP ×2, detector scores + ROC, single-gene plots (4 shown)
    assert len(page.images) >= 10
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_sections_are_registered_and_absent_ones_skipped(small_trained, tmp_path):
    a = small_trained
    scadv.tl.pgd(a, eps=0.3, progress=False)

    @_report.section("Count-space attacks", order=35)
    def _counts(adata, ctx):
        recs = list(ctx.records(lambda r: r.get("space") == "counts"))
        return "<p>counts</p>" if recs else None

    @_report.section("Extra", order=95)
    def _extra(adata, ctx):
        return "<p>extra section</p>"

    try:
        path = scadv.pl.report(a, save=tmp_path / "r.html")
        page = parse(path)
        assert page.h2 == ["Data and model", "Accuracy per class", "Attacks: flip rates",
                           "Provenance", "Extra"]  # no detector, genes or counts: skipped
        assert "Count-space attacks" in _report.sections()
        only = parse(scadv.pl.report(a, only=["Extra"], save=tmp_path / "e.html"))
        assert only.h2 == ["Extra"]
        with pytest.raises(scadv.ScadvInputError, match="unknown report sections"):
            scadv.pl.report(a, only=["nope"], save=tmp_path / "x.html")
    finally:
        _report._SECTIONS[:] = [s for s in _report._SECTIONS
                                if s.title not in ("Count-space attacks", "Extra")]
    with pytest.raises(scadv.ScadvInputError, match="no scadv results"):
        scadv.pl.report(ad.AnnData(np.ones((2, 2), dtype=np.float32)), save=tmp_path / "n.html")


def test_audit_user_file(pbmc3k_path, tmp_path, capsys):
    code = main(["audit", str(pbmc3k_path), "--label-key", "cell_type", "--out",
                 str(tmp_path / "audit"), "--eps", "0.1", "--cells", "all", "--no-report"])
    assert code == 0
    out = capsys.readouterr().out
    assert "2700 cells" in out and "on 2700 all cells" in out
    assert (tmp_path / "audit" / "scadv_pbmc3k_raw.h5ad").exists()
    assert not (tmp_path / "audit" / "report.html").exists()


def test_audit_pseudo_labels_and_min_cells(tmp_path, capsys):
    path = tmp_path / "unlabelled.h5ad"
    a = make_counts(n_per_class=60)
    del a.obs["cell_type"]
    a.write_h5ad(path)
    args = ["audit", str(path), "--labels", "kmeans", "--eps", "0.3", "--out",
            str(tmp_path / "pseudo")]
    code = main(args)
    if code == 1:  # a tiny k-means cluster: the error names the flag that fixes it
        assert "--min-cells 3" in capsys.readouterr().err
        code = main([*args, "--min-cells", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pseudo-labels (MiniBatchKMeans, 10 clusters on" in printed
    back = ad.read_h5ad(tmp_path / "pseudo" / "scadv_unlabelled.h5ad")
    assert back.uns["scadv"]["scadv_pseudo_label"]["method"] == "kmeans"
    assert any("pseudo-labels" in s for s in back.uns["scadv"]["provenance"]["steps"])
    assert "PSEUDO-LABELS" in " ".join(parse(tmp_path / "pseudo" / "report.html").text)


def test_audit_small_classes_give_a_cli_fix(tmp_path, capsys):
    path = tmp_path / "small_class.h5ad"
    a = make_counts()
    labels = a.obs["cell_type"].astype(str).to_numpy()
    labels[:2] = "rare"
    a.obs["cell_type"] = pd.Categorical(labels)
    a.write_h5ad(path)
    args = ["audit", str(path), "--label-key", "cell_type", "--eps", "0.3", "--no-report",
            "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "{'rare': 2}" in err and "--min-cells 3" in err and "adata.obs" not in err
    assert main([*args, "--min-cells", "5"]) == 0
    out = capsys.readouterr().out
    assert "left out of training" in out and "classes from obs['scadv_cell_type']" in out


def test_audit_errors_are_clear(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.h5ad"), "--label-key", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err
    text = tmp_path / "table.h5ad"
    text.write_text("cell,gene\n1,2\n")
    assert main(["audit", str(text), "--label-key", "x"]) == 1
    assert "is not an .h5ad file (not HDF5)" in capsys.readouterr().err
    assert main(["audit", str(tmp_path), "--label-key", "x"]) == 1
    assert "is a folder" in capsys.readouterr().err
    path = tmp_path / "small.h5ad"
    ad.AnnData(X=np.ones((1, 1), dtype=np.float32)).write_h5ad(path)
    assert main(["audit", str(path), "--label-key", "cell_type"]) == 1
    err = capsys.readouterr().err
    assert "label key 'cell_type' not found" in err and "--labels kmeans" in err


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "scadv.cli", "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith("scadv ")
