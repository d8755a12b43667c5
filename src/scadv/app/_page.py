"""The web page (Dash): layout and callbacks over a :class:`~scadv.app._session.Session`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import _colors
from .._errors import ScadvInputError
from ._session import ATTACKS, Session

#: Cells above which the UMAP is drawn with WebGL instead of SVG.
SVG_LIMIT = 5000


def umap_figure(session: Session, color: str | None, selected: str | None) -> Any:
    """Plotly UMAP of every cell coloured by an obs column, the selected cell ringed."""
    import plotly.graph_objects as go

    a = session.adata
    xy = np.asarray(a.obsm["X_umap"])[:, :2]
    names = np.asarray(a.obs_names).astype(str)
    scatter = go.Scatter if a.n_obs <= SVG_LIMIT else go.Scattergl
    fig = go.Figure()
    col = a.obs[color] if color and color in a.obs else None
    if color and col is not None and (isinstance(col.dtype, pd.CategoricalDtype)
                                      or col.dtype == object or col.dtype == bool):
        cats = _colors.categories(a, color) or []
        stored = a.uns.get(f"{color}_colors")
        if stored is not None and len(stored) >= len(cats):
            colors = [str(c) for c in np.asarray(stored)[:len(cats)]]
        else:
            colors = _colors.class_colors(a, color, cats)
        values = col.astype(str).where(col.notna(), None)
        na = values.isna().to_numpy()
        if na.any():
            fig.add_trace(scatter(x=xy[na, 0], y=xy[na, 1], mode="markers", name="NA",
                                  customdata=names[na], hovertext=names[na],
                                  marker={"size": 5, "color": _colors.NOT_ATTACKED_COLOR}))
        for cat, c in zip(cats, colors, strict=True):
            m = (values == cat).to_numpy()
            if m.any():
                fig.add_trace(scatter(x=xy[m, 0], y=xy[m, 1], mode="markers", name=cat,
                                      customdata=names[m], hovertext=names[m],
                                      marker={"size": 5, "color": c}))
    else:
        vals = None if col is None else col.to_numpy(dtype=float)
        fig.add_trace(scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=color or "cells",
                              customdata=names, hovertext=names,
                              marker={"size": 5, "color": vals, "colorscale": "Viridis",
                                      "showscale": vals is not None}))
    if selected and selected in a.obs_names:
        i = a.obs_names.get_loc(selected)
        fig.add_trace(go.Scatter(x=[xy[i, 0]], y=[xy[i, 1]], mode="markers", name="selected",
                                 customdata=[selected], hoverinfo="skip",
                                 marker={"size": 14, "color": "rgba(0,0,0,0)",
                                         "line": {"width": 2, "color": "black"}}))
    fig.update_layout(margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=520,
                      title=f"{session.name}: UMAP coloured by {color}", clickmode="event",
                      legend={"itemsizing": "constant"}, plot_bgcolor="white")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def proba_figure(result: Any) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure([
        go.Bar(y=result.classes, x=result.proba_before, orientation="h", name="clean",
               marker_color="#8c8c8c"),
        go.Bar(y=result.classes, x=result.proba_after, orientation="h",
               name=f"attacked ({result.attack})", marker_color=_colors.FLIPPED_COLOR),
    ])
    fig.update_layout(barmode="group", height=80 + 28 * len(result.classes),
                      margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"range": [0, 1], "title": "class probability"},
                      yaxis={"autorange": "reversed"}, title="class probabilities")
    return fig


def genes_figure(result: Any, top: int = 15) -> Any:
    import plotly.graph_objects as go

    g = result.genes.head(top)
    fig = go.Figure(go.Bar(y=g["gene"], x=g["change"], orientation="h",
                           marker_color=np.where(g["change"] > 0, "#d62728", "#1f77b4")))
    fig.update_layout(height=80 + 22 * len(g), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis={"autorange": "reversed"},
                      xaxis={"title": "change of the model input (z-score units)"},
                      title=f"genes moved most ({result.n_genes_moved} of "
                            f"{len(result.genes)} moved)")
    return fig


def frame_table(df: pd.DataFrame, *, id: str) -> Any:
    """A DataFrame as a plain HTML table (numbers to 3 decimals, NaN as –)."""
    from dash import html

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if np.isnan(v) else f"{v:.3f}"
        return str(v)

    head = html.Tr([html.Th(str(c)) for c in df.columns])
    rows = [html.Tr([html.Td(cell(v)) for v in r]) for r in df.itertuples(index=False)]
    return html.Table([html.Thead(head), html.Tbody(rows)], id=id,
                      style={"borderCollapse": "collapse"})


def _controls(session: Session) -> list[Any]:
    from dash import dcc, html

    out: list[Any] = []
    for name, spec in ATTACKS.items():
        rows = []
        for opt in spec.options:
            oid = {"type": "opt", "attack": name, "name": opt.name}
            ctl: Any
            if opt.kind == "number":
                ctl = dcc.Input(id=oid, type="number", value=opt.default, debounce=True,
                                style={"width": "7em"})
            elif opt.kind == "check":
                ctl = dcc.Checklist(id=oid, options=[{"label": "", "value": "on"}],
                                    value=["on"] if opt.default else [], inline=True)
            else:
                choices = list(opt.choices) or [opt.default, *session.classes]
                ctl = dcc.Dropdown(id=oid, options=choices, value=opt.default, clearable=False,
                                   style={"width": "16em"})
            rows.append(html.Div([html.Label(opt.label, style={"width": "16em",
                                                               "display": "inline-block"}),
                                  html.Div(ctl, style={"display": "inline-block"})],
                                 style={"margin": "2px 0"}))
        out.append(html.Div(rows, id={"type": "attack-box", "attack": name},
                            style={"display": "block" if not out else "none"}))
    return out


def _option_values(ids: list[dict[str, Any]], values: list[Any], attack: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for oid, v in zip(ids, values, strict=True):
        if oid["attack"] != attack:
            continue
        opts[oid["name"]] = bool(v) if isinstance(v, list) else v
    return opts


def build(session: Session) -> Any:
    """The Dash app of ``session``."""
    import dash
    from dash import ALL, Input, Output, State, dcc, html

    app = dash.Dash(__name__, title=f"scadv · {session.name}")
    columns = session.color_columns()
    test = session.test_cells()
    det = session.detector_key
    app.layout = html.Div(style={"fontFamily": "system-ui, sans-serif", "margin": "12px"},
                          children=[
        html.H2(f"scadv: attack a cell of {session.name}"),
        html.P(f"{session.adata.n_obs} cells; classifier on obs[{session.label_key!r}] "
               f"({len(session.classes)} classes); detector: "
               f"{repr(det) if det else 'none stored'}. The file is never written to."),
        dcc.Store(id="cell", data=test[0] if test else None),
        html.Div(style={"display": "flex", "gap": "16px"}, children=[
            html.Div(style={"flex": "3", "minWidth": "0"}, children=[
                html.Label("colour by "),
                dcc.Dropdown(id="color", options=columns,
                             value=columns[0] if columns else None, clearable=False),
                dcc.Graph(id="umap", figure=umap_figure(session, columns[0] if columns
                                                        else None, None)),
            ]),
            html.Div(style={"flex": "2", "minWidth": "0"}, children=[
                html.Label("cell (click one on the UMAP, or type its name) "),
                dcc.Input(id="cell-name", type="text", value=test[0] if test else "",
                          debounce=True, style={"width": "95%"}),
                html.Div(id="cell-info", style={"margin": "6px 0"}),
                html.Label("attack "),
                dcc.Dropdown(id="attack", options=[{"label": s.label, "value": n}
                                                   for n, s in ATTACKS.items()],
                             value=next(iter(ATTACKS)), clearable=False),
                *_controls(session),
                html.Button("Attack this cell", id="run", n_clicks=0,
                            style={"margin": "8px 0"}),
                dcc.Loading(html.Div(id="verdict", style={"fontWeight": "bold"})),
                dcc.Graph(id="proba", style={"display": "none"}),
                dcc.Graph(id="genes", style={"display": "none"}),
            ]),
        ]),
        html.H3("Whole test set"),
        html.P(f"Runs the chosen PGD options on all {len(test)} test cells (on a copy)."),
        html.Button("Evaluate the test set", id="evaluate", n_clicks=0),
        dcc.Loading(html.Div(id="evaluation")),
        html.H3("Save"),
        html.P("Writes the data shown here (with the classifier and detector trained on "
               "start) to a NEW .h5ad; existing files are never overwritten."),
        dcc.Input(id="save-path", type="text", placeholder="new_file.h5ad",
                  style={"width": "24em"}),
        html.Button("Save to a new file", id="save", n_clicks=0),
        html.Div(id="save-status"),
    ])

    @app.callback(Output({"type": "attack-box", "attack": ALL}, "style"),
                  Input("attack", "value"),
                  State({"type": "attack-box", "attack": ALL}, "id"))
    def _show_controls(attack: str, ids: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [{"display": "block" if i["attack"] == attack else "none"} for i in ids]

    @app.callback(Output("cell", "data"), Output("cell-name", "value"),
                  Input("umap", "clickData"), Input("cell-name", "value"),
                  prevent_initial_call=True)
    def _pick(click: dict[str, Any] | None, typed: str | None) -> tuple[Any, Any]:
        trigger = dash.ctx.triggered_id
        if trigger == "umap" and click and click.get("points"):
            name = str(click["points"][0].get("customdata"))
            return name, name
        return typed, dash.no_update

    @app.callback(Output("umap", "figure"), Output("cell-info", "children"),
                  Input("color", "value"), Input("cell", "data"))
    def _redraw(color: str | None, cell: str | None) -> tuple[Any, Any]:
        info: Any
        if cell and cell in session.adata.obs_names:
            row = session.adata.obs.loc[cell]
            parts = [f"selected {cell}"]
            for c in (session.label_key, "scadv_pred", "scadv_split"):
                if c in row.index:
                    parts.append(f"{c}: {row[c]}")
            info = html.Span("; ".join(parts), id="selected-cell")
        else:
            info = html.Span(f"no cell named {cell!r}", id="selected-cell",
                             style={"color": "#b00"})
        return umap_figure(session, color, cell), info

    @app.callback(Output("verdict", "children"), Output("proba", "figure"),
                  Output("proba", "style"), Output("genes", "figure"), Output("genes", "style"),
                  Input("run", "n_clicks"), State("cell", "data"), State("attack", "value"),
                  State({"type": "opt", "attack": ALL, "name": ALL}, "id"),
                  State({"type": "opt", "attack": ALL, "name": ALL}, "value"),
                  prevent_initial_call=True)
    def _attack(_: int, cell: str | None, attack: str, ids: list[dict[str, Any]],
                values: list[Any]) -> tuple[Any, ...]:
        hidden = {"display": "none"}
        try:
            result = session.attack(attack, cell, _option_values(ids, values, attack))
        except ScadvInputError as err:
            return (html.Span(f"error: {err}", style={"color": "#b00"}), {}, hidden, {},
                    hidden)
        verdict = html.Div([html.Span(result.verdict(), id="verdict-text"),
                            html.Span(f" (true label: {result.truth})" if result.truth
                                      else "")])
        return (verdict, proba_figure(result), {"display": "block"}, genes_figure(result),
                {"display": "block"})

    @app.callback(Output("evaluation", "children"), Input("evaluate", "n_clicks"),
                  State({"type": "opt", "attack": ALL, "name": ALL}, "id"),
                  State({"type": "opt", "attack": ALL, "name": ALL}, "value"),
                  prevent_initial_call=True)
    def _evaluate(_: int, ids: list[dict[str, Any]], values: list[Any]) -> Any:
        opts = _option_values(ids, values, "pgd")
        try:
            table = session.evaluate(float(opts.get("eps", 0.1)), opts)
        except ScadvInputError as err:
            return html.Span(f"error: {err}", style={"color": "#b00"})
        return frame_table(table, id="evaluation-table")

    @app.callback(Output("save-status", "children"), Input("save", "n_clicks"),
                  State("save-path", "value"), prevent_initial_call=True)
    def _save(_: int, path: str | None) -> Any:
        try:
            out = session.save(path or "")
        except ScadvInputError as err:
            return html.Span(f"not saved: {err}", style={"color": "#b00"})
        return f"saved to {out}"

    return app
