"""CLI verb `minimal`: the minimal coopetition model."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import app, check_out, choices, console, friendly
from .plots import write_pngs_or_warn

FORMATS = ("html", "png", "csv")


@app.command("minimal")
@friendly
def minimal_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for minimal.parquet, minimal.html, minimal.png."),
    steps: int = typer.Option(16_000, help="Gradient-descent steps."),
    seed: int = typer.Option(7, help="Seed for targets and initial vectors."),
    init_scale: float = typer.Option(1.0, "--init-scale", help="Initial vectors ~ init_scale * N(0, I) (paper: 1)."),
    every: int = typer.Option(10, help="Record metrics every this many steps."),
    format_spec: str = typer.Option("html,png", "--format", help="Comma-separated extra outputs: html, png, csv."),
) -> None:
    """Run the minimal coopetition model: ICL (a-path) rises, then fades as CIWL (d-path) takes over."""
    from ..minimal import minimal_figure, run_minimal, summarize_minimal
    from ..tables import write_table

    check_out(out, folder=True)
    formats = set(choices(format_spec, FORMATS, "--format"))
    df = run_minimal(steps=steps, seed=seed, init_scale=init_scale, every=every)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_table(df, out / "minimal.parquet")]
    if "csv" in formats:
        written.append(write_table(df, out / "minimal.csv"))
    if formats & {"html", "png"}:
        fig = minimal_figure(df)
        if "html" in formats:
            fig.write_html(out / "minimal.html", include_plotlyjs=True)
            written.append(out / "minimal.html")
        if "png" in formats:
            written += write_pngs_or_warn({"minimal": fig}, out)
    s = summarize_minimal(df)
    overtakes = "never" if s.ciwl_overtakes_step is None else f"at step {s.ciwl_overtakes_step}"
    divot = ("none" if s.l2_divot_step is None
             else f"loss_L2 rises {s.l2_divot_height:.3f} above its running minimum at step {s.l2_divot_step}")
    console.print(f"ICL strength peaks at {s.icl_peak:.3f} (step {s.icl_peak_step}), ends at {s.icl_final:.3f}; "
                  f"CIWL overtakes {overtakes}, ends at {s.ciwl_final:.3f}; divot: {divot}", highlight=False)
    console.print("wrote " + ", ".join(map(str, written)), highlight=False)
