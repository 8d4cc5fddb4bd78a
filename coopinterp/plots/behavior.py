"""The behavior figure: every evaluator's accuracy (or loss) over training, the transience picture."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from .figure import Figure
from .layout import apply_layout, set_caption
from .marks import Phase, mark_phases, phases
from .rows import on_log_x, select, x_title
from .style import EVALUATOR_COLORS, log_axis

CAPTION = ("Each evaluator's accuracy over training (log step axis; in-context accuracy, chance 0.5, except iwl "
           "over all labels): ICL (blue) against CIWL (red), and flip, high while the model answers from the "
           "context and low once it answers from memory; dotted lines mark the ICL peak and where CIWL overtakes ICL.")


def behavior_figure(table: pd.DataFrame, metric: str = "acc", x: str = "step",
                    marks: Sequence[Phase] | None = None) -> go.Figure:
    """Each evaluator's accuracy (or loss) over training. Holdout evaluators (`icl/holdout`, ...) dashed."""
    rows = on_log_x(select(table, "behavior", metric=metric), x)
    marks = phases(table) if marks is None else marks
    fig = go.Figure()
    evaluators = list(dict.fromkeys(rows.evaluator.astype(str)))
    for ev in sorted(evaluators, key=lambda e: (e.split("/")[0] not in EVALUATOR_COLORS, "/" in e)):
        g = rows[rows.evaluator == ev]
        fig.add_trace(go.Scatter(x=g[x], y=g.value, name=ev.replace("/", " "), mode="lines",
                                 line=dict(color=EVALUATOR_COLORS.get(ev.split("/")[0]),
                                           dash="dash" if "/" in ev else None),
                                 hovertemplate=f"{ev}<br>{x} %{{x}}<br>{metric} %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(log_axis(title=x_title(x)))
    fig.update_yaxes(title="accuracy" if metric == "acc" else "cross-entropy loss (nats)",
                     range=[0, 1.02] if metric == "acc" else None)
    apply_layout(fig, f"Behavior: evaluator {'accuracy' if metric == 'acc' else 'loss'} over training")
    fig.update_layout(legend_title_text="evaluator")
    set_caption(fig, CAPTION if metric == "acc" else "Each evaluator's cross-entropy loss over training (log step "
                     "axis); dotted lines mark the ICL peak and where CIWL overtakes ICL.")
    return mark_phases(fig, marks, x)


FIGURES = [Figure("behavior", "behavior", lambda v: behavior_figure(v.behavior, x=v.x, marks=v.marks), ("exemplar",))]
