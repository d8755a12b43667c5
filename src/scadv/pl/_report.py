"""``scadv.pl.report``: one self-contained HTML audit report of what an AnnData holds.

The report is a list of sections. A section is a function ``(adata, ctx) -> str | None``
registered with :func:`section`: it returns an HTML fragment, or ``None`` when the results it
shows are absent (the section is then left out). New capabilities add their section by
registering a function, e.g. in their own module::

    from scadv.pl._report import section

    @section("Count-space attacks", order=45)
    def _counts(adata, ctx):
        recs = ctx.records(lambda r: r.get("space") == "counts")
        ...
"""

from __future__ import annotations

import base64
import html
import io
import webbrowser
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys as K
from .. import _validate as V
from .._errors import ScadvInputError
from . import _utils as U

SectionFunc = Callable[[AnnData, "Context"], "str | None"]


@dataclass(order=True)
class _Section:
    order: float
    title: str = field(compare=False)
    func: SectionFunc = field(compare=False)


_SECTIONS: list[_Section] = []


def section(title: str, *, order: float) -> Callable[[SectionFunc], SectionFunc]:
    """Register ``func`` as a report section titled ``title``, placed by ``order`` (lower
    first; the built-in sections use 10, 20, ... 90). Registering the same title again
    replaces the earlier function."""
    def register(func: SectionFunc) -> SectionFunc:
        _SECTIONS[:] = [s for s in _SECTIONS if s.title != title]
        _SECTIONS.append(_Section(float(order), title, func))
        _SECTIONS.sort()
        return func
    return register


def sections() -> list[str]:
    """Titles of the registered sections, in report order."""
    return [s.title for s in _SECTIONS]


@dataclass
class Context:
    """What a section gets besides the AnnData: record lookup and figure embedding."""

    adata: AnnData
    figures: int = 0

    def records(self, keep: Callable[[Mapping[str, Any]], bool]) -> Iterator[
            tuple[str, Mapping[str, Any]]]:
        """``(key, record)`` of every ``uns['scadv']`` record for which ``keep`` is true."""
        ns = self.adata.uns.get(K.UNS)
        if not isinstance(ns, Mapping):
            return
        for key, rec in ns.items():
            if isinstance(rec, Mapping) and keep(rec):
                yield str(key), rec

    def figure(self, draw: Callable[[], Axes | Sequence[Axes] | Figure], *, alt: str) -> str:
        """Run a plotting call and embed its figure as a base64 PNG ``<img>``; a plot that
        fails is reported in place, not hidden."""
        try:
            out = draw()
        except (ScadvInputError, KeyError, ValueError) as err:
            return f'<p class="note">Figure not drawn: {esc(str(err))}</p>'
        fig = (out if isinstance(out, Figure)
               else U.root_figure(out[0] if isinstance(out, Sequence) else out))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures += 1
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></figure>'


def esc(text: Any) -> str:
    return html.escape(str(text))


def table(df: pd.DataFrame, *, index: bool = False) -> str:
    """A DataFrame as an HTML table (numbers to 3 decimals)."""
    return df.to_html(index=index, border=0, classes="tbl", na_rep="–",
                      float_format=lambda v: f"{v:.3f}", escape=True)


def kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _is_classifier(rec: Mapping[str, Any]) -> bool:
    return "metrics" in rec and "classes" in rec and "label_key" in rec


def _is_attack(rec: Mapping[str, Any]) -> bool:
    return "flip_rate_per_class" in rec and "eps" in rec


def _is_detector(rec: Mapping[str, Any]) -> bool:
    return "threshold" in rec and "evaluation" in rec


def _arr(value: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(value))


# ---- the built-in sections ---------------------------------------------------------------------


