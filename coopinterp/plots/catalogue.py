"""Every figure the toolkit draws from a table, by name, with its caption: what `coopinterp plot` and `report`
write. Figures whose rows the table lacks are skipped with the reason."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from .ablation import ablation_figure, ablation_heatmap
from .attention import circuit_figure, layer_figure
from .behavior import behavior_figure
from .heatmaps import head_heatmap
from .layout import set_caption
from .llc import llc_figure
from .marks import Phase, phases
from .matrices import composition_figure, path_patching_figure
from .rows import MissingAnalysis, check_x
from .strategy import strategy_weights_figure
from .tokens import is_token_table, token_ablation_heatmap, token_loss_figure, token_path_patching_figure

INDUCTION_CAPTIONS = {
    "induction_strength": "Induction strength on flip of every head (row) at every checkpoint (column), on a diverging "
                          "scale centred at 0: blue where the query attends to the label of its class in context "
                          "(copying from the context, as ICL does), red where it attends to the other label (the "
                          "memorised answer), white where it prefers neither.",
    "induction_score": "Induction score of every head (row) at every checkpoint (column): its attention to the token "
                       "after an earlier copy of the current one, high for an induction head.",
}
RLLC_CAPTION = ("Refined LLC of every head (row) at every checkpoint (column), coloured on a log scale: which heads' "
                "weights the loss is most sensitive to, and when.")
PATH_PATCHING_CAPTION = ("Change in ciwl accuracy from the clean model when a sender head's output (row; all: every "
                         "sender) is mean-patched only into the query, key or value input of a receiver head "
                         "(column; all: every receiver), shown for CIWL because train accuracy saturates at 1, where "
                         "no patch can show: a red cell is a path CIWL runs through, a blue one a path whose removal "
                         "helps it.")


def induction_heatmap(table: pd.DataFrame, marks: list[Phase]) -> go.Figure:
    """Induction per head over training: the exemplar task's signed strength on flip, or a token run's score."""
    metric = "induction_score" if (table.metric == "induction_score").any() else "induction_strength"
    title = "Induction strength (flip)" if metric == "induction_strength" else "Induction score"
    fig = head_heatmap(table, "attention", metric, marks=marks, signed=metric == "induction_strength",
                       title=f"{title} per head over training")
    return set_caption(fig, INDUCTION_CAPTIONS[metric])


def attention_layers(table: pd.DataFrame) -> list[int]:
    """The layers with attention rows (layer 0 alone when there are none: its figure is then skipped)."""
    layers = table.layer[table.analysis == "attention"].dropna()
    return sorted({int(layer) for layer in layers}) or [0]


def figures(table: pd.DataFrame, metrics: pd.DataFrame | None = None,
            x: str = "step") -> tuple[dict[str, go.Figure], dict[str, str]]:
    """Every figure the table supports, by name, and why each missing one was skipped.

    `metrics` (a run's metrics.parquet, finer-grained) feeds the behavior curves and phase marks when given;
    the table's own behavior rows stay the clean baseline of ablation and path patching (same batches).
    """
    check_x(x)
    if is_token_table(table):
        return _build(token_makers(table, x))
    behavior_table = metrics if metrics is not None and (metrics.analysis == "behavior").any() else table
    marks = phases(behavior_table)
    makers: dict[str, Callable[[], go.Figure]] = {
        "behavior": lambda: behavior_figure(behavior_table, x=x, marks=marks),
        "circuit_evolution": lambda: circuit_figure(table, x=x, behavior_table=behavior_table),
    }
    for layer in attention_layers(table):
        makers[f"layer{layer}_attention"] = lambda layer=layer: layer_figure(table, layer, x=x, marks=marks)
    makers.update({
        "induction_heatmap": lambda: induction_heatmap(table, marks),
        "ablation": lambda: ablation_figure(table, x=x, marks=marks),
        "ablation_heatmap_icl": lambda: ablation_heatmap(table, "icl", marks=marks),
        "composition": lambda: composition_figure(table, marks=marks),
        "path_patching": lambda: set_caption(path_patching_figure(table, "ciwl", marks=marks), PATH_PATCHING_CAPTION),
        "path_patching_icl": lambda: path_patching_figure(table, "icl", marks=marks),
        "llc": lambda: llc_figure(table, x=x, behavior_table=behavior_table),
        "rllc_heatmap": lambda: set_caption(head_heatmap(
            table, "llc", "rllc", "train", marks=marks, log_floor=1e-3,
            title="Refined LLC of each head over training"), RLLC_CAPTION),
    })
    return _build(makers)


def token_makers(table: pd.DataFrame, x: str) -> dict[str, Callable[[], go.Figure]]:
    """The figures of a token model's table (no exemplar evaluators, so no phase marks). With several sources (a
    Markov run's markov_id and markov_ood) the per-head figures read the first; the strategy figure reads all."""
    full = table
    sources = table.evaluator[table.analysis == "behavior"].dropna().unique()
    if len(sources) > 1:
        table = table[table.evaluator.isna() | (table.evaluator == sources[0])]
    makers: dict[str, Callable[[], go.Figure]] = {"token_loss": lambda: token_loss_figure(table, x=x)}
    for layer in attention_layers(table):
        makers[f"layer{layer}_attention"] = lambda layer=layer: layer_figure(table, layer, x=x, marks=[])
    makers.update({
        "induction_heatmap": lambda: induction_heatmap(table, []),
        "ablation_heatmap": lambda: token_ablation_heatmap(table),
        "composition": lambda: composition_figure(table, marks=[]),
        "path_patching": lambda: token_path_patching_figure(table),
    })
    if (full.analysis == "strategy").any():  # a Markov-task run
        makers["strategy_weights"] = lambda: strategy_weights_figure(full, x=x)
    return makers


def _build(makers: dict[str, Callable[[], go.Figure]]) -> tuple[dict[str, go.Figure], dict[str, str]]:
    figs, skipped = {}, {}
    for name, make in makers.items():
        try:
            figs[name] = make()
        except MissingAnalysis as e:
            skipped[name] = str(e)
    return figs, skipped
