"""Attention signatures of the heads over training: one figure per layer, and the circuit-evolution summary.

Which signatures a layer shows follows from where a head sits. A layer that a later layer reads (all but the last)
can hold the heads that prepare a signal, scored where they look back (previous-token, self, duplicate-token); a
layer after the first can read that signal, and its heads are scored where they use it (induction, skip-trigram,
copying). A 1-layer model shows both kinds. Exemplar-task runs and token runs (outside models) have different
metrics; each figure shows those the table holds.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .behavior import behavior_figure
from .figure import Figure
from .heatmaps import head_heatmap
from .layout import apply_layout, panel_legend, set_caption
from .lines import head_lines, legend_title, salient_heads
from .marks import Phase, mark_phases, phases
from .rows import MissingAnalysis, model_shape, on_log_x, select, x_title
from .style import layers_text, log_axis

WEIGHT = "attention weight"
DIFFERENCE = "attention difference<br>(chosen − other label)"
WRITES, READS = "writes", "reads"  # a head that prepares what a later layer reads / a head that reads it
METRICS = {  # metric: (panel title, y axis, role, how to read it)
    "prev_token_score": ("previous-token score: attention to the position before", WEIGHT, WRITES,
                         "the previous-token score is the attention to the position before (in the exemplar task, "
                         "from each label to its exemplar; a previous-token head scores near 1)"),
    "self_score": ("self score: attention to itself", WEIGHT, WRITES, "the self score the attention to itself"),
    "duplicate_token_score": ("duplicate-token score: attention to earlier copies", WEIGHT, WRITES,
                              "the duplicate-token score the attention to earlier copies of the same token"),
    "induction_strength": ("induction strength (flip): same-class label minus other", DIFFERENCE, READS,
                           "induction strength on flip is the query's attention to the label of its class in "
                           "context minus to the other label (positive: copying from the context; negative: "
                           "attending to the memorised answer)"),
    "skip_trigram_score": ("skip-trigram score (ciwl): true label minus other", DIFFERENCE, READS,
                           "the skip-trigram score on ciwl is the attention to the query's true label minus the "
                           "other"),
    "induction_score": ("induction score: to the token after an earlier copy", WEIGHT, READS,
                        "the induction score is the attention to the token after an earlier copy of the current one"),
    "copying_score": ("OV copying score (weights)", "positive eigenvalue share", READS,
                      "the copying score is the share of the head's OV circuit that copies the token it attends to"),
}


def writer_layers(n_layers: int) -> list[int]:
    """Layers whose heads can prepare what a later layer reads: all but the last (a 1-layer model's only layer)."""
    return list(range(max(n_layers - 1, 1)))


def reader_layers(n_layers: int) -> list[int]:
    """Layers whose heads can read an earlier layer: all but the first (a 1-layer model's only layer)."""
    return list(range(1 if n_layers > 1 else 0, n_layers))


def layer_metrics(rows: pd.DataFrame, layer: int, n_layers: int) -> list[str]:
    """The attention metrics the table holds for `layer` that apply to where it sits, in METRICS order."""
    roles = {WRITES} if layer in writer_layers(n_layers) else set()
    roles |= {READS} if layer in reader_layers(n_layers) else set()
    present = set(rows.metric[rows.layer == layer])
    return [m for m, (_, _, role, _) in METRICS.items() if m in present and role in roles]


def layer_figure(table: pd.DataFrame, layer: int, x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """One layer's heads over training, a panel per attention signature that applies to the layer, two a row."""
    rows = select(table, "attention")
    metrics = layer_metrics(rows, layer, int(rows.layer.max()) + 1)
    if not metrics:
        raise MissingAnalysis(f"no attention rows for layer {layer} in the table")
    n_rows = (len(metrics) + 1) // 2
    fig = make_subplots(n_rows, 2, subplot_titles=[METRICS[m][0] for m in metrics], horizontal_spacing=0.07,
                        vertical_spacing=0.32 / n_rows)
    parts = {m: on_log_x(select(rows, "attention", metric=m, layer=layer), x) for m in metrics}
    salient, shape = salient_heads(list(parts.values())), model_shape(table)
    for i, metric in enumerate(metrics):
        head_lines(fig, parts[metric], x, i // 2 + 1, i % 2 + 1, metric, shape, salient, show_legend=i == 0)
        if i % 2 == 0 or METRICS[metric][1] != METRICS[metrics[i - 1]][1]:
            fig.update_yaxes(title=METRICS[metric][1], row=i // 2 + 1, col=i % 2 + 1)
    fig.update_xaxes(log_axis(title=x_title(x)))
    names = [METRICS[m][0].split(":")[0].split(" (")[0] for m in metrics]
    what = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    apply_layout(fig, f"Layer {layer}: {what}", height=450 if n_rows == 1 else 360 * n_rows + 100)
    fig.update_layout(legend_title_text=legend_title(parts[metrics[0]], salient))
    reading = "; ".join(METRICS[m][3] for m in metrics)
    set_caption(fig, f"Each layer-{layer} head's attention over training (log step axis): {reading}; layers are "
                     f"0-indexed, so layer {layer} is the paper's Layer {layer + 1}.")
    return mark_phases(fig, phases(table) if marks is None else marks, x)


def layer0_figure(table: pd.DataFrame, x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Layer 0 (the paper's Layer 1): previous-token vs self attention, per head."""
    return layer_figure(table, 0, x, marks)


def layer1_figure(table: pd.DataFrame, x: str = "step", marks: Sequence[Phase] | None = None) -> go.Figure:
    """Layer 1 (the paper's Layer 2): induction strength (flip) and skip-trigram score (ciwl), per head."""
    return layer_figure(table, 1, x, marks)


def circuit_figure(table: pd.DataFrame, x: str = "step", behavior_table: pd.DataFrame | None = None) -> go.Figure:
    """The circuit-evolution summary: behavior (where the table has accuracy), then each circuit's attention
    signature, on one shared step axis: the previous-token score of the layers later ones read, then the
    induction and skip-trigram (or copying) scores of the layers that read them."""
    behavior_table = table if behavior_table is None else behavior_table
    rows = select(table, "attention")
    n_layers, shape = int(rows.layer.max()) + 1, model_shape(table)
    panels = []  # (metric, layers, legend)
    for choices, layers, legend in ((("prev_token_score",), writer_layers(n_layers), "legend2"),
                                    (("induction_strength", "induction_score"), reader_layers(n_layers), "legend3"),
                                    (("skip_trigram_score", "copying_score"), reader_layers(n_layers), "legend3")):
        metric = next((m for m in choices if (rows.metric == m).any()), None)
        if metric is not None:
            panels.append((metric, layers, legend))
    with_behavior = ((behavior_table.analysis == "behavior") & (behavior_table.metric == "acc")).any()
    titles = ["evaluator accuracy"] * with_behavior + [f"{layers_text(layers)}: {METRICS[m][0].split(':')[0]}"
                                                       for m, layers, _ in panels]
    fig = make_subplots(len(titles), 1, shared_xaxes=True, vertical_spacing=0.18 / len(titles),
                        subplot_titles=titles)
    if with_behavior:
        for trace in behavior_figure(behavior_table, x=x, marks=[]).data:
            fig.add_trace(trace, row=1, col=1)
        fig.update_yaxes(title="accuracy", range=[0, 1.02], row=1, col=1)
    parts = [on_log_x(select(rows, "attention", metric=m), x) for m, _, _ in panels]
    parts = [part[part.layer.isin(layers)] for part, (_, layers, _) in zip(parts, panels)]
    groups = {legend: [p for p, panel in zip(parts, panels) if panel[2] == legend] for _, _, legend in panels}
    salient = {legend: salient_heads(group) for legend, group in groups.items()}
    first_row = {}
    for i, (part, (metric, _, legend)) in enumerate(zip(parts, panels)):
        row = i + 1 + with_behavior
        head_lines(fig, part, x, row, 1, metric, shape, salient[legend], show_legend=legend not in first_row,
                   legend=legend)
        first_row.setdefault(legend, row)
        fig.update_yaxes(title=METRICS[metric][1], row=row, col=1)
    fig.update_xaxes(log_axis())
    fig.update_xaxes(title=x_title(x), row=len(titles), col=1)
    apply_layout(fig, "Circuit evolution: behavior and attention signatures over training",
                 height=260 * len(titles) + 10)
    fig.update_layout(margin=dict(r=170))
    if with_behavior:
        panel_legend(fig, "legend", "y", "evaluator")
    for legend, group in groups.items():
        row = first_row[legend]
        panel_legend(fig, legend, "y" if row == 1 else f"y{row}", legend_title(pd.concat(group), salient[legend]))
    set_caption(fig, "Behavior (top) and, on the same log step axis, each head's attention signature: the "
                     "previous-token score of the layers later ones read (what induction needs), then, for the layers "
                     "that read them, induction (positive: attending to the in-context answer) and the skip-trigram "
                     "or copying score (attending to, or copying, the memorised label); dotted lines mark the ICL "
                     "peak and where CIWL overtakes ICL.")
    return mark_phases(fig, phases(behavior_table) if with_behavior else [], x)


INDUCTION_CAPTIONS = {
    "induction_strength": "Induction strength on flip of every head (row) at every checkpoint (column), on a diverging "
                          "scale centred at 0: blue where the query attends to the label of its class in context "
                          "(copying from the context, as ICL does), red where it attends to the other label (the "
                          "memorised answer), white where it prefers neither.",
    "induction_score": "Induction score of every head (row) at every checkpoint (column): its attention to the token "
                       "after an earlier copy of the current one, high for an induction head.",
}


def induction_heatmap(table: pd.DataFrame, marks: Sequence[Phase]) -> go.Figure:
    """Induction per head over training: the exemplar task's signed strength on flip, or a token run's score."""
    metric = "induction_score" if (table.metric == "induction_score").any() else "induction_strength"
    title = "Induction strength (flip)" if metric == "induction_strength" else "Induction score"
    fig = head_heatmap(table, "attention", metric, marks=marks, signed=metric == "induction_strength",
                       title=f"{title} per head over training")
    return set_caption(fig, INDUCTION_CAPTIONS[metric])


FIGURES = [
    Figure("circuit_evolution", "attention", lambda v: circuit_figure(v.table, x=v.x, behavior_table=v.behavior),
           ("exemplar",)),
    Figure("layer{layer}_attention", "attention", lambda v, layer: layer_figure(v.table, layer, x=v.x, marks=v.marks),
           ("exemplar", "tokens"), per_layer=True),
    Figure("induction_heatmap", "attention", lambda v: induction_heatmap(v.table, v.marks), ("exemplar", "tokens")),
]
