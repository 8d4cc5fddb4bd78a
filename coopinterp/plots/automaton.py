"""The automaton figures of an RNN run (analysis `automaton`): its size over training beside the losses, and its
minimised state diagram at one step."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure import Figure
from .layout import apply_layout, set_caption
from .rows import MissingAnalysis, on_log_x, select, x_title
from .style import log_axis

SIZE_CAPTION = ("Left: the number of states of the automaton read from the hidden states (grouped within eps; grey) "
                "and of its minimised form (black), at each checkpoint. Right: the loss on the training sequences "
                "and on random sequences of each validation length. A tree grows while the training loss falls; "
                "merging down to two states makes the long-sequence loss fall.")
GRAPH_CAPTION = ("The minimised automaton: state 0 (ringed) is the initial state, the fill is the output (the "
                 "parity the readout names; white: none), arrows are labelled by the symbol read. Left: the largest "
                 "drawn automaton over training; right: the last checkpoint.")
PARITY_COLORS = {0.0: "#4c78a8", 1.0: "#f58518"}


def automaton_size_figure(table: pd.DataFrame, x: str = "step") -> go.Figure:
    rows = on_log_x(select(table, "automaton"), x)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["automaton states", "loss (squared error)"],
                        horizontal_spacing=0.1)
    for metric, label, color in (("n_states", "read from hidden states", "#999999"),
                                 ("n_states_min", "minimised", "#000000")):
        r = rows[rows.metric == metric]
        fig.add_trace(go.Scatter(x=r[x], y=r.value, name=label, mode="lines+markers", line=dict(color=color)),
                      row=1, col=1)
    losses = rows[rows.metric.isin(["train_loss", "val_loss"])]
    for ev, g in losses.groupby("evaluator", sort=False):
        fig.add_trace(go.Scatter(x=g[x], y=g.value, name=f"loss {ev}", mode="lines+markers",
                                 line=dict(dash="solid" if ev == "train" else "dot")), row=1, col=2)
    fig.update_yaxes(type="log", title_text="states", row=1, col=1)
    fig.update_yaxes(type="log", title_text="mean squared error", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(log_axis(title=x_title(x)), row=1, col=col)
    apply_layout(fig, "The automaton over training: its size and the loss it gives on long sequences")
    return set_caption(fig, SIZE_CAPTION)


def diagram(rows: pd.DataFrame) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """(outputs per state, transitions (state, symbol) -> state) of one step's diagram rows."""
    out = rows[rows.metric == "state_output"]
    outputs = out.value.to_numpy()[np.argsort(out.component.astype(int).to_numpy())]
    edges = {}
    for component, value in zip(rows.component[rows.metric == "transition"], rows.value[rows.metric == "transition"]):
        state, symbol = component.split(">")
        edges[int(state), int(symbol)] = int(value)
    return outputs, edges


def positions(n: int, edges: dict[tuple[int, int], int]) -> np.ndarray:
    """Node positions: x the breadth-first depth from state 0, y spread within a depth."""
    depth = {0: 0}
    for s in range(n):  # states are numbered breadth first, so one pass finds every depth
        for symbol in (0, 1):
            t = edges.get((s, symbol))
            if t is not None and t not in depth and s in depth:
                depth[t] = depth[s] + 1
    xy = np.zeros((n, 2))
    for d in set(depth.values()):
        members = [s for s in range(n) if depth.get(s) == d]
        xy[members, 0] = d
        xy[members, 1] = np.linspace(-1, 1, len(members)) * (len(members) > 1)
    return xy


def draw_diagram(fig: go.Figure, rows: pd.DataFrame, col: int) -> None:
    outputs, edges = diagram(rows)
    xy = positions(len(outputs), edges)
    axis = "" if col == 1 else str(col)
    for (s, symbol), t in edges.items():
        if s == t:
            fig.add_annotation(x=xy[s, 0], y=xy[s, 1], text=f"↻{symbol}", showarrow=False, yshift=18 - 36 * symbol,
                               xref=f"x{axis}", yref=f"y{axis}")
            continue
        d = xy[t] - xy[s]
        offset = np.array([-d[1], d[0]]) / np.linalg.norm(d) * 0.06 * (1 if symbol else -1)
        (x0, y0), (x1, y1) = xy[s] + offset, xy[t] + offset
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref=f"x{axis}", yref=f"y{axis}", axref=f"x{axis}",
                           ayref=f"y{axis}", showarrow=True, arrowhead=2, arrowwidth=1, arrowcolor="#555555",
                           standoff=11, startstandoff=11)
        mid = (xy[s] + xy[t]) / 2 + 2.5 * offset
        fig.add_annotation(x=mid[0], y=mid[1], text=str(symbol), showarrow=False, font=dict(size=10),
                           xref=f"x{axis}", yref=f"y{axis}")
    colors = [PARITY_COLORS.get(o, "#ffffff") for o in outputs]
    fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=[str(s) for s in range(len(xy))],
                             textposition="middle center", showlegend=False,
                             marker=dict(size=20, color=colors, line=dict(color="#000000",
                                                                          width=[3] + [1] * (len(xy) - 1)))),
                  row=1, col=col)
    fig.update_xaxes(visible=False, range=[-0.5, xy[:, 0].max() + 0.5], row=1, col=col)
    fig.update_yaxes(visible=False, range=[-1.3, 1.3], row=1, col=col)


def automaton_graph_figure(table: pd.DataFrame, step: int | None = None) -> go.Figure:
    """The minimised automaton at the step with the most drawn states (or at `step`) beside the last step's."""
    rows = select(table, "automaton")
    drawn = rows[rows.metric == "state_output"]
    if drawn.empty:
        raise MissingAnalysis("no automaton was small enough to draw at any step")
    sizes = drawn.groupby("step").size()
    steps = [int(sizes.idxmax()) if step is None else step, int(sizes.index.max())]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"step {s} ({sizes.get(s, 0)} states)" for s in steps])
    for col, s in enumerate(steps, 1):
        draw_diagram(fig, rows[rows.step == s], col)
    apply_layout(fig, "The minimised automaton read from the hidden states", height=500)
    return set_caption(fig, GRAPH_CAPTION)


FIGURES = [Figure("automaton_size", "automaton", lambda v: automaton_size_figure(v.full, x=v.x)),
           Figure("automaton_graph", "automaton", lambda v: automaton_graph_figure(v.full))]
