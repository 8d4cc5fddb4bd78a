"""`coopinterp sweep`: train a grid of configs in a process pool or on Ray, then print a summary table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ConfigError
from .common import app, check_device, check_out, console, friendly

STYLE = {"done": "green", "skipped": "cyan", "failed": "bold red"}


def results_table(results, title: str) -> Table:
    """run, status, final ICL / CIWL accuracy, seconds (and the error of a failed run)."""
    table = Table(title=title)
    for col, justify in (("run", "left"), ("status", "left"), ("icl acc", "right"), ("ciwl acc", "right"),
                         ("seconds", "right"), ("error", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in results:
        table.add_row(r.name, f"[{STYLE[r.status]}]{r.status}[/]", fmt(r.icl), fmt(r.ciwl), f"{r.seconds:.0f}",
                      r.error)
    return table


def print_seed_runs(runs, seconds: float) -> None:
    """Summary of `train --seeds`: one row per seed directory."""
    from ..sweep import Result, final_accuracies

    rows = [Result(run.path.name, "done", seconds, *final_accuracies(run)) for run in runs]
    console.print(results_table(rows, f"{len(runs)} seeds trained together ({seconds:.0f} s in all)"))


@app.command("sweep")
@friendly
def sweep_cmd(
    grid: Path = typer.Argument(..., help='Grid JSON: {"base": preset or RunConfig, "grid": {"task.eps": [...]}, '
                                          '"set": {...}}.'),
    out: Path = typer.Option(..., "--out", help="Sweep directory: one run directory per grid point."),
    workers: int = typer.Option(1, "--workers", help="Parallel runs (local processes, or Ray CPUs with --ray local)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Ray address: 'local' starts Ray here, 'auto' joins a "
                                                          "running cluster (needs pip install 'coopinterp\\[ray]')."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)."),
) -> None:
    """Train every run of a grid not finished yet; a failing run is reported and the others go on."""
    from ..sweep import run_sweep

    check_out(out, folder=True)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")

    def report(r) -> None:
        extra = f" ({r.seconds:.0f} s)" if r.status == "done" else f": {r.error}" if r.error else ""
        console.print(f"[{STYLE[r.status]}]{r.status}[/] {r.name}{extra}", highlight=False)

    results = run_sweep(grid, out, workers=workers, ray_address=ray, device=check_device(device), on_result=report)
    console.print(results_table(results, f"sweep {grid.name} -> {out}"))
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
