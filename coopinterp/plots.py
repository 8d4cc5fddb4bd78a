"""Plotly figures of circuit evolution, drawn from the tidy per-step table, and their offline HTML/PNG export.

Every figure function takes a tidy table (tables.COLUMNS) and returns a `go.Figure`; a table without the rows
a figure needs raises `MissingAnalysis` (a CoopError) naming the analysis to run. Over-training figures put
steps on a log x axis (step 0 cannot sit on it and is left out) and mark two phases found from the behavior
rows: where ICL accuracy peaks and where CIWL accuracy first overtakes it after that peak.

Heads are labelled `L{layer}H{head}`, 0-indexed like the rest of coopinterp: L0 is the paper's "Layer 1".
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .errors import CoopError
from .phases import accuracy_curves, find_phases
from .tables import atomic_path

EVALUATOR_COLORS = {"train": "#444444", "icl": "#1f77b4", "ciwl": "#d62728", "flip": "#9467bd", "iwl": "#2ca02c"}
HEAD_COLORS = qualitative.Dark24  # 16 heads, 16 distinct colours: a head keeps its colour in every figure
HEAD_AXIS = "head (L0 = paper's Layer 1)"
ICL_EMERGED = 0.6  # in-context chance is 0.5: below this ICL never emerged and has no peak to mark
TEMPLATE = "plotly_white"


class MissingAnalysis(CoopError):
    """The table lacks the rows a figure needs."""


@dataclass(frozen=True)
class Phase:
    """A phase mark: a step found from the behavior curves, and what happens there."""

    name: str
    step: int
    seqs_seen: int
    label: str


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


X_AXES = ("step", "seqs_seen")


def check_x(x: str) -> str:
    if x not in X_AXES:
        raise CoopError(f"x must be 'step' or 'seqs_seen', got {x!r}")
    return x


def _x_title(x: str) -> str:
    return {"step": "training step", "seqs_seen": "sequences seen"}[check_x(x)] + " (log scale)"


def select(table: pd.DataFrame, analysis: str, **equal: object) -> pd.DataFrame:
    """Rows of one analysis (and exact column values); MissingAnalysis if there are none."""
    rows = table[table.analysis == analysis]
    for column, value in equal.items():
        rows = rows[rows[column] == value]
    if rows.empty:
        what = ", ".join(f"{k}={v}" for k, v in equal.items())
        raise MissingAnalysis(f"no {analysis!r} rows{f' with {what}' if what else ''} in the table; "
                              f"run `coopinterp analyze RUN --analyses {analysis}`")
    return rows


def behavior(table: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Behavior rows as a step x evaluator frame; duplicates keep the first row."""
    rows = select(table, "behavior", metric=metric).drop_duplicates(["step", "evaluator"])
    wide = rows.pivot(index="step", columns="evaluator", values="value").sort_index()
    wide.columns = wide.columns.astype(str)
    return wide


def phases(table: pd.DataFrame) -> list[Phase]:
    """The ICL peak and the first step after it where CIWL accuracy exceeds ICL accuracy (`phases.find_phases`).

    Finely logged curves (>= 50 steps, e.g. metrics.parquet) are smoothed over 5 evaluations first; none if ICL
    never rose clearly above chance.
    """
    rows = table[(table.analysis == "behavior") & (table.metric == "acc")]
    if rows.empty:
        return []
    curves = accuracy_curves(table, smooth=5 if rows.step.nunique() >= 50 else 1)
    if not {"icl", "ciwl", "flip"} <= set(curves.columns) or curves.icl.max() < ICL_EMERGED:
        return []
    found = find_phases(curves)
    seqs = rows.drop_duplicates("step").set_index("step").seqs_seen
    out = [Phase("icl_peak", found.icl_peak_step, int(seqs[found.icl_peak_step]),
                 f"ICL peak (acc {found.icl_peak:.2f})")]
    if found.ciwl_overtake_step is not None:
        step = found.ciwl_overtake_step
        out.append(Phase("ciwl_overtakes", step, int(seqs[step]), "CIWL overtakes ICL"))
    return out


