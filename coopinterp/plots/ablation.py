"""Head ablation over training: each head ablated alone, its effect on each evaluator as a change from the clean
model (below 0: the evaluator needs the head), as lines and as a head x checkpoint heatmap."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure import Figure
from .heatmaps import step_heatmap
from .layout import apply_layout, set_caption
from .lines import head_lines, legend_title, salient_heads
from .marks import Phase, mark_phases, phases
from .rows import MissingAnalysis, clean_baseline, minus_clean, model_shape, on_log_x, per_head, select, x_title
from .style import log_axis


def ablation_figure(table: pd.DataFrame, evaluators: Sequence[str] = ("icl", "ciwl"), mode: str = "mean",
                    metric: str = "acc", x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Each head ablated alone: change in each evaluator's metric vs the clean model, over training (the metric
    itself where the table has no behavior rows). Crowded panels colour only the heads with the largest effect."""
    rows = on_log_x(per_head(select(table, "ablation", metric=metric, component=mode)), x)
    clean = clean_baseline(table, metric)
    unit = "accuracy" if metric == "acc" else "loss (nats)"
    parts = []
    for ev in evaluators:
        part = select(rows, "ablation", evaluator=ev)
        parts.append(minus_clean(part, clean) if clean is not None and ev in clean else part)
    delta = clean is not None and all(ev in clean for ev in evaluators)
    salient, shape = salient_heads(parts), model_shape(table)
    fig = make_subplots(1, len(evaluators), horizontal_spacing=0.07, subplot_titles=list(evaluators))
    for i, part in enumerate(parts):  # each panel keeps its own y range: no head's line is clipped
        head_lines(fig, part, x, 1, i + 1, f"Δ{metric}" if delta else metric, shape, salient, show_legend=i == 0)
    fig.update_xaxes(log_axis(title=x_title(x)))
    fig.update_yaxes(title=f"change in {unit} (ablated − clean)" if delta else f"{unit} with the head ablated",
                     row=1, col=1)
    if delta:
        fig.add_hline(y=0, line=dict(color="black", width=0.8))
    apply_layout(fig, f"Head ablation ({mode}), one head at a time: effect on {unit} per evaluator", height=560)
    fig.update_layout(legend_title_text=legend_title(rows, salient, f"largest |Δ {metric}|"), legend_font_size=10,
                      margin=dict(r=40))
    set_caption(fig, f"Change in each evaluator's {unit} when one head at a time is {mode}-ablated, over training: "
                     "below 0 the strategy needs the head, above 0 the head held it back; where many heads crowd a "
                     "panel only those with the largest effect are coloured and the rest drawn grey.")
    return mark_phases(fig, phases(table) if marks is None else marks, x)


def ablation_heatmap(table: pd.DataFrame, evaluator: str = "icl", mode: str = "mean", metric: str = "acc",
                     marks: Sequence[Phase] | None = None) -> go.Figure:
    """Change in one evaluator's metric (ablated − clean) with each head ablated alone, head x checkpoint: the
    clean level changes over training, the effect of a head is what is left."""
    rows = per_head(select(table, "ablation", metric=metric, component=mode, evaluator=evaluator))
    clean = clean_baseline(table, metric)
    if clean is None or evaluator not in clean:
        raise MissingAnalysis(f"no clean {evaluator} {metric} (behavior rows) to measure the ablation against; "
                              "run `coopinterp analyze RUN --analyses behavior`")
    unit = "accuracy" if metric == "acc" else "loss"
    fig = step_heatmap(minus_clean(rows, clean), f"Change in {evaluator} {unit} with each head {mode}-ablated "
                       "(ablated − clean)", f"Δ {evaluator} {unit}", phases(table) if marks is None else marks,
                       signed=True, reverse=metric == "loss")
    return set_caption(fig, f"Change in {evaluator} {unit} (ablated − clean) when each head (row) is {mode}-ablated "
                            "alone at each checkpoint (column): red cells are heads the evaluator needs, blue cells "
                            "heads whose removal helps it, white cells heads it does not use.")


FIGURES = [
    Figure("ablation", "ablation", lambda v: ablation_figure(v.table, x=v.x, marks=v.marks), ("exemplar",)),
    Figure("ablation_heatmap_icl", "ablation", lambda v: ablation_heatmap(v.table, "icl", marks=v.marks), ("exemplar",)),
]