@section("Data and model", order=10)
def _data_and_model(adata: AnnData, ctx: Context) -> str | None:
    ns = adata.uns.get(K.UNS)
    if not isinstance(ns, Mapping):
        return None
    recipe = ns.get(K.PREPARE)
    rows: list[tuple[str, Any]] = [("cells × genes", f"{adata.n_obs} × {adata.n_vars}")]
    if isinstance(recipe, Mapping):
        n_genes = len(_arr(recipe.get("genes", [])))
        rows += [("input", str(recipe.get("input_kind", "?"))),
                 ("model genes", n_genes),
                 ("gene selection", f"highly variable genes ({recipe.get('flavor', '?')})"
                                    if n_genes < adata.n_vars else "all genes"),
                 ("z-scores clipped at", recipe.get("max_value", "?"))]
    out = [kv(rows)]
    for key, rec in ctx.records(_is_classifier):
        label_key = str(rec["label_key"])
        classes = [str(c) for c in _arr(rec["classes"])]
        test = rec["metrics"].get("test", {})
        lines: list[tuple[str, Any]] = [
            ("classifier", f"{key!r} ({rec.get('kind', '?')})"),
            ("trained on", f"obs[{label_key!r}], {len(classes)} classes"),
        ]
        # the column itself, or a filtered copy of it (scadv audit --min-cells)
        pseudo = next((r for k, r in ctx.records(lambda r: r.get("kind") == "pseudo_labels")
                       if label_key == k or label_key.startswith(f"{k}_")), None)
        if pseudo is not None:
            lines.append(("labels", f"PSEUDO-LABELS: {pseudo.get('description', '')} "
                                    "(scadv.tl.pseudo_labels): the classifier learnt clusters, "
                                    "not cell types"))
        if test:
            lines += [("test accuracy", f"{float(test['accuracy']):.3f} (balanced "
                                        f"{float(test['balanced_accuracy']):.3f}) on "
                                        f"{int(test['n_cells'])} held-out cells")]
        out.append(f"<h3>Classifier {esc(key)}</h3>" + kv(lines))
    return "\n".join(out)


@section("Accuracy per class", order=20)
def _accuracy(adata: AnnData, ctx: Context) -> str | None:
    parts = []
    for key, rec in ctx.records(_is_classifier):
        test = rec["metrics"].get("test")
        if not isinstance(test, Mapping) or "per_class_accuracy" not in test:
            continue
        classes = [str(c) for c in _arr(rec["classes"])]
        df = pd.DataFrame({"class": classes,
                           "test cells": _arr(test["n_cells_per_class"]).astype(int),
                           "accuracy": _arr(test["per_class_accuracy"]).astype(float)})
        parts.append(f"<h3>Classifier {esc(key)} (test split)</h3>" + table(df))
    return "\n".join(parts) or None


def _attack_title(key: str, rec: Mapping[str, Any]) -> str:
    cons = rec.get("constraints", {})
    realistic = isinstance(cons, Mapping) and (
        bool(cons.get("keep_zeros")) or str(cons.get("clip", "none")) != "none"
        or str(cons.get("genes", "all")) != "all")
    norm = {"linf": "L∞", "l2": "L2"}.get(str(rec.get("norm")), str(rec.get("norm")))
    what = "data-respecting" if realistic else "unconstrained"
    return f"{str(rec.get('method', key)).upper()} {norm}, {what} (key {key!r})"


