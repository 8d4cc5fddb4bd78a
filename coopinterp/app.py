"""Interactive ablation app (Dash): pick a checkpoint, toggle heads, see every evaluator's accuracy and loss.

`Explorer` holds the state and the computations and knows nothing about Dash, so tests and timings call it
directly; `make_app` lays out the page and wires its controls to `render`. Ablations run on the batched
engine of `coopinterp.analysis.ablation` (what `ablate` runs, used by every intervention) on fixed evaluator
batches; models and results are cached, so revisiting a (step, heads, mode) is instant. Figures are changed with
`dash.Patch` (only the numbers that moved go to the browser), which keeps a change well under a second.
"""
from __future__ import annotations

import threading
import time
from functools import lru_cache, partial
from typing import Sequence

import dash
import plotly.graph_objects as go
import torch
from dash import Input, Output, dcc, html
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor
from transformer_lens.utilities import get_act_name

from . import plots
from .analysis import eval_batches
from .analysis.ablation import ablated_hidden
from .analysis.engine import Engine, Head, check_head, check_mode, replacement
from .runs import Run
from .errors import CheckpointError, ConfigError
from .task import EVALUATORS, Batch

MODES = ("zero", "mean", "resample")
CELL = {"border": "1px solid #ccc", "padding": "3px 10px", "textAlign": "right"}
PATTERN_ROW_PX, PATTERN_GAP_PX = 140, 44  # height of one layer's row of pattern heatmaps, and the gap between rows


def position_labels(context_pairs: int) -> list[str]:
    """`x0 l0 x1 l1 ... xq`: exemplar i at 2i, its label at 2i + 1, the query last."""
    return [f"{kind}{i}" for i in range(context_pairs) for kind in ("x", "l")] + ["xq"]


class Explorer:
    """A run, fixed evaluator batches and one example sequence: ablation results and patterns per choice."""

    def __init__(self, run: Run, n: int = 512, seed: int = 0, example: int = 0):
        if n < 2:
            raise ConfigError(f"n must be >= 2, got {n}")
        if not 0 <= example < n:
            raise ConfigError(f"example must be in [0, {n - 1}], got {example}")
        self.run = run
        run.cache_size = max(run.cache_size, len(run.steps))  # every checkpoint's model stays loaded once seen
        self.cfg = run.config.model
        self.batches = eval_batches(run.config.task, n, seed)
        self.seed = seed
        self.example = example
        self.engine = lru_cache(maxsize=None)(self._engine)
        self.clean_z = lru_cache(maxsize=None)(self._clean_z)
        self.evaluate = lru_cache(maxsize=512)(self._evaluate)
        self.patterns = lru_cache(maxsize=512)(self._patterns)
        self.lock = threading.Lock()  # the server may run callbacks in parallel threads; models are shared

    def heads(self, names: Sequence[str]) -> tuple[Head, ...]:
        """Checklist values 'layer.head' -> sorted (layer, head) tuples."""
        heads = sorted({(int(layer), int(head)) for layer, head in (name.split(".") for name in names)})
        for layer, head in heads:
            if not (0 <= layer < self.cfg.n_layers and 0 <= head < self.cfg.n_heads):
                raise ConfigError(f"no head {layer}.{head} in this model")
        return tuple(heads)

    def _engine(self, step: int) -> Engine:
        return Engine(self.run.model(self.run.check_step(step)))

    @torch.no_grad()
    def _clean_z(self, step: int) -> list[Float[Tensor, "n pos head d_head"]]:
        """Each layer's clean `hook_z` on the train batch (the last layer's at the query only)."""
        return self.engine(step).forward(self.run.model(step).residual(self.batches["train"]))[1]

    @torch.no_grad()
    def _evaluate(self, step: int, heads: tuple[Head, ...], mode: str) -> dict[str, dict[str, float]]:
        """evaluator -> acc and loss with `heads` ablated together (the clean model for no heads).

        `ablated_hidden` + `Engine.score` is `ablate` followed by accuracy and loss, with the unembedding
        fused into the scoring: ~2x faster at 12,800 labels, which keeps a change well under a second.
        """
        check_mode(mode)
        model, engine = self.run.model(self.run.check_step(step)), self.engine(step)
        out = {}
        for ev, batch in self.batches.items():
            acc, ce = engine.score(ablated_hidden(model, batch, [list(heads)], mode, engine=engine), batch).values()
            out[ev] = {"acc": acc.item(), "loss": ce.item()}
        return out

    @torch.no_grad()
    def _patterns(self, step: int, heads: tuple[Head, ...], mode: str) -> Float[Tensor, "layer head q k"]:
        """Every head's attention on the example `train` sequence, with `heads` ablated as `ablate` does.

        Only ablated heads below the last layer can change a pattern; their replacement comes from the
        clean train batch, so mean and resample mean what they mean in `ablate`.
        """
        model = self.run.model(self.run.check_step(step))
        early = [(layer, head) for layer, head in heads if layer < self.cfg.n_layers - 1]
        values = [replacement(z, mode)[self.example:self.example + 1] for z in self.clean_z(step)[:-1]] if early else []

        def put(z: Tensor, hook, layer: int) -> Tensor:
            picked = [h for l, h in early if l == layer]
            z[:, :, picked] = values[layer][:, :, picked]
            return z

        names = [get_act_name("pattern", layer) for layer in range(self.cfg.n_layers)]
        hooks = [(get_act_name("z", layer), partial(put, layer=layer)) for layer in sorted({l for l, _ in early})]
        with model.bridge.hooks(fwd_hooks=hooks):
            _, cache = model.run_with_cache(_rows(self.batches["train"], self.example), names_filter=names)
        return torch.stack([cache[name][0] for name in names])

    def update(self, step: int, heads: tuple[Head, ...], mode: str) -> tuple[dict, dict, Float[Tensor, "layer head q k"]]:
        """Clean results, ablated results and the example's patterns at one (step, heads, mode)."""
        with self.lock:
            clean = self.evaluate(step, (), "zero")
            return clean, self.evaluate(step, heads, mode) if heads else clean, self.patterns(step, heads, mode)