def _subplot_axes(fig: go.Figure) -> list[tuple[str, str]]:
    """The (x axis, y axis) reference of every subplot holding a trace, in trace order."""
    return list(dict.fromkeys((t.xaxis or "x", t.yaxis or "y") for t in fig.data))


def mark_phases(fig: go.Figure, marks: Sequence[Phase], x: str = "step",
                index: Callable[[float], float] | None = None) -> go.Figure:
    """A dotted vertical line per phase on every subplot, labelled inside the top row's subplots.

    On a log axis (`index` None) plotly places shapes by value but annotations by log10(value); on a
    per-checkpoint heatmap axis `index` maps a step to its (fractional) column.
    """
    xs = [float(v) for t in fig.data if t.x is not None for v in t.x if index or float(v) > 0]
    if not xs:
        return fig
    axes = _subplot_axes(fig)
    top = max(_domain_top(fig, ya) for _, ya in axes)
    lo, hi = (min(xs), max(xs)) if index else (math.log10(min(xs)), math.log10(max(xs)))
    if marks and index is None:
        for _, ya in axes:
            if _domain_top(fig, ya) == top:
                _headroom(fig, ya)
    for i, mark in enumerate(marks):
        value = getattr(mark, x)
        line_x, label_x = (index(value), index(value)) if index else (value, math.log10(value))
        if not math.isfinite(line_x):
            continue
        # Text on the side with more room: plotly widens an axis's autorange to fit its annotations.
        left = hi == lo or (label_x - lo) / (hi - lo) < 0.6
        for xa, ya in axes:
            fig.add_shape(type="line", x0=line_x, x1=line_x, y0=0, y1=1, xref=xa, yref=f"{ya} domain",
                          line=dict(color="grey", dash="dot", width=1.5))
            if _domain_top(fig, ya) == top:
                fig.add_annotation(x=label_x, y=1, xref=xa, yref=f"{ya} domain", text=mark.label, showarrow=False,
                                   xanchor="left" if left else "right", xshift=3 if left else -3, yanchor="top",
                                   yshift=-15 * i, font=dict(size=11, color="dimgrey"),
                                   bgcolor="rgba(255,255,255,0.7)")
    return fig


def _headroom(fig: go.Figure, yaxis: str, share: float = 0.16) -> None:
    """Extend a y axis upwards so that the phase labels sit above the data, not on it."""
    layout_axis = fig.layout[yaxis.replace("y", "yaxis", 1)]
    if layout_axis.range:
        lo, hi = layout_axis.range
    else:
        ys = [float(v) for t in fig.data if (t.yaxis or "y") == yaxis and t.y is not None for v in t.y
              if v is not None and math.isfinite(float(v))]
        if not ys:
            return
        pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
        lo, hi = min(ys) - pad, max(ys) + pad
    layout_axis.range = [lo, hi + share * (hi - lo)]


def _domain_top(fig: go.Figure, yaxis: str) -> float:
    domain = fig.layout[yaxis.replace("y", "yaxis", 1)].domain
    return float(domain[1]) if domain else 1.0


def _layout(fig: go.Figure, title: str, height: int = 450) -> go.Figure:
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top"), template=TEMPLATE, height=height,
                      margin=dict(t=90, l=70, r=30, b=60),
                      legend=dict(groupclick="togglegroup", tracegroupgap=0, font=dict(size=11)))
    return fig


