"""Interactive ablation app (Dash) for every run: pick a checkpoint, toggle heads, see the ablated scores.

`Explorer` (explorer.py) holds the state and the computations and knows nothing about Dash; `kinds.py` holds what
differs per kind of model (the exemplar task's accuracy and loss, a token model's next-token loss), each computed
by the function `coopinterp ablate` calls; `page.py` lays out the page and wires its controls.
"""
from .explorer import Explorer
from .kinds import position_labels, scorer_for
from .page import attention_figure, curves_figure, make_app, render, render_attention, serve

__all__ = ["Explorer", "attention_figure", "curves_figure", "make_app", "position_labels", "render",
           "render_attention", "scorer_for", "serve"]