def _rows(batch: Batch, i: int) -> Batch:
    return Batch(*(t[i:i + 1] for t in (batch.exemplars, batch.labels, batch.query_label, batch.target,
                                         batch.target_pair, batch.same_class_pair)), batch.evaluator)


def attention_figure(explorer: Explorer) -> go.Figure:
    """The grid of per-head pattern heatmaps (zeros; `render` patches in the numbers)."""
    cfg, labels = explorer.cfg, position_labels(explorer.run.config.task.context_pairs)
    titles = [plots.head_label(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    height = PATTERN_ROW_PX * cfg.n_layers + 90
    fig = make_subplots(cfg.n_layers, cfg.n_heads, subplot_titles=titles,  # fixed gaps fit any number of heads
                        horizontal_spacing=min(0.012, 0.5 / cfg.n_heads), vertical_spacing=PATTERN_GAP_PX / height)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            fig.add_trace(go.Heatmap(z=[[0.0] * len(labels)] * len(labels), x=labels, y=labels, zmin=0, zmax=1,
                                     coloraxis="coloraxis",
                                     hovertemplate="query %{y} → key %{x}<br>attention %{z:.2f}<extra></extra>"),
                          row=layer + 1, col=head + 1)
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9))
    fig.update_xaxes(tickfont=dict(size=9), tickangle=0)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=height, margin=dict(t=60, l=40, r=10, b=20), template=plots.TEMPLATE,
                      coloraxis=dict(colorscale="Blues", cmin=0, cmax=1, colorbar=dict(title="attention", len=0.8)),
                      title="Attention of one train sequence (rows: query position, columns: key position)")
    return fig


def curves_figure(explorer: Explorer) -> go.Figure:
    """The run's logged behavior curves, plus a marker trace (ablated accuracy) and a line at the chosen step."""
    try:
        fig = plots.behavior_figure(explorer.run.metrics)
    except (CheckpointError, plots.MissingAnalysis):
        fig = go.Figure().update_layout(title="no metrics.parquet in this run: no logged behavior curves",
                                        template=plots.TEMPLATE)
        fig.update_xaxes(type="log", title="training step (log scale)")
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="ablated, chosen step",
                             marker=dict(symbol="x", size=11, color=[plots.EVALUATOR_COLORS[ev] for ev in EVALUATORS]),
                             hovertemplate="%{text}: %{y:.3f} ablated<extra></extra>", text=[]))
    last = explorer.run.steps[-1]  # shapes widen the autorange: start hidden, inside the data
    fig.add_shape(type="line", x0=last, x1=last, y0=0, y1=1, xref="x", yref="y domain", name="chosen step",
                  line=dict(color="black", width=1.5), visible=False)
    fig.update_layout(height=420, margin=dict(t=70))
    return fig


def results_table(clean: dict[str, dict[str, float]], ablated: dict[str, dict[str, float]]) -> list:
    """Header and one row per evaluator; the ablated cells have ids `acc-{evaluator}` and `loss-{evaluator}`."""
    head = html.Tr([html.Th(c, style=CELL) for c in ("evaluator", "clean acc", "ablated acc", "Δ acc",
                                                     "clean loss", "ablated loss")])
    body = []
    for ev, c in clean.items():
        a = ablated[ev]
        delta = a["acc"] - c["acc"]
        color = "#b2182b" if delta < -0.02 else "#2166ac" if delta > 0.02 else "inherit"
        body.append(html.Tr([html.Td(ev, style=CELL), html.Td(f"{c['acc']:.3f}", style=CELL),
                             html.Td(f"{a['acc']:.3f}", id=f"acc-{ev}", style=CELL),
                             html.Td(f"{delta:+.3f}", style={**CELL, "color": color}),
                             html.Td(f"{c['loss']:.3f}", style=CELL),
                             html.Td(f"{a['loss']:.3f}", id=f"loss-{ev}", style=CELL)]))
    return [html.Thead(head), html.Tbody(body)]