def _positive(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    return rows[rows[check_x(x)] > 0].sort_values(x)


def behavior_figure(table: pd.DataFrame, metric: str = "acc", x: str = "step",
                    marks: Sequence[Phase] | None = None) -> go.Figure:
    """Each evaluator's accuracy (or loss) over training: the transience picture. Holdout evaluators dashed."""
    rows = _positive(select(table, "behavior", metric=metric), x)
    marks = phases(table) if marks is None else marks
    fig = go.Figure()
    evaluators = list(dict.fromkeys(rows.evaluator.astype(str)))
    for ev in sorted(evaluators, key=lambda e: (e.split("/")[0] not in EVALUATOR_COLORS, "/" in e)):
        g = rows[rows.evaluator == ev]
        base = ev.split("/")[0]
        fig.add_trace(go.Scatter(x=g[x], y=g.value, name=ev.replace("/", " "), mode="lines",
                                 line=dict(color=EVALUATOR_COLORS.get(base), dash="dash" if "/" in ev else None),
                                 hovertemplate=f"{ev}<br>{x} %{{x}}<br>{metric} %{{y:.3f}}<extra></extra>"))
    y_title = "accuracy" if metric == "acc" else "cross-entropy loss (nats)"
    fig.update_xaxes(type="log", title=_x_title(x))
    fig.update_yaxes(title=y_title, range=[0, 1.02] if metric == "acc" else None)
    _layout(fig, f"Behavior: evaluator {'accuracy' if metric == 'acc' else 'loss'} over training")
    fig.update_layout(legend_title_text="evaluator")
    return mark_phases(fig, marks, x)


def head_color(layer: int, head: int, n_heads: int = 8) -> str:
    return HEAD_COLORS[(layer * n_heads + head) % len(HEAD_COLORS)]


def _head_lines(fig: go.Figure, rows: pd.DataFrame, x: str, row: int, col: int, show_legend: bool,
                y_hover: str, dash_by_layer: bool = False, legend: str = "legend") -> None:
    n_heads = int(rows["head"].max()) + 1 if len(rows) else 8
    for (layer, head), g in rows.groupby(["layer", "head"], sort=True):
        label = head_label(int(layer), int(head))
        fig.add_trace(go.Scatter(x=g[x], y=g.value, name=label, legendgroup=label, showlegend=show_legend,
                                 legend=legend, mode="lines+markers", marker=dict(size=4),
                                 line=dict(color=head_color(int(layer), int(head), n_heads),
                                           dash="dot" if dash_by_layer and int(layer) == 0 else None),
                                 hovertemplate=f"{label}<br>{x} %{{x}}<br>{y_hover} %{{y:.3f}}<extra></extra>"),
                      row=row, col=col)


def _panel_legend(fig: go.Figure, name: str, yaxis: str, title: str) -> None:
    """A legend beside one subplot (plotly >= 5.15 lays out several legends): each panel names its own lines."""
    top = _domain_top(fig, yaxis)
    fig.update_layout({name: dict(x=1.01, xanchor="left", y=top, yanchor="top", title_text=title,
                                  font=dict(size=10), tracegroupgap=0, groupclick="toggleitem")})


def attention_figure(table: pd.DataFrame, layer: int, metrics: Sequence[str], titles: Sequence[str],
                     title: str, x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Attention scores of one layer's heads over training, one subplot per metric."""
    rows = select(table, "attention", layer=layer)
    fig = make_subplots(1, len(metrics), subplot_titles=list(titles), shared_yaxes=True, horizontal_spacing=0.04)
    for i, metric in enumerate(metrics):
        part = _positive(select(rows, "attention", metric=metric), x)
        _head_lines(fig, part, x, 1, i + 1, show_legend=i == 0, y_hover=metric)
    fig.update_xaxes(type="log", title=_x_title(x))
    fig.update_yaxes(title="attention weight", row=1, col=1)
    _layout(fig, title)
    fig.update_layout(legend_title_text=HEAD_AXIS)
    return mark_phases(fig, phases(table) if marks is None else marks, x)


def layer0_figure(table: pd.DataFrame, x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Layer 0 (paper's Layer 1): previous-token vs self attention at label positions, per head."""
    return attention_figure(table, 0, ("prev_token_score", "self_score"),
                            ("previous-token score: label attends to its exemplar",
                             "self score: label attends to itself"),
                            "Layer 0 (paper's Layer 1): previous-token vs self attention", x, marks)


def layer1_figure(table: pd.DataFrame, x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Layer 1 (paper's Layer 2): induction strength (flip) and skip-trigram score (ciwl), per head."""
    fig = attention_figure(table, 1, ("induction_strength", "skip_trigram_score"),
                           ("induction strength (flip): same-class label minus other",
                            "skip-trigram score (ciwl): true label minus other"),
                           "Layer 1 (paper's Layer 2): induction vs skip-trigram attention at the query", x, marks)
    fig.update_yaxes(title="attention weight difference", row=1, col=1)
    return fig


def circuit_figure(table: pd.DataFrame, x: str = "step", behavior_table: pd.DataFrame | None = None) -> go.Figure:
    """The circuit-evolution summary: behavior, then each circuit's attention signature, on one shared step axis."""
    behavior_table = table if behavior_table is None else behavior_table
    panels = [("prev_token_score", 0, "layer 0 previous-token score"),
              ("induction_strength", 1, "layer 1 induction strength (flip)"),
              ("skip_trigram_score", 1, "layer 1 skip-trigram score (ciwl)")]
    titles = ["evaluator accuracy"] + [t for _, _, t in panels]
    fig = make_subplots(len(titles), 1, shared_xaxes=True, vertical_spacing=0.045, subplot_titles=titles)
    for trace in behavior_figure(behavior_table, x=x, marks=[]).data:
        fig.add_trace(trace, row=1, col=1)
    rows = select(table, "attention")
    legends = ["legend2", "legend3", "legend3"]  # one legend per panel; both layer-1 panels share theirs
    for i, (metric, layer, _) in enumerate(panels):
        part = _positive(select(rows, "attention", metric=metric, layer=layer), x)
        _head_lines(fig, part, x, i + 2, 1, show_legend=i < 2, y_hover=metric, legend=legends[i])
    fig.update_xaxes(type="log")
    fig.update_xaxes(title=_x_title(x), row=len(titles), col=1)
    fig.update_yaxes(title="accuracy", range=[0, 1.02], row=1, col=1)
    for r in range(2, len(titles) + 1):
        fig.update_yaxes(title="attention weight", row=r, col=1)
    _layout(fig, "Circuit evolution: behavior and attention signatures over training", height=1050)
    fig.update_layout(margin=dict(r=140))
    _panel_legend(fig, "legend", "y", "evaluator")
    _panel_legend(fig, "legend2", "y2", "layer-0 head")
    _panel_legend(fig, "legend3", "y3", "layer-1 head")
    return mark_phases(fig, phases(behavior_table), x)


def llc_figure(table: pd.DataFrame, x: str = "step", behavior_table: pd.DataFrame | None = None) -> go.Figure:
    """The learning coefficient over training beside behavior: accuracy, the whole model's LLC (bars: std over
    SGLD chains), each head's refined LLC; one shared step axis, the phase marks of the accuracy curves."""
    behavior_table = table if behavior_table is None else behavior_table
    whole = _positive(select(table, "llc", metric="llc").merge(
        select(table, "llc", metric="llc_std")[["step", "value"]].rename(columns={"value": "std"}), on="step"), x)
    heads = _positive(select(table, "llc", metric="rllc"), x) if (table.metric == "rllc").any() else None
    titles = ["evaluator accuracy", "LLC of the whole model (mean ± std over chains)"]
    titles += [] if heads is None else ["refined LLC of each head (its W_Q, W_K, W_V, W_O; log scale, values ≤ 0 "
                                        "not drawn)"]
    fig = make_subplots(len(titles), 1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles)
    with_behavior = (behavior_table.analysis == "behavior").any()
    if with_behavior:
        for trace in behavior_figure(behavior_table, x=x, marks=[]).data:
            fig.add_trace(trace, row=1, col=1)
    fig.add_trace(go.Scatter(x=whole[x], y=whole.value, error_y=dict(type="data", array=whole["std"]),
                             mode="lines+markers", name="LLC", legend="legend2", line=dict(color="black"),
                             hovertemplate=f"{x} %{{x}}<br>LLC %{{y:.2f}}<extra></extra>"), row=2, col=1)
    if heads is not None:
        _head_lines(fig, heads, x, 3, 1, show_legend=True, y_hover="rLLC", dash_by_layer=True, legend="legend3")
    fig.update_xaxes(type="log")
    fig.update_xaxes(title=_x_title(x), row=len(titles), col=1)
    fig.update_yaxes(title="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title="LLC", row=2, col=1)
    if heads is not None:
        fig.update_yaxes(title="refined LLC", type="log", row=3, col=1)
    _layout(fig, "Learning coefficient over training (SGLD estimates on the training distribution)",
            height=330 * len(titles) + 60)
    fig.update_layout(margin=dict(r=140))
    _panel_legend(fig, "legend", "y", "evaluator")
    _panel_legend(fig, "legend2", "y2", "estimate")
    if heads is not None:
        _panel_legend(fig, "legend3", "y3", "head (L0 dotted)")
    return mark_phases(fig, phases(behavior_table) if with_behavior else [], x)


def _step_axis(steps: Sequence[int]) -> Callable[[float], float]:
    """Map a step to a (fractional) column index of a step-per-column heatmap, interpolating in log(step);
    NaN outside the checkpoints."""
    logs = np.log10(np.maximum(np.asarray(steps, dtype=float), 1.0))
    return lambda step: float(np.interp(math.log10(max(step, 1.0)), logs, np.arange(len(steps)), np.nan, np.nan))


def head_heatmap(table: pd.DataFrame, analysis: str, metric: str, evaluator: str | None = None,
                 component: str | None = None, marks: Sequence[Phase] | None = None,
                 title: str | None = None, log_floor: float | None = None) -> go.Figure:
    """Any per-head metric as a head x checkpoint heatmap (one column per checkpoint, step 0 included).

    `log_floor`: colour by log10 of the value, values below the floor (noise around 0, negatives) at the floor;
    for metrics spanning decades, such as the refined LLC. Hover shows the value itself.
    """
    rows = select(table, analysis, metric=metric)
    rows = rows[rows.layer.notna() & rows["head"].notna() & rows.src_head.isna()]
    for column, value in (("evaluator", evaluator), ("component", component)):
        present = sorted(rows[column].dropna().astype(str).unique())
        if value is not None:
            rows = select(rows, analysis, **{column: value})
        elif len(present) > 1:
            raise CoopError(f"{analysis}/{metric} has several {column}s ({', '.join(present)}); pick one")
    if rows.empty:
        raise MissingAnalysis(f"no per-head {analysis}/{metric} rows in the table")
    rows = rows.drop_duplicates(["step", "layer", "head"])
    grid = rows.pivot(index=["layer", "head"], columns="step", values="value").sort_index()
    steps = [int(s) for s in grid.columns]
    labels = [head_label(int(l), int(h)) for l, h in grid.index]
    values = grid.to_numpy(dtype=float)
    colorbar = dict(title=metric)
    z = values
    if log_floor is not None:
        z = np.log10(np.maximum(values, log_floor))
        decades = np.arange(math.floor(np.nanmin(z)), math.ceil(np.nanmax(z)) + 1)
        colorbar.update(tickvals=decades, ticktext=[f"{10.0 ** k:g}" for k in decades],
                        title=f"{metric} (log; ≤{log_floor:g} at the floor)")
    custom = np.dstack([np.tile(steps, (len(labels), 1)), values])
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(steps))), y=labels, colorscale="Viridis", colorbar=colorbar,
                               customdata=custom,
                               hovertemplate="%{y}<br>step %{customdata[0]}<br>value %{customdata[1]:.4g}"
                                             "<extra></extra>"))
    fig.update_xaxes(title="training step (one column per checkpoint)", tickmode="array",
                     tickvals=list(range(len(steps))), ticktext=[f"{s:,}" for s in steps], tickangle=-45)
    fig.update_yaxes(title=HEAD_AXIS, autorange="reversed")
    what = " ".join(str(v) for v in (evaluator, component) if v is not None)
    _layout(fig, title or f"{analysis}/{metric}{f' ({what})' if what else ''} per head over training",
            height=max(420, 26 * len(labels) + 200))
    return mark_phases(fig, phases(table) if marks is None else marks, "step", _step_axis(steps))


def _clean(table: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """The unablated metric per (step, evaluator) from the table's own behavior rows, if it has them."""
    try:
        return behavior(table, metric)
    except MissingAnalysis:
        return None


def ablation_figure(table: pd.DataFrame, evaluators: Sequence[str] = ("icl", "ciwl"), mode: str = "mean",
                    metric: str = "acc", x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Each head ablated alone: change in each evaluator's metric vs the clean model, over training."""
    rows = _positive(select(table, "ablation", metric=metric, component=mode), x)
    clean = _clean(table, metric)
    unit = "accuracy" if metric == "acc" else "loss (nats)"
    fig = make_subplots(1, len(evaluators), horizontal_spacing=0.07, subplot_titles=list(evaluators))
    for i, ev in enumerate(evaluators):
        part = select(rows, "ablation", evaluator=ev).copy()
        delta = clean is not None and ev in clean
        if delta:
            part["value"] = part.value.to_numpy() - clean[ev].reindex(part.step).to_numpy()
        _head_lines(fig, part, x, 1, i + 1, show_legend=i == 0, y_hover=f"Δ{metric}" if delta else metric,
                    dash_by_layer=True)  # each panel keeps its own y range: no head's line is clipped
    fig.update_xaxes(type="log", title=_x_title(x))
    y = f"change in {unit} (ablated − clean)" if clean is not None else f"{unit} with the head ablated"
    fig.update_yaxes(title=y, row=1, col=1)
    fig.add_hline(y=0, line=dict(color="black", width=0.8))
    _layout(fig, f"Head ablation ({mode}), one head at a time: effect on {metric} per evaluator", height=560)
    fig.update_layout(legend_title_text="head (dotted: layer 0)", legend_font_size=10)
    return mark_phases(fig, phases(table) if marks is None else marks, x)


def _matrix_slider(fig: go.Figure, steps: Sequence[int], per_step: int, marks: Sequence[Phase]) -> go.Figure:
    """A step slider showing the `per_step` traces of one step at a time (traces added step by step)."""
    def distance(step: int, mark: Phase) -> float:
        return abs(math.log10(max(step, 1)) - math.log10(max(mark.step, 1)))

    nearest = {}  # a phase names the checkpoint nearest to it, if that one lies within a factor 1.4 of it
    for mark in marks:
        step = min(steps, key=lambda s: distance(s, mark))
        if distance(step, mark) < 0.15:
            nearest[step] = mark.label
    slider_steps = []
    for i, step in enumerate(steps):
        visible = [j // per_step == i for j in range(len(fig.data))]
        label = f"{step:,}" + (f" (≈ {nearest[step]})" if step in nearest else "")
        slider_steps.append(dict(method="restyle", args=[{"visible": visible}], label=label))
    # Open (and export as a still) at the checkpoint nearest the ICL peak, else the first mark: the circuit both
    # strategies build is in place there, while the last checkpoint may show a saturated, blank matrix.
    marked = [i for i, step in enumerate(steps) if step in nearest]
    peak = [i for i in marked if nearest[steps[i]].startswith("ICL peak")]
    shown = (peak or marked or [len(steps) - 1])[0]
    for j, trace in enumerate(fig.data):
        trace.visible = j // per_step == shown
    fig.update_layout(sliders=[dict(active=shown, steps=slider_steps, pad=dict(t=60),
                                     currentvalue=dict(prefix="training step: "))])
    return fig


def composition_figure(table: pd.DataFrame, marks: Sequence[Phase] | None = None) -> go.Figure:
    """Q/K/V composition of each layer-0 head into each layer-1 head, one checkpoint at a time (slider)."""
    rows = select(table, "composition")
    pairs = rows[(rows.src_layer == 0) & (rows.layer == 1)]
    if pairs.empty:
        raise MissingAnalysis("no layer-0 -> layer-1 composition rows in the table")
    baselines = rows[rows.metric.str.endswith("_baseline")].groupby("metric").value.mean()
    modes = [m for m in "qkv" if (pairs.metric == f"{m}_composition").any()]
    titles = [f"{m.upper()}-composition (random ≈ {baselines.get(f'{m}_composition_baseline', float('nan')):.2f})"
              for m in modes]
    fig = make_subplots(1, len(modes), subplot_titles=titles, horizontal_spacing=0.06)
    steps = sorted(int(s) for s in pairs.step.unique())
    zmax = float(pairs.value.max())
    for step in steps:
        at = pairs[pairs.step == step]
        for i, m in enumerate(modes):
            grid = at[at.metric == f"{m}_composition"].pivot(index="src_head", columns="head", values="value")
            fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=[head_label(1, int(h)) for h in grid.columns],
                                     y=[head_label(0, int(h)) for h in grid.index], zmin=0, zmax=zmax,
                                     colorscale="Viridis", showscale=i == 0, colorbar=dict(title="score"),
                                     hovertemplate="%{y} → %{x}<br>score %{z:.3f}<extra></extra>"),
                          row=1, col=i + 1)
    fig.update_xaxes(title="layer-1 head (reads)")
    fig.update_yaxes(title="layer-0 head (writes)", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    _layout(fig, "Composition of layer-0 heads (paper's Layer 1) into layer-1 heads (Layer 2)", height=520)
    return _matrix_slider(fig, steps, len(modes), phases(table) if marks is None else marks)


def path_patching_figure(table: pd.DataFrame, evaluator: str = "train", metric: str = "acc",
                         marks: Sequence[Phase] | None = None) -> go.Figure:
    """Path patching sender (layer 0) -> receiver (layer 1) through q, k or v, one checkpoint at a time."""
    rows = select(table, "path_patching", metric=metric, evaluator=evaluator)
    clean = _clean(table, metric)
    steps = sorted(int(s) for s in rows.step.unique())
    comps = [c for c in "qkv" if (rows.component == c).any()]
    unit = "accuracy" if metric == "acc" else "loss"
    delta = clean is not None and evaluator in clean
    fig = make_subplots(1, len(comps), subplot_titles=[f"through {c.upper()}" for c in comps],
                        horizontal_spacing=0.06)
    values = rows.value - (clean[evaluator].reindex(rows.step).to_numpy() if delta else 0)
    span = float(np.nanmax(np.abs(values))) or 1.0
    for step in steps:
        at = rows[rows.step == step]
        base = float(clean[evaluator].get(step, np.nan)) if delta else 0.0
        for i, c in enumerate(comps):
            g = at[at.component == c]
            src = g.src_head.astype("Float64").fillna(-1).astype(int)
            dst = g["head"].astype("Float64").fillna(-1).astype(int)
            grid = pd.Series(g.value.to_numpy() - base, index=[src, dst]).unstack()
            fig.add_trace(go.Heatmap(
                z=grid.to_numpy(), x=[head_label(1, h) if h >= 0 else "all" for h in grid.columns],
                y=[head_label(0, h) if h >= 0 else "all" for h in grid.index], zmid=0 if delta else None,
                zmin=-span if delta else None, zmax=span if delta else None,
                colorscale="RdBu" if delta else "Viridis", showscale=i == 0,
                colorbar=dict(title=f"Δ {unit}" if delta else unit),
                hovertemplate="sender %{y} → receiver %{x}<br>%{z:.3f}<extra></extra>"), row=1, col=i + 1)
    fig.update_xaxes(title="receiver: layer-1 head")
    fig.update_yaxes(title="sender: layer-0 head (mean-patched)", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    what = f"change in {evaluator} {unit} vs clean" if delta else f"{evaluator} {unit} after patching"
    _layout(fig, f"Path patching layer 0 → layer 1: {what}", height=520)
    return _matrix_slider(fig, steps, len(comps), phases(table) if marks is None else marks)


def figures(table: pd.DataFrame, metrics: pd.DataFrame | None = None,
            x: str = "step") -> tuple[dict[str, go.Figure], dict[str, str]]:
    """Every figure the table supports, by name, and why each missing one was skipped.

    `metrics` (a run's metrics.parquet, finer-grained) feeds the behavior curves and phase marks when given;
    the table's own behavior rows stay the clean baseline of ablation and path patching (same batches).
    """
    check_x(x)
    behavior_table = metrics if metrics is not None and (metrics.analysis == "behavior").any() else table
    marks = phases(behavior_table)
    makers: dict[str, Callable[[], go.Figure]] = {
        "behavior": lambda: behavior_figure(behavior_table, x=x, marks=marks),
        "circuit_evolution": lambda: circuit_figure(table, x=x, behavior_table=behavior_table),
        "layer0_attention": lambda: layer0_figure(table, x=x, marks=marks),
        "layer1_attention": lambda: layer1_figure(table, x=x, marks=marks),
        "induction_heatmap": lambda: head_heatmap(table, "attention", "induction_strength", marks=marks,
                                                  title="Induction strength (flip) per head over training"),
        "ablation": lambda: ablation_figure(table, x=x, marks=marks),
        "ablation_heatmap_icl": lambda: head_heatmap(table, "ablation", "acc", "icl", "mean", marks=marks,
                                                     title="ICL accuracy with each head mean-ablated"),
        "composition": lambda: composition_figure(table, marks=marks),
        "path_patching": lambda: path_patching_figure(table, "train", marks=marks),
        "path_patching_icl": lambda: path_patching_figure(table, "icl", marks=marks),
        "llc": lambda: llc_figure(table, x=x, behavior_table=behavior_table),
        "rllc_heatmap": lambda: head_heatmap(table, "llc", "rllc", "train", marks=marks, log_floor=1e-3,
                                             title="Refined LLC of each head over training"),
    }
    figs, skipped = {}, {}
    for name, make in makers.items():
        try:
            figs[name] = make()
        except MissingAnalysis as e:
            skipped[name] = str(e)
    return figs, skipped


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """A self-contained HTML file (plotly.js embedded: works offline), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return path


PNG_HELP = "PNG needs kaleido 0.2.1 (it ships its own Chromium): pip install 'kaleido==0.2.1'"


def write_pngs(figs: dict[str, go.Figure], out_dir: str | Path, scale: float = 2.0) -> list[Path]:
    """One PNG per figure through kaleido, each written atomically.

    kaleido 0.2.1 brings its own headless Chromium inside the pip wheel, so PNGs need no system browser (the
    kaleido 1.x that plotly 6+ requires drives a system Chrome, which pip cannot install). A failure is one
    CoopError that names the fix; callers that can go on without PNGs warn and continue.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        static, path = _static(fig), out_dir / f"{name}.png"
        try:
            image = pio.to_image(static, format="png", scale=scale, width=int(static.layout.width or 1100),
                                 height=int(static.layout.height or 450), engine="kaleido")
        except Exception as e:  # a missing or broken kaleido raises ValueError, RuntimeError, OSError, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CoopError(f"PNG export failed ({type(e).__name__}: {first}); {PNG_HELP}") from None
        with atomic_path(path) as tmp:
            tmp.write_bytes(image)
        paths.append(path)
    return paths


def _static(fig: go.Figure) -> go.Figure:
    """A copy for a still image: a slider figure shows its slider's active step, without the slider."""
    fig = go.Figure(fig)
    if fig.layout.sliders:
        slider = fig.layout.sliders[0]
        label = slider.steps[slider.active].label
        fig.layout.sliders = ()  # plotly 5's update_layout(sliders=[]) keeps the old slider
        fig.update_layout(title_text=f"{fig.layout.title.text}, step {label}")
    return fig


def report_html(figs: dict[str, go.Figure], title: str, config: dict | None = None,
                skipped: dict[str, str] | None = None) -> str:
    """One offline HTML page: the run's config, then every figure, with a single embedded plotly.js."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if config is not None:
        parts.append("<h2>Run config</h2>" + "".join(
            f"<h3>{html.escape(section)}</h3><table>" + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in values.items())
            + "</table>" for section, values in config.items() if isinstance(values, dict)))
    for name, fig in figs.items():
        parts.append(f'<h2 id="{name}">{html.escape(name.replace("_", " "))}</h2>'
                     + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}"))
    if skipped:
        parts.append("<h2>Skipped figures</h2><ul>" + "".join(
            f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items()) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em} table{border-collapse:collapse}"
             " th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:13px}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style><script>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>")


def write_report(figs: dict[str, go.Figure], path: str | Path, title: str, config: dict | None = None,
                 skipped: dict[str, str] | None = None) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(report_html(figs, title, config, skipped), encoding="utf-8")
    return path
