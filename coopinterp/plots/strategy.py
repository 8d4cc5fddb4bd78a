"""The Markov task's strategy figure: the weights of the best-fitting mix of the four algorithms over training, in
and out of distribution, with the KL that no mix explains."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure import Figure
from .layout import apply_layout, set_caption
from .rows import on_log_x, select, x_title
from .style import log_axis

PREDICTORS = {"uni_ret": ("unigram, retrieved", "#ff7f0e"), "uni_inf": ("unigram, inferred", "#2ca02c"),
              "bi_ret": ("bigram, retrieved", "#d62728"), "bi_inf": ("bigram, inferred", "#1f77b4")}
CAPTION = ("Weights of the mix of the four algorithms that best matches the model's next-token predictions (lowest "
           "mean KL), at each checkpoint (log step axis), on sequences from the training chains (in distribution) and "
           "from fresh chains (out of distribution); the grey dashed line (right axis) is the KL that the best mix "
           "leaves unexplained. Retrieval (red, orange) memorises the training chains; inference (blue, green) reads "
           "the statistics of the context.")


def strategy_weights_figure(table: pd.DataFrame, x: str = "step") -> go.Figure:
    rows = on_log_x(select(table, "strategy"), x)
    evaluators = list(dict.fromkeys(rows.evaluator.dropna().astype(str)))
    fig = make_subplots(rows=1, cols=len(evaluators), subplot_titles=[e.replace("markov_", "").upper() if e
                        in ("markov_id", "markov_ood") else e for e in evaluators],
                        specs=[[{"secondary_y": True}] * len(evaluators)], horizontal_spacing=0.12)
    for col, ev in enumerate(evaluators, 1):
        g = rows[rows.evaluator == ev]
        for name, (label, color) in PREDICTORS.items():
            w = g[(g.metric == "mix_weight") & (g.component == name)]
            fig.add_trace(go.Scatter(x=w[x], y=w.value, name=label, legendgroup=name, showlegend=col == 1,
                                     mode="lines+markers", line=dict(color=color)), row=1, col=col)
        r = g[g.metric == "mix_residual_kl"]
        fig.add_trace(go.Scatter(x=r[x], y=r.value, name="residual KL", legendgroup="residual", showlegend=col == 1,
                                 mode="lines", line=dict(color="#888888", dash="dash")),
                      row=1, col=col, secondary_y=True)
        fig.update_yaxes(title_text="mix weight" if col == 1 else None, range=[0, 1.02], row=1, col=col)
        fig.update_yaxes(title_text="residual KL (nats)" if col == len(evaluators) else None, rangemode="tozero",
                         row=1, col=col, secondary_y=True, showgrid=False)
        fig.update_xaxes(log_axis(title=x_title(x)), row=1, col=col)
    apply_layout(fig, "Which algorithm the model runs: best-fitting mix weights over training")
    return set_caption(fig, CAPTION)


FIGURES = [Figure("strategy_weights", "strategy", lambda v: strategy_weights_figure(v.full, x=v.x))]
