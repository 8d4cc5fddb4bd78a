"""Marks on the step axis, drawn as vertical lines on every subplot with labels that never cover the data: the
exemplar task's phases (where ICL accuracy peaks and where CIWL accuracy overtakes it, from the behavior rows;
dotted) and the stage boundaries the `trajectory` analysis reads from any run's outputs (dashed, "stage")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import plotly.graph_objects as go

from ..phases import accuracy_curves, find_phases
from .layout import axis_layout, domain, subplot_axes, subplot_pixels

ICL_EMERGED = 0.6  # in-context chance is 0.5: below this ICL never emerged and has no peak to mark
LABEL_FONT = 11
LABEL_ROW = 16  # layout pixels per row of labels
CHAR_WIDTH = 0.65 * LABEL_FONT  # a label character's width in pixels, about (plotly's default sans-serif)
PAD = 3  # pixels between a line and its label
GAP = 10  # pixels at least between two labels in a row


@dataclass(frozen=True)
class Phase:
    """A phase mark: a step found from the behavior curves, and what happens there."""

    name: str
    step: int
    seqs_seen: int
    label: str
    dash: str = "dot"  # the line's plotly dash style: dotted phases, dashed stages


def stages(table: pd.DataFrame) -> list[Phase]:
    """A dashed "stage" mark at every step the `trajectory` analysis flags as a stage boundary (none without its
    rows)."""
    rows = table[(table.analysis == "trajectory") & (table.metric == "boundary") & (table.value > 0)]
    return [Phase("stage", int(step), int(seqs), "stage", "dash") for step, seqs in zip(rows.step, rows.seqs_seen)]


def phases(table: pd.DataFrame) -> list[Phase]:
    """The ICL peak and the first step after it where CIWL accuracy exceeds ICL accuracy (`phases.find_phases`),
    then the table's stage boundaries (`stages`).

    Curves with at least 50 logged steps are smoothed over 5; no phase marks when ICL never emerged or the table has
    no icl/ciwl/flip accuracy.
    """
    return icl_phases(table) + stages(table)


def icl_phases(table: pd.DataFrame) -> list[Phase]:
    """The ICL peak and where CIWL overtakes it (`phases`)."""
    rows = table[(table.analysis == "behavior") & (table.metric == "acc")]
    if rows.empty:
        return []
    curves = accuracy_curves(table, smooth=5 if rows.step.nunique() >= 50 else 1)
    if not {"icl", "ciwl", "flip"} <= set(curves.columns) or curves.icl.max() < ICL_EMERGED:
        return []
    found = find_phases(curves)
    seqs = rows.drop_duplicates("step").set_index("step").seqs_seen
    out = [Phase("icl_peak", found.icl_peak_step, int(seqs[found.icl_peak_step]),
                 f"ICL peak: acc {found.icl_peak:.2f}")]
    if found.ciwl_overtake_step is not None:
        step = found.ciwl_overtake_step
        out.append(Phase("ciwl_overtakes", step, int(seqs[step]), "CIWL overtakes ICL"))
    return out


def mark_phases(fig: go.Figure, marks: Sequence[Phase], x: str = "step",
                index: Callable[[float], float] | None = None) -> go.Figure:
    """A vertical line per mark (dotted or dashed: `Phase.dash`) on every subplot, labelled once in each top-row
    subplot.

    On a log x axis (`index` None) plotly places shapes by value but annotations by log10(value); `index` maps a
    step to the value on a linear x axis instead (a heatmap's fractional column, or the step itself). A label goes
    to the right of its line, to the left where it would run off the axis, and one row down where it would overlap
    another label. On line plots the top row's y axes gain headroom for those rows, so labels sit above the data;
    on heatmaps, whose rows have no headroom, labels sit above the plot area.
    """
    xs = [float(v) for t in fig.data if t.x is not None for v in t.x if index or float(v) > 0]
    if not xs or not marks:
        return fig
    heatmap = any(isinstance(t, go.Heatmap) for t in fig.data)
    lo, hi = (min(xs), max(xs)) if index else (math.log10(min(xs)), math.log10(max(xs)))
    if heatmap:
        lo, hi = lo - 0.5, hi + 0.5  # cells are centred on their column
    placed = []  # (mark, line x, label x)
    for mark in marks:
        value = float(getattr(mark, x))
        line_x = index(value) if index else value
        if math.isfinite(line_x):
            placed.append((mark, line_x, line_x if index else math.log10(value)))
    axes = subplot_axes(fig)
    top = max(domain(fig, ya)[1] for _, ya in axes)
    for xa, ya in axes:
        for mark, line_x, _ in placed:
            fig.add_shape(type="line", x0=line_x, x1=line_x, y0=0, y1=1, xref=xa, yref=f"{ya} domain",
                          line=dict(color="grey", dash=mark.dash, width=1.5))
        if domain(fig, ya)[1] < top:
            continue
        width, height = subplot_pixels(fig, xa, ya)
        spots = _arrange([m.label for m, _, _ in placed], [lx for _, _, lx in placed], lo, hi, width)
        for (mark, _, label_x), (row, right) in zip(placed, spots):
            fig.add_annotation(x=label_x, y=1, xref=xa, yref=f"{ya} domain", text=mark.label, showarrow=False,
                               xanchor="left" if right else "right", xshift=PAD if right else -PAD,
                               yanchor="bottom" if heatmap else "top",
                               yshift=2 + LABEL_ROW * row if heatmap else -LABEL_ROW * row,
                               font=dict(size=LABEL_FONT, color="dimgrey"))
        rows = 1 + max((row for row, _ in spots), default=-1)
        if heatmap:
            fig.update_layout(margin_t=max(fig.layout.margin.t or 0, 56 + LABEL_ROW * rows))
        elif rows:
            _headroom(fig, ya, (LABEL_ROW * rows + 8) / height)
    return fig


def _arrange(texts: list[str], positions: list[float], lo: float, hi: float,
             width: float) -> list[tuple[int, bool]]:
    """(row, right of its line?) of each label on an axis from lo to hi drawn `width` pixels wide."""
    scale = width / (hi - lo) if hi > lo else 0.0
    taken: list[list[tuple[float, float]]] = []
    out = []
    for text, position in zip(texts, positions):
        at, size = (position - lo) * scale, CHAR_WIDTH * len(text) + PAD + GAP
        right = at + size <= width or at - size < 0
        span = (at, at + size) if right else (at - size, at)
        row = next((i for i, spans in enumerate(taken) if all(span[1] <= a or span[0] >= b for a, b in spans)),
                   len(taken))
        if row == len(taken):
            taken.append([])
        taken[row].append(span)
        out.append((row, right))
    return out


def _headroom(fig: go.Figure, yaxis: str, share: float) -> None:
    """Extend a y axis upwards so that its top `share` of the plot height holds no data."""
    axis = axis_layout(fig, yaxis)
    log = axis.type == "log"
    if axis.range:
        lo, hi = axis.range
    else:
        ys = [float(v) for t in fig.data if (t.yaxis or "y") == yaxis and t.y is not None for v in t.y
              if v is not None and math.isfinite(float(v)) and (float(v) > 0 or not log)]
        if not ys:
            return
        ys = [math.log10(v) for v in ys] if log else ys
        pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
        lo, hi = min(ys) - pad, max(ys) + pad
    share = min(share, 0.45)
    axis.range = [lo, hi + (hi - lo) * share / (1 - share)]
