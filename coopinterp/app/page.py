"""The page: controls, results table and figures, and the callbacks that wire them to an `Explorer`.

Figures are changed with `dash.Patch` (only what moved goes to the browser), which keeps a change well under a
second.
"""
from __future__ import annotations

import time
from typing import Sequence

import dash
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from .. import plots
from ..analysis.engine import Head, check_head
from ..errors import CheckpointError
from ..runs import Run
from .explorer import Explorer
from .kinds import Scores

MODES = ("zero", "mean", "resample")
CELL = {"border": "1px solid #ccc", "padding": "3px 10px", "textAlign": "right"}
METRIC_NAMES = {"acc": "acc", "loss": "loss", "loss_first": "loss on the first copy",
                "loss_repeat": "loss on the repeat"}


def cell_id(kind: str, metric: str, evaluator: str) -> str:
    """`ablated-loss-repeated_tokens`: a results cell's id (only letters, digits, `_` and `-`)."""
    return "-".join((kind, metric, "".join(c if c.isalnum() or c in "_-" else "_" for c in evaluator)))


def results_table(explorer: Explorer, clean: dict[str, Scores], ablated: dict[str, Scores]) -> list:
    """Header and one row per batch: each metric clean, ablated and its change (red where it got worse)."""
    formats = explorer.scorer.formats
    metrics = [m for m in formats if any(m in scores for scores in clean.values())]
    names = [f"{kind} {METRIC_NAMES[m]}" for m in metrics for kind in ("clean", "ablated", "Δ")]
    body = []
    for ev, c in clean.items():
        cells = [html.Td(ev, style={**CELL, "textAlign": "left"})]
        for m in metrics:
            if m not in c:
                cells += [html.Td("", style=CELL)] * 3
                continue
            delta = ablated[ev][m] - c[m]
            worse = -delta if m == "acc" else delta
            color = "#b2182b" if worse > 0.02 else "#2166ac" if worse < -0.02 else "inherit"
            cells += [html.Td(f"{c[m]:{formats[m]}}", id=cell_id("clean", m, ev), style=CELL),
                      html.Td(f"{ablated[ev][m]:{formats[m]}}", id=cell_id("ablated", m, ev), style=CELL),
                      html.Td(f"{delta:+{formats[m]}}", id=cell_id("delta", m, ev), style={**CELL, "color": color})]
        body.append(html.Tr(cells))
    head = html.Tr([html.Th(c, style=CELL) for c in ["batch", *names]])
    return [html.Thead(head), html.Tbody(body)]


def curves_figure(explorer: Explorer) -> go.Figure:
    """The run's logged behavior curves, plus a marker trace (the ablated values) and a line at the chosen step."""
    metric = explorer.scorer.curve_metric
    try:
        fig = plots.behavior_figure(explorer.run.metrics, metric=metric)
    except (CheckpointError, plots.MissingAnalysis):
        fig = go.Figure().update_layout(title="this run logged no metrics: the ablated values alone",
                                        template=plots.TEMPLATE)
        fig.update_xaxes(type="log", title="training step (log scale)")
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="ablated, chosen step", text=[],
                             marker=dict(symbol="x", size=11, color=[]),
                             hovertemplate=f"%{{text}}: %{{y:.3f}} {metric} ablated<extra></extra>"))
    last = explorer.run.steps[-1]  # shapes widen the autorange: start hidden, inside the data
    fig.add_shape(type="line", x0=last, x1=last, y0=0, y1=1, xref="x", yref="y domain", name="chosen step",
                  line=dict(color="black", width=1.5), visible=False)
    fig.update_layout(height=420, margin=dict(t=70))
    return fig


