"""The `trajectory` analysis's figures: the run's path through the planes of its first principal components,
coloured by step, with the candidate stage boundaries; and the turning angle and curvature over training beside the
phase and stage marks."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure import Figure
from .layout import apply_layout, set_caption
from .marks import Phase, mark_phases
from .rows import on_log_x, select, x_title
from .style import log_axis

PLANES = 3  # the planes of the first this many components are drawn
CAPTION = ("The model's outputs on the fixed probe set at every checkpoint, projected on their principal components "
           "(centred across checkpoints; the share of the variance each explains is in its axis title): the "
           "smoothed path (line) and the checkpoints (dots, coloured by log step; faint: before smoothing). Red "
           "circles mark candidate stage boundaries (sharp turns of the smoothed path), crosses cusps (it nearly "
           "reverses).")
TURNS_CAPTION = ("At each checkpoint, how sharply the smoothed path through the principal components turns (degrees "
                 "between the segments in and out), the curvature of the circle through it and its neighbours, and "
                 "how far the path moved from the checkpoint before (a jump, such as a sudden loss drop, is a peak); "
                 "dashed lines mark the candidate stage boundaries, dotted ones the behavioural phases where known.")


def _coordinates(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Step x component frame of the trajectory's coordinates (pc or pc_smooth), in step order."""
    rows = select(table, "trajectory", metric=metric)
    wide = rows.pivot_table(index="step", columns="component", values="value", aggfunc="first").sort_index()
    return wide[sorted(wide.columns, key=lambda c: int(c[2:]))]


def trajectory_figure(table: pd.DataFrame) -> go.Figure:
    """The path in every plane of the first three components (one plane with two), boundaries and cusps marked."""
    path, raw = _coordinates(table, "pc_smooth"), _coordinates(table, "pc")
    flags = table[(table.analysis == "trajectory") & table.metric.isin(["boundary", "cusp"])]
    flags = flags.pivot_table(index="step", columns="metric", values="value", aggfunc="first").reindex(path.index)
    explained = select(table, "trajectory", metric="explained_variance").drop_duplicates("component")
    share = dict(zip(explained.component, explained.value))
    planes = list(itertools.combinations(path.columns[:PLANES], 2))
    fig = make_subplots(1, len(planes), horizontal_spacing=0.08,
                        subplot_titles=[f"{a.upper()} – {b.upper()}" for a, b in planes])
    log_step = np.log10(path.index.to_numpy() + 1.0)
    boundary = flags.get("boundary", pd.Series(0.0, index=path.index)).fillna(0) > 0
    cusp = flags.get("cusp", pd.Series(0.0, index=path.index)).fillna(0) > 0
    for col, (a, b) in enumerate(planes, 1):
        fig.add_trace(go.Scatter(x=raw[a], y=raw[b], mode="markers", marker=dict(color="#cccccc", size=5),
                                 name="before smoothing", legendgroup="raw", showlegend=col == 1,
                                 hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=path[a], y=path[b], mode="lines+markers", line=dict(color="#999999", width=1), name="checkpoints",
            legendgroup="path", showlegend=col == 1, customdata=path.index,
            marker=dict(color=log_step, colorscale="Viridis", size=8, showscale=col == 1,
                        colorbar=dict(title="log10 step", x=1.01)),
            hovertemplate=f"step %{{customdata}}<br>{a} %{{x:.3g}}<br>{b} %{{y:.3g}}<extra></extra>"), row=1, col=col)
        for chosen, name, symbol in ((boundary, "stage boundary", "circle-open"), (cusp, "cusp", "x-thin-open")):
            fig.add_trace(go.Scatter(x=path[a][chosen], y=path[b][chosen], mode="markers+text", name=name,
                                     legendgroup=name, showlegend=col == 1, text=[str(s) for s in path.index[chosen]],
                                     textposition="top center", textfont=dict(size=10, color="#d62728"),
                                     marker=dict(symbol=symbol, size=16, color="#d62728", line=dict(width=2))),
                          row=1, col=col)
        fig.update_xaxes(title=_axis_title(a, share), row=1, col=col)
        fig.update_yaxes(title=_axis_title(b, share), row=1, col=col)
    apply_layout(fig, "Essential dynamics: the outputs' path through their principal components", height=420)
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return set_caption(fig, CAPTION)


def _axis_title(component: str, share: dict[str, float]) -> str:
    value = share.get(component, math.nan)
    return f"{component.upper()} ({100 * value:.0f}% of variance)"


def turns_figure(table: pd.DataFrame, marks: list[Phase], x: str = "step") -> go.Figure:
    """Turning angle, curvature and speed of the path over training, with the stage and phase marks."""
    rows = on_log_x(select(table, "trajectory"), x)
    fig = make_subplots(3, 1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=["turning angle of the smoothed path (degrees)",
                                        "curvature (1 / radius of the circle through each checkpoint and its "
                                        "neighbours)",
                                        "speed (each step's move from the checkpoint before, share of the path)"])
    for row, metric in enumerate(("turn_angle", "curvature", "speed"), 1):
        part = rows[(rows.metric == metric) & rows.component.isna()]
        fig.add_trace(go.Scatter(x=part[x], y=part.value, mode="lines+markers", name=metric.replace("_", " "),
                                 line=dict(color="black"), showlegend=False), row=row, col=1)
    fig.update_xaxes(log_axis())
    fig.update_xaxes(title=x_title(x), row=3, col=1)
    fig.update_yaxes(title="degrees", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="curvature", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title="share of path", rangemode="tozero", row=3, col=1)
    apply_layout(fig, "How sharply and how fast the trajectory turns and moves, over training", height=800)
    set_caption(fig, TURNS_CAPTION)
    return mark_phases(fig, marks, x)


FIGURES = [
    Figure("trajectory", "trajectory", lambda v: trajectory_figure(v.table)),
    Figure("trajectory_turns", "trajectory", lambda v: turns_figure(v.table, v.marks, x=v.x)),
]
