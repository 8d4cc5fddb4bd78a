"""`coopinterp plot | report | app`: circuit-evolution figures (offline HTML, PNG), a one-page report, the ablation app."""
from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import CheckpointError, CoopError
from .common import REVISIONS_HELP, SOURCE_HELP, app, check_out, choices, comma_list, console, damaged_checkpoints, friendly, warn

FORMATS = ("html", "png")
ANALYSES_HELP = "Analyses to compute for a run (default: all but llc; llc rows are added where cached)."
SOURCE = typer.Option(None, "--source", help=SOURCE_HELP)
PATTERN = typer.Option(None, "--pattern", help=r"Regex naming Hugging Face checkpoint folders, first group the step.")
REVISIONS = typer.Option(None, "--revisions", help=REVISIONS_HELP)


def load_source(source: Path, analyses: Optional[str], n: int, seed: int, progress: bool,
                pattern: Optional[str] = None, data: Optional[str] = None, revisions: Optional[str] = None) -> tuple:
    # returns (DataFrame, DataFrame | None, dict | None, str); pandas loads lazily
    """(table, logged metrics or None, run config or None, name) from a run directory or a table file.

    A run is analysed with `analyze` (cached per step under RUN/analysis/, so only new steps cost time); without
    --analyses, the opt-in analyses (llc) join with whatever of them is cached, and are not computed.
    """
    from ..runs.hub import is_hub_spec
    from ..tables import read_table

    if source.is_dir() or is_hub_spec(source):
        from ..runs import open_run

        run = open_run(source, pattern=pattern, revisions=revisions)
        table = analyze_run(run, comma_list(analyses) if analyses else None, n, seed, progress, data)
        metrics = run.metrics if not run.metrics.empty else None
        config = run.info()["config"]
        return table, metrics, config, run.name
    if source.suffix in (".parquet", ".csv"):
        if analyses:
            raise CoopError("--analyses applies to a run directory, not to a table file")
        return read_table(source), None, None, source.stem
    if not source.exists():
        raise CoopError(f"not found: {source} (give a run directory or a .parquet/.csv table)")
    raise CoopError(f"{source} is neither a run directory nor a .parquet/.csv table")


def analyze_run(run, names: Optional[list[str]], n: int, seed: int, progress: bool, source: Optional[str] = None):
    """The analysis table of a run for its figures: `names` (default: all but the opt-in ones, which join where
    cached) at every checkpoint; a damaged checkpoint file is named in a warning and adds only its cached tables,
    so one bad file does not stop a run whose tables are cached."""
    from ..analysis import analyze, registry
    from ..tables import concat

    damaged = damaged_checkpoints(run)
    tables = [analyze(run, names, steps=[s for s in run.steps if s not in damaged], n=n, seed=seed,
                      progress=progress, source=source)]
    if damaged:
        tables.append(analyze(run, names, steps=list(damaged), n=n, seed=seed, progress=False, cached_only=True,
                              source=source))
    opt_in = [name for name, a in registry().items() if a.applies(run.model_kinds) and a.opt_in_on(run.model_kinds)]
    if names is None and opt_in:
        tables.append(analyze(run, opt_in, n=n, seed=seed, progress=False, cached_only=True, source=source))
    table = concat(tables).sort_values("step", kind="stable", ignore_index=True)
    for step, error in damaged.items():
        warn(f"{error}: " + ("its cached tables are used" if (table.step == step).any()
                             else f"step {step} is left out (no cached tables)"))
    return table


def write_pngs_or_warn(figs: dict, out: Path, scale: float = 2.0) -> list[Path]:
    """PNGs of `figs`, or none with a one-line warning saying how to get them (the command goes on)."""
    from .. import plots

    try:
        return plots.write_pngs(figs, out, scale=scale)
    except CoopError as e:
        warn(f"no PNGs written: {e}")
        return []


