"""The learning coefficient over training beside behavior: accuracy, the whole model's LLC with its spread over
SGLD chains, and each head's refined LLC on a log scale, on one shared step axis."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .behavior import behavior_figure
from .figure import Figure
from .heatmaps import head_heatmap
from .layout import apply_layout, panel_legend, set_caption
from .lines import head_lines, legend_title, salient_heads
from .marks import mark_phases, phases
from .rows import model_shape, on_log_x, per_head, select, x_title
from .style import log_axis


def llc_figure(table: pd.DataFrame, x: str = "step", behavior_table: pd.DataFrame | None = None) -> go.Figure:
    """Accuracy, the whole model's LLC (bars: std over SGLD chains) and each head's refined LLC over training."""
    behavior_table = table if behavior_table is None else behavior_table
    whole = on_log_x(select(table, "llc", metric="llc").merge(
        select(table, "llc", metric="llc_std")[["step", "value"]].rename(columns={"value": "std"}), on="step"), x)
    heads = on_log_x(per_head(select(table, "llc", metric="rllc")), x) if (table.metric == "rllc").any() else None
    titles = ["evaluator accuracy", "LLC of the whole model (mean ± std over chains)"]
    titles += [] if heads is None else ["refined LLC of each head: its W_Q, W_K, W_V, W_O (log scale; values ≤ 0 "
                                        "not drawn)"]
    fig = make_subplots(len(titles), 1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles)
    with_behavior = (behavior_table.analysis == "behavior").any()
    if with_behavior:
        for trace in behavior_figure(behavior_table, x=x, marks=[]).data:
            fig.add_trace(trace, row=1, col=1)
    fig.add_trace(go.Scatter(x=whole[x], y=whole.value, error_y=dict(type="data", array=whole["std"]),
                             mode="lines+markers", name="LLC", legend="legend2", line=dict(color="black"),
                             hovertemplate=f"{x} %{{x}}<br>LLC %{{y:.2f}}<extra></extra>"), row=2, col=1)
    salient = None if heads is None else salient_heads([heads])
    if heads is not None:
        head_lines(fig, heads, x, 3, 1, "rLLC", model_shape(table), salient, legend="legend3")
    fig.update_xaxes(log_axis())
    fig.update_xaxes(title=x_title(x), row=len(titles), col=1)
    fig.update_yaxes(title="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title="LLC", row=2, col=1)
    if heads is not None:
        fig.update_yaxes(log_axis(title="refined LLC"), row=3, col=1)
    apply_layout(fig, "Learning coefficient over training (SGLD estimates on the training distribution)",
                 height=330 * len(titles) + 60)
    fig.update_layout(margin=dict(r=170))
    panel_legend(fig, "legend", "y", "evaluator")
    panel_legend(fig, "legend2", "y2", "estimate")
    if heads is not None:
        panel_legend(fig, "legend3", "y3", legend_title(heads, salient, "largest refined LLC"))
    set_caption(fig, "Accuracy, the whole model's local learning coefficient (LLC: half a unit per direction "
                     "the loss around the checkpoint is sensitive to; SGLD estimate, bars: std over chains) and "
                     "each head's refined LLC (log scale) on one step axis, to compare the LLC's turns with the "
                     "dotted phase lines.")
    return mark_phases(fig, phases(behavior_table) if with_behavior else [], x)


RLLC_CAPTION = ("Refined LLC of every head (row) at every checkpoint (column), coloured on a log scale: which heads' "
                "weights the loss is most sensitive to, and when.")

FIGURES = [
    Figure("llc", "llc", lambda v: llc_figure(v.table, x=v.x, behavior_table=v.behavior), ("exemplar",)),
    Figure("rllc_heatmap", "llc", lambda v: set_caption(head_heatmap(
        v.table, "llc", "rllc", "train", marks=v.marks, log_floor=1e-3,
        title="Refined LLC of each head over training"), RLLC_CAPTION), ("exemplar",)),
]
