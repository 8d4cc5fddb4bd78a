"""`coopinterp plot | report | app`: circuit-evolution figures (offline HTML, PNG), a one-page report, the ablation app."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import CheckpointError, CoopError
from .common import app, choices, comma_list, console, err_console, friendly

FORMATS = ("html", "png")
ANALYSES_HELP = "Analyses to compute for a run (default: all but llc; llc rows are added where cached)."


def load_source(source: Path, analyses: Optional[str], n: int, seed: int,
                progress: bool) -> tuple:  # (DataFrame, DataFrame | None, dict | None, str); pandas loads lazily
    """(table, logged metrics or None, run config or None, name) from a run directory or a table file.

    A run is analysed with `analyze` (cached per step under RUN/analysis/, so only new steps cost time); without
    --analyses, the opt-in analyses (llc) join with whatever of them is cached, and are not computed.
    """
    from ..tables import read_table

    if source.is_dir():
        from ..analysis import OPT_IN, analyze
        from ..checkpoints import load_run
        from ..tables import concat

        run = load_run(source)
        names = comma_list(analyses) if analyses else None
        table = analyze(run, names, n=n, seed=seed, progress=progress)
        if names is None:
            table = concat([table, analyze(run, list(OPT_IN), n=n, seed=seed, progress=False, cached_only=True)])
        try:
            metrics = run.metrics
        except CheckpointError:
            metrics = None
        return table, metrics, run.config.to_dict(), run.name
    if source.suffix in (".parquet", ".csv"):
        if analyses:
            raise CoopError("--analyses applies to a run directory, not to a table file")
        return read_table(source), None, None, source.stem
    if not source.exists():
        raise CoopError(f"not found: {source} (give a run directory or a .parquet/.csv table)")
    raise CoopError(f"{source} is neither a run directory nor a .parquet/.csv table")


def write_pngs_or_warn(figs: dict, out: Path, scale: float = 2.0) -> list[Path]:
    """PNGs of `figs`, or none with a one-line warning saying how to get them (the command goes on)."""
    from .. import plots

    try:
        return plots.write_pngs(figs, out, scale=scale)
    except CoopError as e:
        err_console.print(f"[yellow]warning:[/] no PNGs written: {e}", highlight=False, soft_wrap=True)
        return []


def _report_skipped(skipped: dict[str, str]) -> None:
    for name, why in skipped.items():
        console.print(f"  [yellow]skipped[/] {name}: {why}", highlight=False)


@app.command("plot")
@friendly
def plot_cmd(
    source: Path = typer.Argument(..., help="Run directory, or a table (.parquet/.csv) from `coopinterp analyze`."),
    out: Path = typer.Option(..., "--out", help="Folder for the figures (created)."),
    format: str = typer.Option("html,png", "--format", help="Comma-separated: html (offline), png."),
    analyses: Optional[str] = typer.Option(None, "--analyses", help=ANALYSES_HELP),
    x: str = typer.Option("step", "--x", help="x axis of over-training figures: step or seqs_seen."),
    scale: float = typer.Option(2.0, "--scale", help="PNG pixels per layout pixel."),
    n: int = typer.Option(512, "--n", help="Sequences per evaluator batch (for a run)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation batches (for a run)."),
    progress: bool = typer.Option(True, help="Show the analysis progress bar."),
) -> None:
    """Write every circuit-evolution figure the table supports as offline HTML and/or PNG."""
    from .. import plots

    formats = choices(format.lower(), FORMATS, "--format")
    if x not in plots.X_AXES:
        raise CoopError(f"--x must be step or seqs_seen, got {x!r}")
    if not 0 < scale <= 8:
        raise CoopError(f"--scale must be in (0, 8], got {scale}")
    t0 = time.perf_counter()
    table, metrics, _, name = load_source(source, analyses, n, seed, progress)
    figs, skipped = plots.figures(table, metrics, x=x)
    if not figs:
        _report_skipped(skipped)
        raise CoopError(f"nothing to plot: the table of {name} has none of the rows any figure needs")
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        if "html" in formats:
            written += [plots.write_html(fig, out / f"{fig_name}.html") for fig_name, fig in figs.items()]
        if "png" in formats:
            written += write_pngs_or_warn(figs, out, scale)
    except OSError as e:
        raise CoopError(f"cannot write to {out}: {e.strerror or e}") from None
    console.print(f"{len(written)} files ({len(figs)} figures of [bold]{name}[/], {', '.join(formats)}) -> {out} "
                  f"in {time.perf_counter() - t0:.1f} s: {', '.join(figs)}", highlight=False)
    _report_skipped(skipped)


@app.command("report")
@friendly
def report_cmd(
    source: Path = typer.Argument(..., help="Run directory (or a table file: then without the config)."),
    out: Path = typer.Option(..., "--out", help="HTML file to write, e.g. report.html."),
    analyses: Optional[str] = typer.Option(None, "--analyses", help=ANALYSES_HELP),
    n: int = typer.Option(512, "--n", help="Sequences per evaluator batch (for a run)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation batches (for a run)."),
    progress: bool = typer.Option(True, help="Show the analysis progress bar."),
) -> None:
    """One self-contained offline HTML page: the run's config and every figure (one plotly.js copy)."""
    from .. import plots

    t0 = time.perf_counter()
    table, metrics, config, name = load_source(source, analyses, n, seed, progress)
    figs, skipped = plots.figures(table, metrics)
    try:
        plots.write_report(figs, out, f"coopinterp report: {name}", config, skipped)
    except OSError as e:
        raise CoopError(f"cannot write {out}: {e.strerror or e}") from None
    console.print(f"report of [bold]{name}[/] ({len(figs)} figures) -> {out} in {time.perf_counter() - t0:.1f} s",
                  highlight=False)
    _report_skipped(skipped)


@app.command("app")
@friendly
def app_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    port: int = typer.Option(8050, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    n: int = typer.Option(256, "--n", help="Sequences per evaluator batch."),
    step: Optional[int] = typer.Option(None, "--step", help="Checkpoint to open at (default: the last)."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Heads ticked at start, e.g. 0.3,1.5."),
) -> None:
    """Interactive head-ablation explorer in the browser (Dash): step slider, head grid, live evaluator table."""
    from ..analysis.engine import parse_heads
    from ..app import serve
    from ..checkpoints import load_run

    if not 0 < port < 65536:
        raise CoopError(f"--port must be in 1-65535, got {port}")
    run = load_run(run_dir)
    if step is not None:
        run.check_step(step)
    ticked = parse_heads(heads, run.config.model) if heads else []
    console.print(f"serving [bold]{run.name}[/] on http://{host}:{port}/ (Ctrl+C to stop)", highlight=False)
    serve(run, host=host, port=port, n=n, step=step, heads=ticked)
