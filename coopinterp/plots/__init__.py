"""Plotly figures of circuit evolution, drawn from the tidy per-step table, and their offline HTML/PNG export.

Every figure function takes a tidy table (tables.COLUMNS) and returns a `go.Figure` with a one-sentence caption
(`caption(fig)`); a table without the rows a figure needs raises `MissingAnalysis` (a CoopError) naming the
analysis to run. Figures scale to any number of layers and heads. Over-training figures put steps on a log x axis
(step 0 cannot sit on it and is left out) and mark two phases found from the behavior rows: where ICL accuracy
peaks and where CIWL accuracy first overtakes it after that peak.

Modules: `rows` (reading the table), `style` (labels, colours, scales), `layout` (layout helpers, captions),
`marks` (phase marks), `lines` (per-head lines), the figures (`behavior`, `attention`, `heatmaps`, `ablation`,
`matrices`, `llc`), `catalogue` (every figure by name) and `export` (HTML, PNG, report). Heads are labelled
`L{layer}H{head}`, 0-indexed like the rest of coopinterp: L0 is the paper's "Layer 1".
"""
from .ablation import ablation_figure, ablation_heatmap
from .attention import circuit_figure, layer0_figure, layer1_figure, layer_figure
from .behavior import behavior_figure
from .catalogue import figures
from .export import PNG_HELP, report_html, static_figure, write_html, write_pngs, write_report
from .heatmaps import head_heatmap, step_heatmap
from .layout import apply_layout, caption, panel_legend, set_caption
from .llc import llc_figure
from .marks import ICL_EMERGED, Phase, mark_phases, phases
from .matrices import composition_figure, path_patching_figure
from .rows import X_AXES, MissingAnalysis, behavior, check_x, select
from .style import EVALUATOR_COLORS, TEMPLATE, head_color, head_label

__all__ = [
    "ablation_figure", "ablation_heatmap", "circuit_figure", "layer0_figure", "layer1_figure", "layer_figure",
    "behavior_figure", "figures", "PNG_HELP", "report_html", "static_figure", "write_html", "write_pngs",
    "write_report", "head_heatmap", "step_heatmap", "apply_layout", "caption", "panel_legend", "set_caption",
    "llc_figure", "ICL_EMERGED", "Phase", "mark_phases", "phases", "composition_figure", "path_patching_figure",
    "X_AXES", "MissingAnalysis", "behavior", "check_x", "select", "EVALUATOR_COLORS", "TEMPLATE", "head_color",
    "head_label",
]
