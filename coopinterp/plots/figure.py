"""What a figure declares about itself: one `Figure` record per figure, listed in its plot module's `FIGURES`.

An analysis record names the figures drawn from its rows (`Analysis.figures`); the catalogue (catalogue.py) finds
each name's `Figure` in the plot modules and draws it from a `View` of the table. Adding a figure is adding a
function and a `Figure` to a plot module, and its name to the analysis record: nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import pandas as pd
import plotly.graph_objects as go

from .marks import Phase

TableKind = Literal["exemplar", "tokens", "other"]


@dataclass(frozen=True)
class View:
    """What a figure reads: the table (a token table with several sources keeps its first source's rows), every row
    (`full`), the behavior rows the phase marks come from (metrics.parquet where given), the marks and the x axis."""

    table: pd.DataFrame
    full: pd.DataFrame
    behavior: pd.DataFrame
    marks: list[Phase]
    x: str


@dataclass(frozen=True)
class Figure:
    """A figure drawn from the rows of `analysis`: `draw(view)`, or `draw(view, layer)` for one figure per layer
    (`per_layer`: `name` holds `{layer}`). `tables` are the kinds of table it is drawn for (a missing analysis is
    then reported as skipped); None: any, and only when the table has the analysis's rows."""

    name: str
    analysis: str
    draw: Callable[..., go.Figure]
    tables: tuple[TableKind, ...] | None = None
    per_layer: bool = False
