"""Sender x receiver matrices of head pairs, one checkpoint at a time with a step slider: composition scores and
path patching. The still image (PNG) shows the checkpoint nearest the ICL peak, named in its title."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure import Figure
from .layout import apply_layout, set_caption
from .marks import Phase, phases
from .rows import MissingAnalysis, clean_baseline, select
from .style import SEQUENTIAL, diverging, head_label, layers_text

TEXT_CELLS = 14  # matrices with at most this many columns per panel print each cell's value


def matrix_slider(fig: go.Figure, steps: Sequence[int], per_step: int, marks: Sequence[Phase]) -> go.Figure:
    """A step slider showing the `per_step` traces of one step at a time (traces added step by step)."""
    def distance(step: int, mark: Phase) -> float:
        return abs(math.log10(max(step, 1)) - math.log10(max(mark.step, 1)))

    nearest = {}  # a phase names the checkpoint nearest to it, if that one lies within a factor 1.4 of it
    for mark in marks:  # (the first mark there: a phase before a stage)
        step = min(steps, key=lambda s: distance(s, mark))
        if distance(step, mark) < 0.15:
            nearest.setdefault(step, mark.label)
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


def cell_text(values: np.ndarray, span: float) -> np.ndarray | None:
    """Each cell's value to print on it, blank where it is under 5% of the colour range `span` (or missing);
    None for matrices too large to print on."""
    if values.shape[1] > TEXT_CELLS:
        return None
    shown = np.isfinite(values) & (np.abs(values) >= 0.05 * span)
    return np.where(shown, np.char.mod("%+.2f", np.nan_to_num(values)), "")


def _label(layer: int, head: int) -> str:
    return "all" if head < 0 else head_label(layer, head)


def _grid(rows: pd.DataFrame) -> pd.DataFrame:
    """rows as a (src_layer, src_head) x (layer, head) frame; a missing head (-1: 'all') sorts first."""
    keys = {c: rows[c].astype("Float64").fillna(-1).astype(int).to_numpy()
            for c in ("src_layer", "src_head", "layer", "head")}
    index = pd.MultiIndex.from_arrays([keys["src_layer"], keys["src_head"], keys["layer"], keys["head"]])
    return pd.Series(rows.value.to_numpy(), index=index).unstack([2, 3]).sort_index().sort_index(axis=1)


def _layers(column: pd.Series) -> list[int]:
    return sorted({int(layer) for layer in column.dropna()})


def composition_figure(table: pd.DataFrame, marks: Sequence[Phase] | None = None) -> go.Figure:
    """Q/K/V composition of every head into every head of a later layer, one checkpoint at a time (slider)."""
    rows = select(table, "composition")
    pairs = rows[rows.src_layer.notna() & rows.layer.notna()]
    pairs = pairs[pairs.src_layer < pairs.layer]
    if pairs.empty:
        raise MissingAnalysis("no composition rows between heads of different layers in the table")
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
            grid = _grid(at[at.metric == f"{m}_composition"])
            fig.add_trace(go.Heatmap(z=grid.to_numpy(dtype=float), x=[_label(*c) for c in grid.columns],
                                     y=[_label(*r) for r in grid.index], zmin=0, zmax=zmax, colorscale=SEQUENTIAL,
                                     showscale=i == 0, colorbar=dict(title="score"),
                                     hovertemplate="%{y} → %{x}<br>score %{z:.3f}<extra></extra>"),
                          row=1, col=i + 1)
    src, dst = layers_text(_layers(pairs.src_layer)), layers_text(_layers(pairs.layer))
    fig.update_xaxes(title=f"reading head: {dst}")
    fig.update_yaxes(title=f"writing head: {src}", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    apply_layout(fig, f"Composition of {src} heads into {dst} heads", height=520)
    set_caption(fig, "How strongly each head's output (row) can feed a later head's query, key or value (column; "
                     "Elhage et al.'s composition score, with the score of random matrices in each panel's title "
                     "as the level of no composition), one checkpoint at a time with the slider.")
    return matrix_slider(fig, steps, len(modes), phases(table) if marks is None else marks)


def path_patching_figure(table: pd.DataFrame, evaluator: str = "train", metric: str = "acc",
                         marks: Sequence[Phase] | None = None) -> go.Figure:
    """Path patching sender -> receiver through q, k or v, one checkpoint at a time: the change in `evaluator`'s
    metric from the clean model (diverging colours, red where the patch hurts), values printed in the cells."""
    rows = select(table, "path_patching", metric=metric, evaluator=evaluator)
    clean = clean_baseline(table, metric)
    steps = sorted(int(s) for s in rows.step.unique())
    comps = [c for c in "qkv" if (rows.component == c).any()]
    unit = "accuracy" if metric == "acc" else "loss"
    delta = clean is not None and evaluator in clean
    fig = make_subplots(1, len(comps), subplot_titles=[f"through {c.upper()}" for c in comps],
                        horizontal_spacing=0.06)
    values = rows.value - (clean[evaluator].reindex(rows.step).to_numpy() if delta else 0)
    colors = diverging(values, reverse=metric == "loss") if delta else dict(colorscale=SEQUENTIAL)
    span = float(np.nanmax(np.abs(values)))
    for step in steps:
        at = rows[rows.step == step]
        base = float(clean[evaluator].get(step, np.nan)) if delta else 0.0
        for i, c in enumerate(comps):
            grid = _grid(at[at.component == c])
            z = grid.to_numpy(dtype=float) - base
            text = cell_text(z, span)
            fig.add_trace(go.Heatmap(
                z=z, x=[_label(*k) for k in grid.columns], y=[_label(*k) for k in grid.index], showscale=i == 0,
                colorbar=dict(title=f"Δ {unit}" if delta else unit), text=text,
                texttemplate="%{text}" if text is not None else None, textfont=dict(size=9),
                hovertemplate="sender %{y} → receiver %{x}<br>%{z:.3f}<extra></extra>", **colors), row=1, col=i + 1)
    senders, receivers = layers_text(_layers(rows.src_layer)), layers_text(_layers(rows.layer))
    fig.update_xaxes(title=f"receiver: {receivers} head", tickangle=-45)
    fig.update_yaxes(title=f"sender: {senders} head (mean-patched)", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    what = f"change in {evaluator} {unit} vs clean" if delta else f"{evaluator} {unit} after patching"
    apply_layout(fig, f"Path patching {senders} → {receivers}: {what}", height=560)
    where = ("mean-patched only into the query, key or value input of a receiver head (column; all: every "
             "receiver)")
    if delta:
        set_caption(fig, f"Change in {evaluator} {unit} from the clean model when a sender head's output (row; all: "
                         f"every sender) is {where}: a red cell is a path the {evaluator} behaviour runs through "
                         "(the colour scale is the same at every checkpoint of the slider).")
    else:
        set_caption(fig, f"{evaluator} {unit} when a sender head's output (row; all: every sender) is {where}, one "
                         "checkpoint at a time with the slider.")
    return matrix_slider(fig, steps, len(comps), phases(table) if marks is None else marks)


PATH_PATCHING_CAPTION = (
    "Change in ciwl accuracy from the clean model when a sender head's output (row; all: every sender) is mean-patched "
    "only into the query, key or value input of a receiver head (column; all: every receiver), shown for CIWL because "
    "train accuracy saturates at 1, where no patch can show: a red cell is a path CIWL runs through, a blue one a path "
    "whose removal helps it.")

FIGURES = [
    Figure("composition", "composition", lambda v: composition_figure(v.table, marks=v.marks), ("exemplar", "tokens")),
    Figure("path_patching", "path_patching", lambda v: set_caption(
        path_patching_figure(v.table, "ciwl", marks=v.marks), PATH_PATCHING_CAPTION), ("exemplar",)),
    Figure("path_patching_icl", "path_patching", lambda v: path_patching_figure(v.table, "icl", marks=v.marks),
           ("exemplar",)),
]
