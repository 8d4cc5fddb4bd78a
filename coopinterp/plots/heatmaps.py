"""Per-head metrics as head x checkpoint heatmaps: one row per head (any number of layers and heads), one column
per checkpoint, a diverging colour scale centred on 0 for signed values."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import CoopError
from .layout import apply_layout, set_caption
from .marks import Phase, mark_phases, phases
from .rows import MissingAnalysis, per_head, select
from .style import HEAD_AXIS, SEQUENTIAL, diverging, head_label

ROW_PX = 26  # pixels per head row while the rows fit into MAX_ROWS_PX
MAX_ROWS_PX = 1200
TICKED_ROWS = 48  # with more heads than this, only each layer's first head is named on the y axis


def step_axis(steps: Sequence[int]) -> Callable[[float], float]:
    """Map a step to a (fractional) column of a step-per-column heatmap, interpolating in log(step); NaN outside
    the checkpoints."""
    logs = np.log10(np.maximum(np.asarray(steps, dtype=float), 1.0))
    return lambda step: float(np.interp(math.log10(max(step, 1.0)), logs, np.arange(len(steps)), np.nan, np.nan))


def head_heatmap(table: pd.DataFrame, analysis: str, metric: str, evaluator: str | None = None,
                 component: str | None = None, marks: Sequence[Phase] | None = None, title: str | None = None,
                 log_floor: float | None = None, signed: bool | None = None, reverse: bool = False) -> go.Figure:
    """Any per-head metric of the table as a head x checkpoint heatmap (step 0 included); see `step_heatmap`.

    `evaluator` and `component` pick one of several; a metric with several and none picked is an error.
    """
    rows = per_head(select(table, analysis, metric=metric))
    for column, value in (("evaluator", evaluator), ("component", component)):
        present = sorted(rows[column].dropna().astype(str).unique())
        if value is not None:
            rows = select(rows, analysis, **{column: value})
        elif len(present) > 1:
            raise CoopError(f"{analysis}/{metric} has several {column}s ({', '.join(present)}); pick one")
    if rows.empty:
        raise MissingAnalysis(f"no per-head {analysis}/{metric} rows in the table")
    what = " ".join(str(v) for v in (evaluator, component) if v is not None)
    return step_heatmap(rows, title or f"{analysis}/{metric}{f' ({what})' if what else ''} per head over training",
                        metric.replace("_", " "), phases(table) if marks is None else marks, log_floor, signed,
                        reverse)


def step_heatmap(rows: pd.DataFrame, title: str, value_title: str, marks: Sequence[Phase],
                 log_floor: float | None = None, signed: bool | None = None, reverse: bool = False) -> go.Figure:
    """Per-head rows (layer, head, step, value) as a heatmap with phase marks.

    `signed` (default: whether any value is negative) colours on a diverging scale with 0 at its midpoint, red
    below (`reverse`: red above, for values where above 0 is worse); `log_floor` colours by log10 of the value,
    values below the floor (noise around 0, negatives) at the floor, for metrics spanning decades. Hover shows
    the value itself.
    """
    rows = rows.drop_duplicates(["step", "layer", "head"])
    grid = rows.pivot(index=["layer", "head"], columns="step", values="value").sort_index()
    steps = [int(s) for s in grid.columns]
    heads = [(int(layer), int(head)) for layer, head in grid.index]
    values = grid.to_numpy(dtype=float)
    signed = bool(np.nanmin(values) < 0) if signed is None else signed
    colorbar = dict(title=value_title)
    colors = diverging(values, reverse) if signed and log_floor is None else dict(colorscale=SEQUENTIAL)
    z = values
    if log_floor is not None:
        z = np.log10(np.maximum(values, log_floor))
        decades = np.arange(math.floor(np.nanmin(z)), math.ceil(np.nanmax(z)) + 1)
        colorbar.update(tickvals=decades, ticktext=[f"{10.0 ** k:g}" for k in decades],
                        title=f"{value_title}<br>(log; ≤{log_floor:g}<br>at the floor)")
    labels = [head_label(*h) for h in heads]
    custom = np.dstack([np.tile(steps, (len(heads), 1)), values])
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(steps))), y=list(range(len(heads))), colorbar=colorbar,
                               customdata=custom, text=np.tile(np.asarray(labels)[:, None], (1, len(steps))),
                               hovertemplate="%{text}<br>step %{customdata[0]:,}<br>value %{customdata[1]:.4g}"
                                             "<extra></extra>", **colors))
    ticks = [i for i, h in enumerate(heads) if len(heads) <= TICKED_ROWS or h[1] == heads[0][1]]
    fig.update_xaxes(title="training step (one column per checkpoint)", tickmode="array",
                     tickvals=list(range(len(steps))), ticktext=[f"{s:,}" for s in steps], tickangle=-45)
    fig.update_yaxes(title=HEAD_AXIS, autorange="reversed", tickmode="array", tickvals=ticks,
                     ticktext=[labels[i] for i in ticks])
    for i in range(1, len(heads)):  # a white rule between layers
        if heads[i][0] != heads[i - 1][0]:
            fig.add_hline(y=i - 0.5, line=dict(color="white", width=2))
    row_px = min(ROW_PX, MAX_ROWS_PX / len(heads))
    apply_layout(fig, title, height=int(max(420, row_px * len(heads) + 240)))
    fig.update_layout(margin=dict(r=40))
    set_caption(fig, f"{value_title} of every head (row) at every checkpoint (column).")
    return mark_phases(fig, marks, "step", step_axis(steps))
