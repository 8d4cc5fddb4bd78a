"""Figures of a token model's table (a run from outside): next-token loss over training, and the change in loss
when a head is ablated or a path is patched."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from .figure import Figure
from .heatmaps import head_heatmap
from .layout import apply_layout, set_caption
from .marks import Phase, mark_phases
from .matrices import path_patching_figure
from .rows import MissingAnalysis, on_log_x, select, x_title
from .style import log_axis

LOSSES = {"loss": ("all positions", "#444444"), "loss_first_copy": ("first copy", "#d62728"),
          "loss_repeat": ("repeat", "#1f77b4")}


def is_token_table(table: pd.DataFrame) -> bool:
    """Whether the table comes from a token model (its behavior rows hold losses only, no accuracies)."""
    behavior = table[table.analysis == "behavior"]
    return bool(len(behavior)) and not (behavior.metric == "acc").any()


def source(table: pd.DataFrame) -> str:
    """The data source of the table's behavior rows (the first, if several)."""
    evaluators = table.evaluator[table.analysis == "behavior"].dropna().astype(str)
    if evaluators.empty:
        raise MissingAnalysis("no behavior rows in the table (run the behavior analysis)")
    return evaluators.iloc[0]


def token_loss_figure(table: pd.DataFrame, x: str = "step", marks: Sequence[Phase] = ()) -> go.Figure:
    """Next-token loss over training; on repeated tokens also the loss on the block's first copy and its repeat."""
    ev = source(table)
    rows = on_log_x(select(table, "behavior", evaluator=ev), x)
    fig = go.Figure()
    for metric, (name, color) in LOSSES.items():
        g = rows[rows.metric == metric]
        if len(g):
            fig.add_trace(go.Scatter(x=g[x], y=g.value, name=name, mode="lines+markers", line=dict(color=color),
                                     hovertemplate=f"{name}<br>{x} %{{x}}<br>loss %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(log_axis(title=x_title(x)))
    fig.update_yaxes(title="next-token loss (nats)", rangemode="tozero")
    apply_layout(fig, f"Next-token loss on {ev} over training")
    set_caption(fig, "Next-token loss over training (log step axis); on repeated random tokens, the loss on the "
                     "block's repeat (blue) falls far below its first copy (red, which no model can predict) once an "
                     "induction head forms.")
    return mark_phases(fig, marks, x)


def token_ablation_heatmap(table: pd.DataFrame, marks: Sequence[Phase] = ()) -> go.Figure:
    """The change in next-token loss when each head alone is mean-ablated, head x checkpoint."""
    fig = head_heatmap(table, "ablation", "delta_loss", evaluator=source(table), component="mean", marks=marks,
                       signed=True, reverse=True,
                       title="Mean-ablating each head: change in next-token loss over training")
    return set_caption(fig, "Change in next-token loss when one head (row) is mean-ablated at a checkpoint (column), "
                            "on a diverging scale centred at 0: red where the loss rises (a head the model's "
                            "predictions rely on at that point of training), blue where it falls.")


def token_path_patching_figure(table: pd.DataFrame, marks: Sequence[Phase] = ()) -> go.Figure:
    """Path patching every head into every later head's q, k or v: the change in loss, checkpoint by checkpoint."""
    return path_patching_figure(table, source(table), "loss", marks=marks)


FIGURES = [
    Figure("token_loss", "behavior", lambda v: token_loss_figure(v.table, x=v.x, marks=v.marks), ("tokens",)),
    Figure("ablation_heatmap", "ablation", lambda v: token_ablation_heatmap(v.table, v.marks), ("tokens",)),
    Figure("path_patching", "path_patching", lambda v: token_path_patching_figure(v.table, v.marks), ("tokens",)),
]
