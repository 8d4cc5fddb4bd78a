"""Writing figures out: self-contained offline HTML (with the caption), PNG through kaleido, a one-page report."""
from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from ..errors import CoopError
from ..tables import atomic_path
from .layout import WIDTH, caption

PNG_HELP = "PNG needs kaleido 0.2.1 (it ships its own Chromium): pip install 'kaleido==0.2.1'"
CAPTION_STYLE = "font-family:sans-serif;font-size:14px;color:#333;max-width:1100px;margin:4px 70px 24px"
LAYERS_NOTE = ("Layers and heads are 0-indexed everywhere (L0H5: layer 0, head 5); in the paper's 2-layer model, "
               "layer 0 is its \"Layer 1\" and layer 1 its \"Layer 2\".")


def _caption_html(fig: go.Figure) -> str:
    text = caption(fig)
    return f'<p class="caption" style="{CAPTION_STYLE}">{html.escape(text)}</p>' if text else ""


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """A self-contained HTML file (plotly.js embedded: works offline) with the caption under the figure, written
    atomically."""
    path = Path(path)
    page = fig.to_html(include_plotlyjs=True, full_html=True)
    head, _, tail = page.rpartition("</body>")
    with atomic_path(path) as tmp:
        tmp.write_text(f"{head}{_caption_html(fig)}</body>{tail}", encoding="utf-8")
    return path


def write_pngs(figs: dict[str, go.Figure], out_dir: str | Path, scale: float = 2.0) -> list[Path]:
    """One PNG per figure through kaleido, each written atomically.

    kaleido 0.2.1 brings its own headless Chromium inside the pip wheel, so PNGs need no system browser (the
    kaleido 1.x that plotly 6+ requires drives a system Chrome, which pip cannot install). A failure is one
    CoopError that names the fix; callers that can go on without PNGs warn and continue.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        still, path = static_figure(fig), out_dir / f"{name}.png"
        try:
            image = pio.to_image(still, format="png", scale=scale, width=int(still.layout.width or WIDTH),
                                 height=int(still.layout.height or 450), engine="kaleido")
        except Exception as e:  # a missing or broken kaleido raises ValueError, RuntimeError, OSError, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CoopError(f"PNG export failed ({type(e).__name__}: {first}); {PNG_HELP}") from None
        with atomic_path(path) as tmp:
            tmp.write_bytes(image)
        paths.append(path)
    return paths


def static_figure(fig: go.Figure) -> go.Figure:
    """A copy for a still image: a slider figure shows its slider's active step, without the slider."""
    fig = go.Figure(fig)
    if fig.layout.sliders:
        slider = fig.layout.sliders[0]
        label = slider.steps[slider.active].label
        fig.layout.sliders = ()  # plotly 5's update_layout(sliders=[]) keeps the old slider
        fig.update_layout(title_text=f"{fig.layout.title.text}, step {label}")
    return fig


def report_html(figs: dict[str, go.Figure], title: str, config: dict | None = None,
                skipped: dict[str, str] | None = None) -> str:
    """One offline HTML page: the run's config, then every figure with its caption, one embedded plotly.js."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(LAYERS_NOTE)}</p>"]
    if config is not None:
        parts.append("<h2>Run config</h2>" + "".join(
            f"<h3>{html.escape(section)}</h3><table>" + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in values.items())
            + "</table>" for section, values in config.items() if isinstance(values, dict)))
    for name, fig in figs.items():
        parts.append(f'<h2 id="{name}">{html.escape(name.replace("_", " "))}</h2>'
                     + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}")
                     + _caption_html(fig))
    if skipped:
        parts.append("<h2>Skipped figures</h2><ul>" + "".join(
            f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items()) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em} table{border-collapse:collapse}"
             " th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:13px}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style><script>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>")


def write_report(figs: dict[str, go.Figure], path: str | Path, title: str, config: dict | None = None,
                 skipped: dict[str, str] | None = None) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(report_html(figs, title, config, skipped), encoding="utf-8")
    return path
