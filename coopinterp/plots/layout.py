"""Layout helpers every figure shares: title and margins, one legend per panel, subplot geometry, captions.

A figure's caption (one sentence on how to read it) travels with the figure in `layout.meta`, so that the
HTML export and the report can print it under the figure.
"""
from __future__ import annotations

import plotly.graph_objects as go

from .style import TEMPLATE

WIDTH = 1100  # layout pixels of a figure without an explicit width (its PNG width; HTML fills the page)


def apply_layout(fig: go.Figure, title: str, height: int = 450) -> go.Figure:
    """The house layout: template, title at the top left, margins, compact legends."""
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top"), template=TEMPLATE, height=height,
                      margin=dict(t=90, l=70, r=30, b=60),
                      legend=dict(groupclick="togglegroup", tracegroupgap=0, font=dict(size=11)))
    return fig


def panel_legend(fig: go.Figure, name: str, yaxis: str, title: str) -> None:
    """A legend beside one subplot (plotly >= 5.15 lays out several legends): each panel names its own lines."""
    fig.update_layout({name: dict(x=1.01, xanchor="left", y=domain(fig, yaxis)[1], yanchor="top", title_text=title,
                                  font=dict(size=10), tracegroupgap=0, groupclick="toggleitem")})


def axis_layout(fig: go.Figure, axis: str) -> go.layout.XAxis | go.layout.YAxis:
    """The layout object of an axis named as traces name it ('x', 'y2', ...)."""
    return fig.layout[f"{axis[0]}axis{axis[1:]}"]


def domain(fig: go.Figure, axis: str) -> tuple[float, float]:
    """An axis's domain (fractions of the plot area); (0, 1) when unset."""
    span = axis_layout(fig, axis).domain
    return (float(span[0]), float(span[1])) if span else (0.0, 1.0)


def subplot_axes(fig: go.Figure) -> list[tuple[str, str]]:
    """The (x axis, y axis) of every subplot holding a trace, in trace order."""
    return list(dict.fromkeys((t.xaxis or "x", t.yaxis or "y") for t in fig.data))


def subplot_pixels(fig: go.Figure, xaxis: str, yaxis: str) -> tuple[float, float]:
    """The width and height in layout pixels of the subplot on these axes."""
    margin = fig.layout.margin
    width = (fig.layout.width or WIDTH) - (margin.l or 0) - (margin.r or 0)
    height = (fig.layout.height or 450) - (margin.t or 0) - (margin.b or 0)
    (x0, x1), (y0, y1) = domain(fig, xaxis), domain(fig, yaxis)
    return width * (x1 - x0), height * (y1 - y0)


def set_caption(fig: go.Figure, text: str) -> go.Figure:
    """Attach a one-sentence caption (how to read the figure) to it."""
    meta = dict(fig.layout.meta or {})
    meta["caption"] = text
    fig.update_layout(meta=meta)
    return fig


def caption(fig: go.Figure) -> str:
    """A figure's caption ('' if it has none)."""
    meta = fig.layout.meta
    return str(meta.get("caption", "")) if isinstance(meta, dict) else ""
