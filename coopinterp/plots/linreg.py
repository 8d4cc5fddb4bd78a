"""The linreg task's figures (analysis `linreg`): the loss against the plateau theory L(m), each head's overlap with
Λ's eigenvectors, and the distance to principal-component regression PCR_m, over training (linear step axis, as the
paper draws its loss curves: the plateaus are flat stretches)."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from .figure import Figure, View
from .layout import apply_layout, set_caption
from .rows import check_x, select
from .style import SEQUENTIAL, log_axis

LOGGED = {"linreg_train": ("training set (logged)", "#444444"), "linreg": ("fresh sequences (logged)", "#1f77b4")}


def _title(x: str) -> str:
    return {"step": "training step", "seqs_seen": "sequences seen"}[check_x(x)]


def _colors(n: int) -> list[str]:
    """n colours along the house sequential scale, dark (first) to light, leaving out its palest end."""
    return sample_colorscale(SEQUENTIAL, [0.85 * i / max(n - 1, 1) for i in range(n)])


def _by_component(rows: pd.DataFrame) -> list[str]:
    return sorted(rows.component.dropna().astype(str).unique(), key=int)


def loss_figure(table: pd.DataFrame, behavior: pd.DataFrame, x: str = "step") -> go.Figure:
    rows = select(table, "linreg").sort_values(x)
    plateaus = rows[rows.metric == "plateau_loss"].drop_duplicates("component")
    fig = go.Figure()
    logged = behavior[(behavior.analysis == "behavior") & (behavior.metric == "loss")]
    for ev, (label, color) in LOGGED.items():
        g = logged[logged.evaluator == ev].sort_values(x)
        if len(g):
            fig.add_trace(go.Scatter(x=g[x], y=g.value, name=label, mode="lines", line=dict(color=color, width=1.5)))
    for ev, g in rows[rows.metric == "loss"].groupby("evaluator", sort=False):
        fig.add_trace(go.Scatter(x=g[x], y=g.value, name=f"checkpoints ({ev})", mode="markers",
                                 marker=dict(color="#d62728", size=6)))
    for m, value in zip(plateaus.component, plateaus.value):
        fig.add_hline(y=value, line=dict(color="#888888", dash="dash", width=1), annotation_text=f"L({m})",
                      annotation_position="right", annotation_font_size=10)
    fig.update_xaxes(title_text=_title(x))
    fig.update_yaxes(title_text="squared error", rangemode="tozero")
    apply_layout(fig, "Loss over training against the plateau theory L(m)")
    return set_caption(fig, "Mean squared error at the query over training (lines: logged every eval_every steps; "
                       "red dots: the linreg analysis at each checkpoint, on fresh sequences). Dashed lines: the loss "
                       "of principal-component regression with m components, L(m) (Zhang et al. 2025, eq. 19); "
                       "separate-key heads step down them one component at a time, merged ones drop once to L(D).")


def overlap_figure(table: pd.DataFrame, x: str = "step") -> go.Figure:
    rows = select(table, "linreg", metric="kq_overlap").sort_values(x)
    heads = sorted(int(h) for h in rows["head"].dropna().unique())
    components = _by_component(rows)
    cols = min(len(heads), 3)
    fig = make_subplots(rows=math.ceil(len(heads) / cols), cols=cols, subplot_titles=[f"head {h}" for h in heads],
                        shared_yaxes=True, vertical_spacing=0.12)
    for i, h in enumerate(heads):
        g = rows[rows["head"] == h]
        for d, color in zip(components, _colors(len(components))):
            c = g[g.component == d]
            fig.add_trace(go.Scatter(x=c[x], y=c.value, name=f"u_{d}", legendgroup=d, showlegend=i == 0,
                                     mode="lines", line=dict(color=color)), row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(title_text=_title(x), row=math.ceil(len(heads) / cols))
    apply_layout(fig, "Which principal direction each head has learned", height=260 * math.ceil(len(heads) / cols)
                 + 120)
    return set_caption(fig, "For each head, the share of its key-query matrix (x-block of W^KQ, W^Kᵀ W^Q for separate "
                       "heads) along u_d u_dᵀ, u_d the eigenvector of Λ with the d-th largest eigenvalue: 1 when the "
                       "head computes one principal component's term of PCR.")


def pcr_figure(table: pd.DataFrame, x: str = "step") -> go.Figure:
    rows = select(table, "linreg", metric="pcr_distance").sort_values(x)
    rows = rows[rows.evaluator == rows.evaluator.iloc[0]]
    components = _by_component(rows)
    fig = go.Figure()
    for m, color in zip(components, _colors(len(components))):
        g = rows[rows.component == m]
        fig.add_trace(go.Scatter(x=g[x], y=g.value, name=f"PCR_{m}", mode="lines+markers", line=dict(color=color),
                                 marker=dict(size=4)))
    fig.update_xaxes(title_text=_title(x))
    fig.update_yaxes(log_axis(title_text="mean (ŷ_model − ŷ_PCR_m)²", exponentformat="power"))
    apply_layout(fig, "Which algorithm the model runs: distance to PCR with m components")
    return set_caption(fig, "Mean squared difference between the model's predictions and those of principal-component "
                       "regression with the top m eigen-directions of Λ (m = 0: predicting 0), on fresh sequences at "
                       "each checkpoint; the lowest line is the algorithm the model runs at that step.")


def _loss(view: View) -> go.Figure:
    return loss_figure(view.full, view.behavior, x=view.x)


FIGURES = [Figure("linreg_loss", "linreg", _loss),
           Figure("linreg_eigen_overlap", "linreg", lambda v: overlap_figure(v.full, x=v.x)),
           Figure("linreg_pcr_distance", "linreg", lambda v: pcr_figure(v.full, x=v.x))]