@section("Attacks: flip rates", order=30)
def _attacks(adata: AnnData, ctx: Context) -> str | None:
    from ._flip_rate import flip_rate

    parts = []
    for key, rec in ctx.records(_is_attack):
        eps = _arr(rec["eps"]).astype(float)
        df = pd.DataFrame({"ε": [K.format_eps(e) for e in eps],
                           "flip rate": _arr(rec["flip_rate"]).astype(float),
                           "robust accuracy": _arr(rec["robust_accuracy"]).astype(float)})
        cons = rec.get("constraints", {})
        note = ", ".join(f"{k}={v}" for k, v in cons.items()) if isinstance(cons, Mapping) else ""
        parts.append(
            f"<h3>{esc(_attack_title(key, rec))}</h3>"
            f"<p>{int(np.asarray(rec['n_cells']))} {esc(rec.get('cells', ''))} cells, "
            f"{int(np.asarray(rec.get('steps', 1)))} steps; constraints: {esc(note)}.</p>"
            + table(df)
            + ctx.figure(partial(flip_rate, adata, key=key, show=False),
                         alt=f"flip rate per class, {key}"))
        middle = K.attack_flipped_to(key, float(eps[len(eps) // 2]))
        if "X_umap" in adata.obsm and middle in adata.obs:
            parts.append(ctx.figure(partial(_umap, adata, middle),
                                    alt=f"UMAP coloured by {middle}"))
    return "\n".join(parts) or None


def _umap(adata: AnnData, column: str) -> Figure:
    import scanpy as sc

    label_key = U.label_key_of(adata)
    colors = [c for c in (label_key, column) if c and c in adata.obs]
    fig = sc.pl.umap(adata, color=colors, show=False, return_fig=True, wspace=0.5)
    return fig


@section("Meta-detector", order=40)
def _detector(adata: AnnData, ctx: Context) -> str | None:
    from ._meta_scores import meta_scores
    from ._roc import roc

    parts = []
    for key, rec in ctx.records(_is_detector):
        df = rec.get("table")
        intro = (f"<p>Threshold {float(rec['threshold']):.3f} "
                 f"(calibrated on validation cells); the table is on test cells only, "
                 "positives are successful attacks.</p>")
        body = table(pd.DataFrame(df)) if isinstance(df, pd.DataFrame) else ""
        parts.append(f"<h3>Detector {esc(key)}</h3>{intro}{body}"
                     + ctx.figure(partial(meta_scores, adata, key=key, show=False),
                                  alt=f"detector scores, {key}")
                     + ctx.figure(partial(roc, adata, key=key, show=False),
                                  alt=f"ROC, {key}"))
    return "\n".join(parts) or None


@section("Gene signatures", order=50)
def _genes(adata: AnnData, ctx: Context) -> str | None:
    from ._cgd import cgd
    from ._overview import overview
    from ._single_gene import single_gene

    parts = []
    for key, rec in ctx.records(lambda r: r.get("method") == "single_gene" and "summary" in r):
        summary = pd.DataFrame(rec["summary"])
        parts.append(f"<h3>Single genes that flip a cluster ({esc(key)})</h3>"
                     + table(summary.drop(columns=[c for c in summary if c.endswith("genes")
                                                  and summary[c].dtype == object]))
                     + "".join(ctx.figure(partial(single_gene, adata, key=key, target=t,
                                            show=False), alt=f"single genes, {t}")
                         for t in [str(t) for t in _arr(rec["targets"])][:4]))
    for key, rec in ctx.records(lambda r: r.get("method") == "max_change" and "signature" in r):
        sig = [str(g) for g in _arr(rec["signature"])]
        parts.append(f"<h3>Signature of {esc(rec['target'])} ({esc(key)}, "
                     f"{esc(rec['modification'])})</h3><p>{len(sig)} genes that cannot be "
                     f"modified with the others: {esc(', '.join(sig[:60]))}"
                     f"{' …' if len(sig) > 60 else ''}</p>")
    for key, _ in ctx.records(lambda r: r.get("method") == "overview" and "table" in r):
        parts.append(f"<h3>Overview ({esc(key)})</h3>"
                     + ctx.figure(partial(overview, adata, key=key, show=False),
                                  alt=f"overview, {key}"))
    for key, _ in ctx.records(lambda r: r.get("method") == "cgd" and "trajectory" in r):
        parts.append(f"<h3>CGD ({esc(key)})</h3>"
                     + ctx.figure(partial(cgd, adata, key=key, show=False),
                                  alt=f"CGD, {key}"))
    return "\n".join(parts) or None


@section("Robustness across models", order=60)
def _robustness(adata: AnnData, ctx: Context) -> str | None:
    from ._robustness_curve import robustness_curve

    parts = []
    for key, _ in ctx.records(lambda r: {"accuracy", "eps", "models"} <= set(r)):
        parts.append(ctx.figure(partial(robustness_curve, adata, key=key, show=False),
                                alt=f"robustness curve, {key}"))
    return "\n".join(parts) or None


@section("Provenance", order=90)
def _provenance(adata: AnnData, ctx: Context) -> str | None:
    ns = adata.uns.get(K.UNS, {})
    prov = ns.get(K.PROVENANCE) if isinstance(ns, Mapping) else None
    if not isinstance(prov, Mapping):
        return None
    steps = "".join(f"<li>{esc(s)}</li>" for s in _arr(prov.get("steps", [])).astype(str))
    versions = prov.get("versions", {})
    vrows = kv([(str(k), v) for k, v in versions.items()]) if isinstance(versions,
                                                                         Mapping) else ""
    session = esc(prov.get("session_info", ""))
    return (f"<h3>Steps</h3><ol>{steps}</ol><h3>Versions</h3>{vrows}"
            f"<details><summary>session_info</summary><pre>{session}</pre></details>")


# ---- the document -------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table.tbl,table.kv{border-collapse:collapse;margin:.6em 0;font-size:.92em}
.tbl th,.tbl td,.kv th,.kv td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.tbl th,.kv th{background:#f5f5f5}figure{margin:1em 0}img{max-width:100%}
.note{color:#8a4b00}nav li{display:inline;margin-right:1em}pre{white-space:pre-wrap}
"""


def report(
    adata: AnnData,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    only: Sequence[str] | None = None,
    show: bool = False,
    save: str | Path | bool = True,
) -> Path:
    """Write one self-contained HTML audit report of the scadv results in ``adata``.

    Sections, each left out when its results are absent: data and model (with a warning when
    the labels are pseudo-labels), accuracy per class, attacks (flip rate and robust accuracy
    per ε, per class, unconstrained and data-respecting), the meta-detector's evaluation
    table, gene signatures (single-gene, max-change, overview, CGD), robustness across models
    and provenance (steps, versions, session). Every figure is embedded as a PNG, so the file
    can be sent on its own. Nothing is computed: run the tools first (``scadv audit`` does).

    Parameters
    ----------
    adata
        Holds scadv results.
    title
        Heading of the report.
    notes
        Lines shown at the top (e.g. classes dropped before training).
    only
        Titles of the sections to include (default all: :func:`scadv.pl._report.sections`).
    show
        Open the report in the default web browser.
    save
        ``True``: ``{sc.settings.figdir}/scadv_report.html``; a string is appended to
        ``scadv_report`` in ``sc.settings.figdir`` (scanpy's rule for ``save=``); a
        :class:`~pathlib.Path` is written exactly there.

    Returns
    -------
    The path of the HTML file written.
    """
    if not isinstance(adata, AnnData):
        raise ScadvInputError(f"expected an AnnData, got {type(adata).__name__}.")
    V.options(locals())
    V.name("title", title, allow_none=True)
    notes = V.names("notes", notes, allow_empty=True) or ()
    only = V.names("only", only, allow_none=True)
    if save is False:
        raise ScadvInputError("the report is a file: pass save=True or a path.")
    path = U.save_path(save, "scadv_report")
    if path is None:  # pragma: no cover - excluded above
        raise ScadvInputError("pass save=True or a path.")
    if path.suffix != ".html":
        path = path.with_suffix(".html")
    chosen = [s for s in _SECTIONS if only is None or s.title in only]
    if only is not None:
        unknown = sorted(set(only) - {s.title for s in _SECTIONS})
        if unknown:
            raise ScadvInputError(f"only names unknown report sections {unknown}; choose from "
                                  f"{sections()}.")
    ctx = Context(adata)
    body, toc = [], []
    for i, s in enumerate(chosen):
        fragment = s.func(adata, ctx)
        if not fragment:
            continue
        anchor = f"s{i}"
        toc.append(f'<li><a href="#{anchor}">{esc(s.title)}</a></li>')
        body.append(f'<section id="{anchor}"><h2>{esc(s.title)}</h2>\n{fragment}\n</section>')
    if not body:
        raise ScadvInputError("adata holds no scadv results to report; run "
                              "scadv.tl.train_classifier and an attack first.")
    from .. import __version__

    heading = title or "scadv audit report"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    top = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f"<title>{esc(heading)}</title><style>{_CSS}</style></head><body>"
           f"<h1>{esc(heading)}</h1><p>scadv {esc(__version__)}, {stamp}; "
           f"{ctx.figures} figures.</p>{top}<nav><ul>{''.join(toc)}</ul></nav>"
           + "\n".join(body) + "</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    if show:
        webbrowser.open(path.resolve().as_uri())
    return path
