"""The `coopinterp` command line (typer + rich). Bad input gives a one-line error, never a traceback."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import CoopError

app = typer.Typer(help="Study how ICL and CIWL circuits form, compete and cooperate across training.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly(fn: Callable) -> Callable:
    """Turn coopinterp's errors into one-line messages with exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoopError as e:
            fail(str(e))
    return wrapper


def _device(device: Optional[str]) -> Optional[str]:
    if device is not None and device.split(":")[0] not in ("cpu", "cuda"):
        raise CoopError(f"--device must be cpu or cuda, got {device!r}")
    return device


@app.command("train")
@friendly
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run directory to create, or to resume if it holds this run."),
    preset: str = typer.Option("demo", help="Preset: paper, demo or tiny."),
    config: Optional[Path] = typer.Option(None, "--config", help="RunConfig JSON; replaces the preset."),
    seed: Optional[int] = typer.Option(None, help="Override train.seed."),
    seeds: Optional[str] = typer.Option(None, help="Train many seeds at once ('0-31' or '0,2,5') into OUT/seed_{s}/."),
    steps: Optional[int] = typer.Option(None, help="Override train.steps."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a run (resumable: the same command continues an interrupted run)."""
    from .config import RunConfig, preset as get_preset
    from .train import TrainingInterrupted, default_device, train

    rc = RunConfig.from_json(config) if config else get_preset(preset)
    overrides = {k: v for k, v in (("seed", seed), ("steps", steps)) if v is not None}
    if overrides:
        rc = rc.replace(train=overrides)
    device = _device(device) or default_device()
    t0 = time.perf_counter()
    if seeds is not None:
        from .cli_sweep import print_seed_runs
        from .multiseed import parse_seeds, train_seeds

        if seed is not None:
            raise CoopError("give --seed or --seeds, not both")
        try:
            runs = train_seeds(rc, parse_seeds(seeds), out, progress=progress, device=device)
        except TrainingInterrupted as e:
            fail(str(e), code=130)
        print_seed_runs(runs, time.perf_counter() - t0)
        return
    try:
        run = train(rc, out, progress=progress, device=device)
    except TrainingInterrupted as e:
        fail(str(e), code=130)
    console.print(f"trained [bold]{rc.name}[/] -> {run.path} ({len(run.steps)} checkpoints, "
                  f"{time.perf_counter() - t0:.0f} s on {device})")
    _print_final_metrics(run)


@app.command("info")
@friendly
def info_cmd(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Show a run's config, checkpoint steps and final evaluator table."""
    from .checkpoints import load_run

    run = load_run(run_dir)
    cfg = run.config
    console.print(f"[bold]{run.path}[/]  ({cfg.name})")
    for section in ("task", "model", "train"):
        fields = ", ".join(f"{k}={v}" for k, v in cfg.to_dict()[section].items())
        console.print(f"  [cyan]{section}[/]: {fields}", highlight=False)
    console.print(f"  [cyan]checkpoints[/] ({len(run.steps)}): {', '.join(map(str, run.steps))}", highlight=False)
    _print_final_metrics(run)


def _print_final_metrics(run) -> None:
    from .errors import CheckpointError

    try:
        m = run.metrics
    except CheckpointError as e:
        console.print(f"  ({e})")
        return
    m = m[m.analysis == "behavior"]
    last = m[m.step == m.step.max()]
    table = Table(title=f"evaluators at step {int(last.step.max())}")
    table.add_column("evaluator")
    table.add_column("acc", justify="right")
    table.add_column("loss", justify="right")
    for ev, g in last.groupby("evaluator", sort=False):
        vals = dict(zip(g.metric, g.value))
        table.add_row(str(ev), f"{vals.get('acc', float('nan')):.3f}", f"{vals.get('loss', float('nan')):.3f}")
    console.print(table)


def main() -> None:
    """Entry point: usage errors (bad flag, missing option) become one line too."""
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err_console.print("[bold red]error:[/] aborted")
        sys.exit(130)
    except TyperException as e:  # typer's vendored click errors: UsageError, BadParameter, ...
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message:
            err_console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


# Subcommands live in their own modules and register on `app` when imported.
from . import cli_minimal  # noqa: E402,F401
from . import cli_analysis  # noqa: E402,F401
from . import cli_ablate  # noqa: E402,F401
from . import cli_sweep  # noqa: E402,F401
from . import cli_plots  # noqa: E402,F401
