"""Circuits over training (the `circuit` analysis): the smallest faithful circuit's size and faithfulness at each
checkpoint, how much it overlaps the previous and the final one (Jaccard), which edges it holds at each step, and the
circuit itself drawn as a layered graph."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.circuit import overlap
from ..analysis.graph import edge_name, sender_name
from .figure import Figure
from .layout import apply_layout, set_caption
from .rows import select
from .style import diverging

SIGN_COLORS = {True: "#b2182b", False: "#2166ac"}  # an edge that carries the behaviour (negative score), or not


def steps_x(rows: pd.DataFrame) -> dict:
    """A log step axis when no step is 0, else linear."""
    return dict(type="log") if (rows.step > 0).all() else {}


def circuit_size_figure(table: pd.DataFrame) -> go.Figure:
    rows = select(table, "circuit")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["smallest faithful circuit", "faithfulness"])
    for metric, name, dash in (("circuit_size", "edges", "solid"), ("circuit_nodes", "nodes", "dot")):
        at = rows[rows.metric == metric].sort_values("step")
        fig.add_trace(go.Scatter(x=at.step, y=at.value, name=name, mode="lines+markers", line=dict(dash=dash)), 1, 1)
    for metric, name in (("circuit_faithfulness", "of that circuit"), ("faithfulness_auc", "area under curve")):
        for build, at in rows[rows.metric == metric].sort_values("step").groupby("component"):
            fig.add_trace(go.Scatter(x=at.step, y=at.value, name=f"{name} ({build})", mode="lines+markers"), 1, 2)
    fig.update_xaxes(title_text="training step", **steps_x(rows))
    fig.update_yaxes(title_text="count", type="log", row=1, col=1)
    fig.update_yaxes(title_text="normalised faithfulness", row=1, col=2)
    apply_layout(fig, "The circuit over training: its size and faithfulness")
    return set_caption(fig, "Left: edges and nodes of the smallest circuit whose exact-patching faithfulness "
                       "(metric(circuit) - metric(corrupted)) / (metric(clean) - metric(corrupted)) reaches the "
                       "threshold, at each checkpoint. Right: that circuit's faithfulness, and the area under "
                       "faithfulness against the fraction of edges kept (1: a few edges carry everything).")


def circuit_jaccard_figure(table: pd.DataFrame) -> go.Figure:
    rows = overlap(table)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["against the previous checkpoint", "against the final one"])
    for col, reference in enumerate(("previous", "final"), 1):
        for (members, weighted), at in rows[rows.reference == reference].groupby(["members", "weighted"]):
            fig.add_trace(go.Scatter(x=at.step, y=at.jaccard, mode="lines+markers",
                                     name=f"{members}{', score-weighted' if weighted else ''}",
                                     legendgroup=f"{members}{weighted}", showlegend=col == 1,
                                     line=dict(dash="dot" if weighted else "solid",
                                               color="#1f77b4" if members == "edges" else "#ff7f0e")), 1, col)
    fig.update_xaxes(title_text="training step", **steps_x(rows) if len(rows) else {})
    fig.update_yaxes(title_text="Jaccard", range=[0, 1.02])
    apply_layout(fig, "How much the circuit changes: Jaccard overlap over training")
    return set_caption(fig, "Jaccard overlap |A ∩ B| / |A ∪ B| of the circuit's edges (blue) and nodes (orange) with "
                       "the previous checkpoint's (left) and the final one's (right); dotted: weighted by each "
                       "member's share of the circuit's |scores| (sum of minima over sum of maxima).")


def circuit_membership_figure(table: pd.DataFrame) -> go.Figure:
    rows = select(table, "circuit", metric="circuit_edge")
    rows = rows[rows.evaluator == rows.evaluator.iloc[0]]
    names = [edge_name(r.src_layer, r.src_head, r.layer, r.head, r.component)
             for r in rows.itertuples()]
    wide = rows.assign(edge=names).pivot_table(index="edge", columns="step", values="value", aggfunc="first")
    wide = wide.loc[wide.notna().sum(1).sort_values(ascending=False, kind="stable").index]
    fig = go.Figure(go.Heatmap(z=wide.to_numpy(), x=[str(s) for s in wide.columns], y=list(wide.index),
                               colorbar=dict(title="score"), hoverongaps=False, **diverging(wide.to_numpy())))
    fig.update_xaxes(title_text="training step", type="category")
    fig.update_yaxes(title_text="edge", autorange="reversed")
    apply_layout(fig, "Which edges the circuit holds at each step", height=max(450, 18 * len(wide) + 150))
    return set_caption(fig, "Each row an edge that is in the smallest faithful circuit at some checkpoint, coloured "
                       "by its score (the change of the metric when that edge alone is corrupted; negative: it "
                       "carries the behaviour) where it is in the circuit, blank where it is not.")


def node_position(layer: int, head, component: str, n_heads: int) -> tuple[float, float]:
    """(x, y) of a node: layers left to right (input at -1, logits last), heads top to bottom, MLPs below them."""
    if component in ("input", "logits"):
        return layer, (n_heads - 1) / 2
    return layer, n_heads + 0.5 if pd.isna(head) else float(head)


def circuit_graph_figure(table: pd.DataFrame, step: int | None = None) -> go.Figure:
    rows = select(table, "circuit", metric="circuit_edge")
    rows = rows[rows.evaluator == rows.evaluator.iloc[0]]
    step = int(rows.step.max()) if step is None else step
    rows = rows[rows.step == step]
    n_heads = int(pd.concat([table["head"], table.src_head]).max()) + 1
    nodes = select(table, "circuit", metric="circuit_node")
    nodes = nodes[(nodes.step == step) & (nodes.evaluator == rows.evaluator.iloc[0])]
    fig = go.Figure()
    biggest = rows.value.abs().max() or 1.0
    for r in rows.itertuples():
        x0, y0 = node_position(r.src_layer, r.src_head, "input" if r.src_layer < 0 else "head" if
                               pd.notna(r.src_head) else "mlp", n_heads)
        x1, y1 = node_position(r.layer, r.head, r.component, n_heads)
        y1 = y1 + {"q": -0.15, "k": 0.0, "v": 0.15}.get(r.component, 0.0)
        name = edge_name(r.src_layer, r.src_head, r.layer, r.head, r.component)
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
                                 text=f"{name}: {r.value:+.3g}",
                                 line=dict(color=SIGN_COLORS[r.value < 0], width=1 + 7 * abs(r.value) / biggest)))
    labels = ["logits" if c == "logits" else sender_name(l, h)
              for l, h, c in zip(nodes.layer, nodes["head"], nodes.component)]
    xy = [node_position(l, h, c, n_heads) for l, h, c in zip(nodes.layer, nodes["head"], nodes.component)]
    fig.add_trace(go.Scatter(x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", text=labels,
                             textposition="top center", showlegend=False, marker=dict(size=16, color="#444444"),
                             hovertext=[f"{t}: Σ|score| {v:.3g}" for t, v in zip(labels, nodes.value)],
                             hoverinfo="text"))
    fig.update_xaxes(title_text="layer (input left, logits right)", dtick=1, zeroline=False)
    fig.update_yaxes(title_text="head (MLP below)", autorange="reversed", showticklabels=False, zeroline=False)
    apply_layout(fig, f"The circuit at step {step}: {len(rows)} edges")
    return set_caption(fig, "The smallest faithful circuit as a layered graph: nodes are the input, heads, MLPs and "
                       "the logits; an edge into a head ends a little above (query), at (key) or below (value) it. "
                       "Red: the edge carries the behaviour (corrupting it alone lowers the metric), blue: it "
                       "works against it; width: |score|.")


FIGURES = [Figure("circuit_size", "circuit", lambda v: circuit_size_figure(v.table)),
           Figure("circuit_jaccard", "circuit", lambda v: circuit_jaccard_figure(v.table)),
           Figure("circuit_membership", "circuit", lambda v: circuit_membership_figure(v.table)),
           Figure("circuit_graph", "circuit", lambda v: circuit_graph_figure(v.table))]
