"""The house style: head labels and colours, evaluator colours, line dashes per layer, colour scales, log ticks.

A head keeps its colour in every figure of a model. Colours are drawn from OKLCH (a perceptually even colour
space): hues spread evenly over all of the model's heads, ordered L0H0, L1H0, ..., L0H1, L1H1, ..., so that the
heads of one layer (the lines most often compared) sit n_layers hue steps apart, as far apart as H hues can be,
and neighbouring layers alternate in lightness. Any number of layers and heads gets distinct colours this way.
"""
from __future__ import annotations

import math

import numpy as np

TEMPLATE = "plotly_white"
EVALUATOR_COLORS = {"train": "#444444", "icl": "#1f77b4", "ciwl": "#d62728", "flip": "#9467bd", "iwl": "#2ca02c"}
OTHER_HEADS_COLOR = "#c8c8c8"  # the heads a crowded panel does not single out
DIVERGING = "RdBu"  # signed values: red below 0, white at 0, blue above (zmid=0, symmetric range)
DIVERGING_REVERSED = "RdBu_r"  # signed values where above 0 is worse (a loss rising): red above 0
SEQUENTIAL = "Viridis"
HEAD_AXIS = "head (L = layer, H = head, 0-indexed)"
LAYER_DASHES = (("dot", "dotted"), ("solid", "solid"), ("dash", "dashed"), ("dashdot", "dash-dot"),
                ("longdash", "long dash"), ("longdashdot", "long dash-dot"))
FIRST_HUE = 255.0  # degrees: L0H0 is blue
LIGHTNESS = (0.55, 0.72, 0.63)  # OKLCH lightness by layer, cycling
CHROMA = 0.17


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def head_color(layer: int, head: int, n_layers: int = 2, n_heads: int = 8) -> str:
    """The colour of head (layer, head) in a model of n_layers x n_heads (see the module docstring)."""
    step = 360.0 / (n_layers * n_heads)
    hue = FIRST_HUE + step * (head * n_layers + layer)
    return _oklch_hex(LIGHTNESS[layer % len(LIGHTNESS)], CHROMA, hue)


def _oklch_hex(lightness: float, chroma: float, hue: float) -> str:
    """sRGB hex of an OKLCH colour (Ottosson's Oklab), clipped into the sRGB gamut."""
    a, b = chroma * math.cos(math.radians(hue)), chroma * math.sin(math.radians(hue))
    l_ = (lightness + 0.3963377774 * a + 0.2158037573 * b) ** 3
    m_ = (lightness - 0.1055613458 * a - 0.0638541728 * b) ** 3
    s_ = (lightness - 0.0894841775 * a - 1.2914855480 * b) ** 3
    linear = (4.0767416621 * l_ - 3.3077115913 * m_ + 0.2309699292 * s_,
              -1.2684380046 * l_ + 2.6097574011 * m_ - 0.3413193965 * s_,
              -0.0041960863 * l_ - 0.7034186147 * m_ + 1.7076147010 * s_)

    def encode(c: float) -> int:
        c = min(max(c, 0.0), 1.0)
        return round(255 * (12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055))

    return "#" + "".join(f"{encode(c):02x}" for c in linear)


def layers_text(layers: list[int]) -> str:
    """'layer 0' or 'layers 1–3' for a sorted run of layers."""
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"


def layer_dash(layer: int) -> str:
    """The line dash of a layer's heads in panels that mix layers (layer 0 dotted, layer 1 solid, ...)."""
    return LAYER_DASHES[layer % len(LAYER_DASHES)][0]


def dash_key(layers: list[int]) -> str:
    """How to tell layers apart in a mixed panel, e.g. 'L0 dotted, L1 solid'."""
    return ", ".join(f"L{layer} {LAYER_DASHES[layer % len(LAYER_DASHES)][1]}" for layer in layers)


def log_axis(**settings: object) -> dict:
    """A log axis with a labelled tick at each power of ten only (1, 10, 100, ...; 0.01, 0.1, ...) and an
    unlabelled grid line at 2-9 times each, instead of plotly's crowded '2, 5, 10, 2, 5' labels."""
    return dict(type="log", dtick=1, minor=dict(dtick="D1", showgrid=True, gridcolor="#f2f2f2"), **settings)


def diverging(values: object, reverse: bool = False) -> dict:
    """Heatmap settings for signed values: a diverging scale whose midpoint is 0, symmetric about it."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    span = float(np.abs(finite).max()) if finite.size else 0.0
    return dict(colorscale=DIVERGING_REVERSED if reverse else DIVERGING, zmid=0, zmin=-(span or 1.0), zmax=span or 1.0)