def _report_skipped(skipped: dict[str, str]) -> None:
    for name, why in skipped.items():
        console.print(f"  [yellow]skipped[/] {name}: {escape(why)}", highlight=False)


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
    data: Optional[str] = SOURCE,
    pattern: Optional[str] = PATTERN,
    revisions: Optional[str] = REVISIONS,
) -> None:
    """Write every circuit-evolution figure the table supports as offline HTML and/or PNG."""
    from .. import plots

    check_out(out, folder=True)
    formats = choices(format.lower(), FORMATS, "--format")
    if x not in plots.X_AXES:
        raise CoopError(f"--x must be step or seqs_seen, got {x!r}")
    if not 0 < scale <= 8:
        raise CoopError(f"--scale must be in (0, 8], got {scale}")
    t0 = time.perf_counter()
    table, metrics, _, name = load_source(source, analyses, n, seed, progress, pattern, data, revisions)
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
    data: Optional[str] = SOURCE,
    pattern: Optional[str] = PATTERN,
    revisions: Optional[str] = REVISIONS,
) -> None:
    """One self-contained offline HTML page: the run's config and every figure (one plotly.js copy)."""
    from .. import plots

    check_out(out, (".html",))
    t0 = time.perf_counter()
    table, metrics, config, name = load_source(source, analyses, n, seed, progress, pattern, data, revisions)
    figs, skipped = plots.figures(table, metrics)
    try:
        plots.write_report(figs, out, f"coopinterp report: {name}", config, skipped)
    except OSError as e:
        raise CoopError(f"cannot write {out}: {e.strerror or e}") from None
    console.print(f"report of [bold]{name}[/] ({len(figs)} figures) -> {out} in {time.perf_counter() - t0:.1f} s",
                  highlight=False)
    _report_skipped(skipped)


def check_port(host: str, port: int) -> None:
    """Fail at once, before the app is built, if the server could not bind `host`:`port` (another program has
    it); the probe binds as the server does (SO_REUSEADDR), so a port left in TIME_WAIT counts as free."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise CoopError(f"--host {host}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CoopError(f"port {port} on {host} is in use: pass --port") from None
            raise CoopError(f"cannot serve on {host}:{port}: {e.strerror}") from None


@app.command("app")
@friendly
def app_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory (any task's, or Hugging Face checkpoint folders), "
                                   "or hf:ORG/NAME (revisions in the local Hugging Face cache)."),
    port: int = typer.Option(8050, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    n: int = typer.Option(512, "--n", help="Sequences per evaluator batch (as analyze and ablate)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation batches (as analyze and ablate)."),
    step: Optional[int] = typer.Option(None, "--step", help="Checkpoint to open at (default: the last)."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Heads ticked at start, e.g. 0.3,1.5."),
    source: Optional[str] = SOURCE,
    pattern: Optional[str] = PATTERN,
    revisions: Optional[str] = REVISIONS,
) -> None:
    """Interactive head-ablation explorer in the browser (Dash): step slider, head grid, live scores per batch, one
    head's attention on one sequence."""
    from ..analysis.engine import parse_heads
    from ..app import scorer_for, serve
    from ..runs import open_run

    if not 0 < port < 65536:
        raise CoopError(f"--port must be in 1-65535, got {port}")
    if n < 2:
        raise CoopError(f"--n must be >= 2, got {n}")
    check_port(host, port)
    run = open_run(run_dir, pattern=pattern, revisions=revisions)
    scorer_for(run)
    run.source_key(source)
    if step is not None:
        run.check_step(step)
    ticked = parse_heads(heads, run.model(run.steps[-1]).cfg) if heads else []
    data = "its evaluators" if source is None else source
    console.print(f"serving [bold]{escape(run.name)}[/] on http://{host}:{port}/ (Ctrl+C to stop); batches of n={n} "
                  f"from {escape(data)}, seed {seed}", highlight=False)
    serve(run, host=host, port=port, n=n, seed=seed, step=step, heads=ticked, source=source)
