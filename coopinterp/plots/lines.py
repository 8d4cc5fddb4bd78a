"""One line per head over training, for any number of layers and heads.

A panel with more than CROWDED heads colours only its salient heads (those whose largest |value| is the largest:
the heads with an effect) and draws the rest thin and grey under one legend entry, so that a few heads that matter
are not lost among many near zero. Panels that mix layers tell them apart by line dash.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from .style import OTHER_HEADS_COLOR, dash_key, head_color, head_label, layer_dash

CROWDED = 10  # a panel with more head lines than this colours only its salient heads
SALIENT = 6  # at most this many heads coloured in a crowded panel ...
SALIENT_SHARE = 0.2  # ... each reaching at least this share of its panel's largest |value|
OTHER = "other heads"

Head = tuple[int, int]


def heads_of(rows: pd.DataFrame) -> list[Head]:
    return sorted({(int(layer), int(head)) for layer, head in zip(rows.layer, rows["head"])})


def salient_heads(panels: Sequence[pd.DataFrame]) -> set[Head] | None:
    """The heads to colour in panels that share a legend, or None (colour them all) when they are not crowded.

    A head's salience in a panel is its largest |value| over training over the panel's largest; a head counts
    with its best panel, and the SALIENT most salient heads with a salience of at least SALIENT_SHARE are kept.
    """
    if max((len(heads_of(rows)) for rows in panels), default=0) <= CROWDED:
        return None
    salience: dict[Head, float] = {}
    for rows in panels:
        peak = rows.value.abs().groupby([rows.layer.astype(int), rows["head"].astype(int)]).max()
        largest = float(peak.max()) if len(peak) else 0.0
        for (layer, head), value in peak.items():
            share = float(value) / largest if largest > 0 else 0.0
            salience[int(layer), int(head)] = max(salience.get((int(layer), int(head)), 0.0), share)
    ranked = sorted(salience, key=lambda h: -salience[h])[:SALIENT]
    return {h for h in ranked if salience[h] >= SALIENT_SHARE}


def legend_title(rows: pd.DataFrame, salient: set[Head] | None, what: str = "largest |score|") -> str:
    """The legend title of `head_lines`: whose heads, how layers are told apart, which heads are coloured."""
    layers = sorted({int(layer) for layer in rows.layer})
    lines = [f"layer-{layers[0]} head"] if len(layers) == 1 else ["head", dash_key(layers)]
    if salient is not None:
        lines += [f"coloured: {what}", "grey: the other heads"]
    return "<br>".join(lines)


def head_lines(fig: go.Figure, rows: pd.DataFrame, x: str, row: int, col: int, y_hover: str,
               shape: tuple[int, int], salient: set[Head] | None = None, show_legend: bool = True,
               legend: str = "legend") -> None:
    """One line per head of `rows` (tidy rows of one metric) on subplot (row, col), coloured by `head_color` for a
    model of `shape` (n_layers, n_heads), dashed by layer where the rows mix layers; heads outside `salient` grey."""
    mixed = rows.layer.nunique() > 1
    grey_shown = any(t.legendgroup == OTHER and t.showlegend and t.legend == legend for t in fig.data)
    groups = list(rows.groupby([rows.layer.astype(int), rows["head"].astype(int)], sort=True))
    coloured = [salient is None or (int(layer), int(head)) in salient for (layer, head), _ in groups]
    for ((layer, head), g), colour in sorted(zip(groups, coloured), key=lambda pair: pair[1]):  # grey ones below
        label = head_label(int(layer), int(head))
        dash = layer_dash(int(layer)) if mixed else None
        hover = f"{label}<br>{x} %{{x}}<br>{y_hover} %{{y:.3f}}<extra></extra>"
        if colour:
            fig.add_trace(go.Scatter(x=g[x], y=g.value, name=label, legendgroup=label, showlegend=show_legend,
                                     legend=legend, mode="lines+markers", marker=dict(size=4),
                                     line=dict(color=head_color(int(layer), int(head), *shape), dash=dash),
                                     hovertemplate=hover), row=row, col=col)
        else:
            fig.add_trace(go.Scatter(x=g[x], y=g.value, name=OTHER, legendgroup=OTHER, legendrank=2000,
                                     showlegend=show_legend and not grey_shown, legend=legend, mode="lines",
                                     line=dict(color=OTHER_HEADS_COLOR, width=1, dash=dash), opacity=0.8,
                                     hovertemplate=hover), row=row, col=col)
            grey_shown = grey_shown or show_legend