def attention_figure() -> go.Figure:
    """One head's pattern on one sequence (empty; `render_attention` patches in the numbers and labels)."""
    fig = go.Figure(go.Heatmap(z=[], x=[], y=[], zmin=0, zmax=1, colorscale="Blues",
                               colorbar=dict(title="attention"),
                               hovertemplate="query %{y} → key %{x}<br>attention %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="query position", tickfont=dict(size=9))
    fig.update_xaxes(title="key position", tickfont=dict(size=9))
    fig.update_layout(height=600, margin=dict(t=60, l=90, b=90), template=plots.TEMPLATE, title="")
    return fig


def render(explorer: Explorer, step: int, heads: tuple[Head, ...], mode: str) -> tuple[list, dash.Patch]:
    """What an ablation change updates: the results table and the ablated markers on the curves."""
    clean, ablated = explorer.update(step, heads, mode)
    metric = explorer.scorer.curve_metric
    shown = [ev for ev in ablated if metric in ablated[ev] and step > 0]  # step 0 has no place on the log axis
    curves = dash.Patch()
    curves["data"][-1]["x"] = [step] * len(shown)
    curves["data"][-1]["y"] = [ablated[ev][metric] for ev in shown]
    curves["data"][-1]["text"] = shown
    curves["data"][-1]["marker"]["color"] = [plots.EVALUATOR_COLORS.get(ev, "#444444") for ev in shown]
    curves["layout"]["shapes"][-1].update(dict(x0=step, x1=step, visible=step > 0))
    return results_table(explorer, clean, ablated), curves


def render_attention(explorer: Explorer, step: int, heads: tuple[Head, ...], mode: str, evaluator: str, index: int,
                     head: Head) -> dash.Patch:
    """The chosen head's pattern on the chosen sequence, with the chosen heads ablated."""
    pattern, labels = explorer.attention(step, heads, mode, evaluator, index, head)
    upstream = [plots.head_label(*h) for h in heads if h[0] < head[0]]
    fig = dash.Patch()
    fig["data"][0].update(dict(z=pattern.tolist(), x=labels, y=labels))
    fig["layout"]["title"]["text"] = (
        f"{plots.head_label(*head)} on {evaluator} sequence {index}, step {step}: "
        + (f"{', '.join(upstream)} {mode}-ablated upstream" if upstream else "no head upstream ablated"))
    return fig


def make_app(explorer: Explorer, step: int | None = None, heads: Sequence[Head] = ()) -> dash.Dash:
    """The Dash app: step slider, mode picker, head grid, results table, one head's attention and the curves; it
    opens at checkpoint `step` (default: the last) with `heads` ticked."""
    run, cfg = explorer.run, explorer.cfg
    start = run.steps.index(run.check_step(step)) if step is not None else len(run.steps) - 1
    chosen = sorted({check_head(head, cfg) for head in heads})
    ticked = {layer: [f"{layer}.{h}" for at, h in chosen if at == layer] for layer in range(cfg.n_layers)}
    app = dash.Dash(__name__, title=f"coopinterp: {run.name}")
    marks = {i: {"label": f"{s:,}", "style": {"fontSize": "10px", "whiteSpace": "nowrap"}}
             for i, s in enumerate(run.steps)}
    head_grid = [html.Div([html.Span(f"layer {layer}", style={"display": "inline-block", "width": "80px"}),
                           dcc.Checklist(id=f"heads-{layer}", value=ticked[layer], inline=True,
                                         options=[{"label": plots.head_label(layer, h), "value": f"{layer}.{h}"}
                                                  for h in range(cfg.n_heads)],
                                         inputStyle={"marginRight": "3px"},
                                         labelStyle={"width": "70px", "display": "inline-block"},
                                         style={"display": "inline-block"})])
                 for layer in range(cfg.n_layers)]
    all_heads = [f"{layer}.{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    app.layout = html.Div(style={"fontFamily": "sans-serif", "maxWidth": "1200px", "margin": "auto"}, children=[
        html.H2(f"Head ablation explorer: {run.name}"),
        html.Div(f"{len(run.steps)} checkpoints, {cfg.n_layers} layers x {cfg.n_heads} heads; evaluator batches of "
                 f"n={explorer.n} sequences drawn with seed {explorer.seed} ({', '.join(explorer.batches)}: the ones "
                 "coopinterp ablate and analyze draw with the same options); ablated heads are replaced at every "
                 "position (zero, batch mean, or another sequence's value)."),
        html.Div([html.B("training step"), dcc.Slider(id="step", min=0, max=len(run.steps) - 1, step=None,
                                                       value=start, marks=marks)],
                 style={"margin": "16px 0"}),
        html.Div([html.B("ablation mode "), dcc.RadioItems(id="mode", options=list(MODES), value="mean", inline=True,
                                                            style={"display": "inline-block"})]),
        html.Div([html.B("heads to ablate together (0-indexed)"), *head_grid], style={"margin": "12px 0"}),
        html.Table(id="results", style={"borderCollapse": "collapse", "margin": "8px 0"}),
        html.Div(id="timing", style={"color": "grey", "fontSize": "12px"}),
        html.Div([html.B("attention of head "),
                  dcc.Dropdown(id="pattern-head", options=[{"label": plots.head_label(*map(int, v.split("."))),
                                                            "value": v} for v in all_heads],
                               value=all_heads[-1], clearable=False,
                               style={"width": "110px", "display": "inline-block", "verticalAlign": "middle"}),
                  html.B(" on sequence "),
                  dcc.Input(id="pattern-index", type="number", min=0, step=1, value=0, debounce=True,
                            style={"width": "70px"}),
                  html.B(" of "),
                  dcc.Dropdown(id="pattern-batch", options=list(explorer.batches), value=next(iter(explorer.batches)),
                               clearable=False,
                               style={"width": "260px", "display": "inline-block", "verticalAlign": "middle"})],
                 style={"margin": "16px 0 0"}),
        dcc.Graph(id="attention", figure=attention_figure(), config={"displaylogo": False}),
        dcc.Graph(id="curves", figure=curves_figure(explorer), config={"displaylogo": False}),
    ])
    choice = [Input("step", "value"), Input("mode", "value"),
              *[Input(f"heads-{layer}", "value") for layer in range(cfg.n_layers)]]

    def chosen_heads(head_values: Sequence[list[str]]) -> tuple[Head, ...]:
        return explorer.heads([name for values in head_values for name in values or []])

    @app.callback(Output("results", "children"), Output("curves", "figure"), Output("timing", "children"), *choice)
    def update(step_index: int, mode: str, *head_values: list[str]):
        t0 = time.perf_counter()
        out = render(explorer, run.steps[int(step_index)], chosen_heads(head_values), mode)
        return *out, f"computed in {1000 * (time.perf_counter() - t0):.0f} ms"

    @app.callback(Output("attention", "figure"), *choice, Input("pattern-batch", "value"),
                  Input("pattern-index", "value"), Input("pattern-head", "value"))
    def update_attention(step_index: int, mode: str, *rest):
        *head_values, evaluator, index, head = rest
        if index is None or not 0 <= int(index) < len(explorer.batches[evaluator]):
            return dash.no_update
        layer, h = map(int, head.split("."))
        return render_attention(explorer, run.steps[int(step_index)], chosen_heads(head_values), mode, evaluator,
                                int(index), (layer, h))

    return app


def serve(run: Run, host: str = "127.0.0.1", port: int = 8050, n: int = 512, seed: int = 0, step: int | None = None,
          heads: Sequence[Head] = (), source: str | None = None) -> None:
    """Run the app's development server (bound to localhost unless told otherwise)."""
    make_app(Explorer(run, n=n, seed=seed, source=source), step, heads).run(host=host, port=port, debug=False)