def render(explorer: Explorer, step: int, heads: tuple[Head, ...], mode: str) -> tuple[list, dash.Patch, dash.Patch]:
    """Everything one change updates: the results table and patches of the two figures."""
    clean, ablated, patterns = explorer.update(step, heads, mode)
    cfg = explorer.cfg
    attention = dash.Patch()
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            i = layer * cfg.n_heads + head
            attention["data"][i]["z"] = patterns[layer, head].tolist()
            label = plots.head_label(layer, head)
            attention["layout"]["annotations"][i]["text"] = f"<b>{label} ✕</b>" if (layer, head) in heads else label
    curves = dash.Patch()
    shown = [ev for ev in EVALUATORS if ev in ablated and step > 0]  # step 0 has no place on the log axis
    curves["data"][-1]["x"] = [step] * len(shown)
    curves["data"][-1]["y"] = [ablated[ev]["acc"] for ev in shown]
    curves["data"][-1]["text"] = shown
    curves["layout"]["shapes"][-1].update(dict(x0=step, x1=step, visible=step > 0))
    return results_table(clean, ablated), curves, attention


def make_app(explorer: Explorer, step: int | None = None, heads: Sequence[Head] = ()) -> dash.Dash:
    """The Dash app: step slider, mode picker, head grid, results table, attention grid and curves; it opens at
    checkpoint `step` (default: the last) with `heads` ticked."""
    run, cfg = explorer.run, explorer.cfg
    start = run.steps.index(run.check_step(step)) if step is not None else len(run.steps) - 1
    chosen = sorted({check_head(head, cfg) for head in heads})
    ticked = {layer: [f"{layer}.{h}" for at, h in chosen if at == layer] for layer in range(cfg.n_layers)}
    app = dash.Dash(__name__, title=f"coopinterp: {run.name}")
    marks = {i: {"label": f"{s:,}", "style": {"fontSize": "10px", "whiteSpace": "nowrap"}}
             for i, s in enumerate(run.steps)}
    head_grid = [html.Div([html.Span(f"layer {layer}" + (" (paper's Layer 1)" if layer == 0 else ""),
                                     style={"display": "inline-block", "width": "200px"}),
                           dcc.Checklist(id=f"heads-{layer}", value=ticked[layer], inline=True,
                                         options=[{"label": plots.head_label(layer, h), "value": f"{layer}.{h}"}
                                                  for h in range(cfg.n_heads)],
                                         inputStyle={"marginRight": "3px"},
                                         labelStyle={"width": "70px", "display": "inline-block"},
                                         style={"display": "inline-block"})])
                 for layer in range(cfg.n_layers)]
    app.layout = html.Div(style={"fontFamily": "sans-serif", "maxWidth": "1200px", "margin": "auto"}, children=[
        html.H2(f"Head ablation explorer: {run.name}"),
        html.Div(f"{len(run.steps)} checkpoints; evaluator batches of n={len(explorer.batches['train'])} sequences "
                 f"drawn with seed {explorer.seed} (the ones coopinterp ablate and analyze draw by default); "
                 "ablated heads are replaced at every position (zero, batch mean, or another sequence's value)."),
        html.Div([html.B("training step"), dcc.Slider(id="step", min=0, max=len(run.steps) - 1, step=None,
                                                       value=start, marks=marks)],
                 style={"margin": "16px 0"}),
        html.Div([html.B("ablation mode "), dcc.RadioItems(id="mode", options=list(MODES), value="mean", inline=True,
                                                            style={"display": "inline-block"})]),
        html.Div([html.B("heads to ablate (0-indexed)"), *head_grid], style={"margin": "12px 0"}),
        html.Table(id="results", style={"borderCollapse": "collapse", "margin": "8px 0"}),
        html.Div(id="timing", style={"color": "grey", "fontSize": "12px"}),
        dcc.Graph(id="attention", figure=attention_figure(explorer), config={"displaylogo": False}),
        dcc.Graph(id="curves", figure=curves_figure(explorer), config={"displaylogo": False}),
    ])

    @app.callback(Output("results", "children"), Output("curves", "figure"), Output("attention", "figure"),
                  Output("timing", "children"), Input("step", "value"), Input("mode", "value"),
                  *[Input(f"heads-{layer}", "value") for layer in range(cfg.n_layers)])
    def update(step_index: int, mode: str, *head_values: list[str]):
        t0 = time.perf_counter()
        heads = explorer.heads([name for values in head_values for name in values or []])
        out = render(explorer, run.steps[int(step_index)], heads, mode)
        return *out, f"computed in {1000 * (time.perf_counter() - t0):.0f} ms"

    return app


def serve(run: Run, host: str = "127.0.0.1", port: int = 8050, n: int = 512, seed: int = 0, step: int | None = None,
          heads: Sequence[Head] = ()) -> None:
    """Run the app's development server (bound to localhost unless told otherwise)."""
    make_app(Explorer(run, n=n, seed=seed), step, heads).run(host=host, port=port, debug=False)
