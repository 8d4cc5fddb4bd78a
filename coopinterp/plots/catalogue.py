"""Every figure the toolkit draws from a table, by name, with its caption: what `coopinterp plot` and `report`
write. The catalogue is built from the `Figure` records the plot modules declare (`FIGURES`, figure.py); figures
whose rows the table lacks are skipped with the reason."""
from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..tables import concat
from .figure import Figure, TableKind, View
from .marks import phases, stages
from .rows import MissingAnalysis, check_x
from .style import EVALUATOR_COLORS
from .tokens import is_token_table

# The order figures appear in a report: by the analysis they draw, these first, the others after them by name.
ANALYSIS_ORDER = ("behavior", "attention", "ablation", "composition", "path_patching", "llc", "strategy",
                  "trajectory")


@functools.lru_cache(maxsize=None)
def catalogue() -> tuple[Figure, ...]:
    """Every figure of the plot modules, in report order."""
    found = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        found += getattr(importlib.import_module(f"{__package__}.{info.name}"), "FIGURES", [])
    rank = {name: i for i, name in enumerate(ANALYSIS_ORDER)}
    return tuple(sorted(found, key=lambda f: (rank.get(f.analysis, len(rank)), f.analysis)))


def table_kind(table: pd.DataFrame) -> TableKind:
    """A token model's table, the exemplar task's (its evaluators), or another task's."""
    if is_token_table(table):
        return "tokens"
    evaluators = table.evaluator.dropna().astype(str)  # (a table of NA evaluators alone has no .str to split)
    return "exemplar" if evaluators.str.split("/").str[0].isin(EVALUATOR_COLORS).any() else "other"


def view(table: pd.DataFrame, metrics: pd.DataFrame | None, x: str, kind: TableKind) -> View:
    """What the figures read. A token table with several sources (a Markov run's markov_id and markov_ood) shows its
    first in the per-head figures (`full` keeps all); an exemplar table's phase marks come from its behavior rows,
    or the finer-grained metrics.parquet when given; every table's stage marks from its trajectory rows, which the
    behavior rows carry along so that figures that find their marks there draw them too."""
    if kind == "tokens":
        sources = table.evaluator[table.analysis == "behavior"].dropna().unique()
        shown = table[table.evaluator.isna() | (table.evaluator == sources[0])] if len(sources) > 1 else table
        return View(shown, table, table, stages(table), x)
    behavior = metrics if metrics is not None and (metrics.analysis == "behavior").any() else table
    if behavior is not table:
        behavior = concat([behavior, table[table.analysis == "trajectory"]])
    return View(table, table, behavior, phases(behavior) if kind == "exemplar" else stages(table), x)


def figures(table: pd.DataFrame, metrics: pd.DataFrame | None = None,
            x: str = "step") -> tuple[dict[str, go.Figure], dict[str, str]]:
    """Every figure the table supports, by name, and why each missing one was skipped.

    A figure for this kind of table is drawn or skipped with its reason; a figure for any table (`tables` None) is
    drawn where the table has its analysis's rows. `metrics` (a run's metrics.parquet, finer-grained) feeds the
    behavior curves and phase marks when given; the table's own behavior rows stay the clean baseline of ablation
    and path patching (same batches).
    """
    check_x(x)
    kind = table_kind(table)
    shown = view(table, metrics, x, kind)
    present = set(table.analysis.dropna().astype(str))
    figs, skipped = {}, {}
    for figure in catalogue():
        if (kind not in figure.tables) if figure.tables is not None else (figure.analysis not in present):
            continue
        layers = _layers(shown.table, figure.analysis) if figure.per_layer else [None]
        for layer in layers:
            name = figure.name.format(layer=layer)
            try:
                figs[name] = figure.draw(shown) if layer is None else figure.draw(shown, layer)
            except MissingAnalysis as e:
                skipped[name] = str(e)
    return figs, skipped


def _layers(table: pd.DataFrame, analysis: str) -> list[int]:
    """The layers with rows of `analysis` (layer 0 alone when there are none: its figure is then skipped)."""
    layers = table.layer[table.analysis == analysis].dropna()
    return sorted({int(layer) for layer in layers}) or [0]
