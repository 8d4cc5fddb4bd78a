"""CLI verbs `train`, `info` and `config`: make, extend and inspect runs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import CoopError
from .common import REVISIONS_HELP, app, check_device, check_out, console, damaged_checkpoints, fail, friendly, \
    warn, warn_identical

# the help names a few presets: listing the registry would import every task (torch) for `--help`; an unknown
# preset is an error that lists them all
PRESET_EXAMPLES = "a built-in task's preset, e.g. demo, quick, tiny, markov"


@app.command("train")
@friendly
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run directory to create, or to resume if it holds this run."),
    preset: Optional[str] = typer.Option(None, help=f"Preset: {PRESET_EXAMPLES} (or give --config)."),
    config: Optional[Path] = typer.Option(None, "--config", help="RunConfig JSON (from `coopinterp config`, or a "
                                                                 "run's run.json), instead of a preset."),
    seed: Optional[int] = typer.Option(None, help="Override train.seed."),
    seeds: Optional[str] = typer.Option(None, help="Train many seeds at once ('0-31' or '0,2,5') into OUT/seed_{s}/."),
    steps: Optional[int] = typer.Option(None, help="Override train.steps."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a run from a --preset or a --config.

    The same command resumes an interrupted run (bit-identically on CPU; Ctrl-C saves) and, with a larger
    --steps, extends a finished one; without a terminal it prints a progress line every 30 s.
    """
    from ..config import RunConfig
    from ..tasks import PRESETS, preset as get_preset
    from ..training import TrainingInterrupted, default_device, train

    check_out(out, folder=True)
    if (preset is None) == (config is None):
        raise CoopError(f"train needs --preset ({', '.join(PRESETS)}) or --config FILE" if preset is None
                        else "give --preset or --config, not both")
    rc = RunConfig.from_json(config) if config else get_preset(preset)
    overrides = {k: v for k, v in (("seed", seed), ("steps", steps)) if v is not None}
    if overrides:
        rc = rc.replace(train=overrides)
    device = check_device(device) or default_device()
    t0 = time.perf_counter()
    if seeds is not None and seed is not None:
        raise CoopError("give --seed or --seeds, not both")
    try:
        if seeds is not None:
            from .sweep import print_seed_runs
            from ..training import parse_seeds, train_seeds

            runs = train_seeds(rc, parse_seeds(seeds), out, progress=progress, device=device)
            print_seed_runs(runs, time.perf_counter() - t0)
            return
        run = train(rc, out, progress=progress, device=device)
    except TrainingInterrupted as e:
        fail(str(e), code=130)
    except KeyboardInterrupt:
        fail("stopped at once by a second Ctrl-C; the same command resumes from the last evaluation", code=130)
    console.print(f"trained [bold]{rc.name}[/] -> {run.path} ({len(run.steps)} checkpoints, "
                  f"{time.perf_counter() - t0:.0f} s on {device})")
    _print_final_metrics(run.path)


@app.command("info")
@friendly
def info_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory, a directory of Hugging Face checkpoint folders, or "
                                   "hf:ORG/NAME (revisions in the local Hugging Face cache)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help=r"Regex naming checkpoint folders, first group "
                                          r"the step (e.g. 'ckpt_(\d+)')."),
    revisions: Optional[str] = typer.Option(None, "--revisions", help=REVISIONS_HELP),
    check: bool = typer.Option(False, "--check", help="Also load every checkpoint into the model and check that "
                                                      "its weights are finite (slower; builds models)."),
) -> None:
    """Show a run's config, checkpoint steps (headers verified: a damaged one is named, and the rest still shown)
    and final evaluator table; for a directory of Hugging Face checkpoints, its architecture and steps."""
    from ..checkpoints import list_checkpoints, read_run_config
    from ..runs import NativeRun, load_run
    from ..runs.hub import is_hub_spec

    if is_hub_spec(run_dir) or revisions is not None:
        return _outside_info(run_dir, pattern, check, revisions)
    if not run_dir.is_dir():
        raise CoopError(f"run directory not found: {run_dir}")
    if not (run_dir / "run.json").exists():
        return _outside_info(run_dir, pattern, check)
    cfg = read_run_config(run_dir)
    steps = list_checkpoints(run_dir)
    native = NativeRun(run_dir, cfg, steps)
    damaged = damaged_checkpoints(native)
    for error in damaged.values() if not check else ():  # --check fails on the first one instead
        warn(error)
    warn_identical(native)
    console.print(f"[bold]{run_dir}[/]  ({cfg.name})")
    for section in ("task", "model", "train"):
        fields = ", ".join(f"{k}={v}" for k, v in cfg.to_dict()[section].items())
        console.print(f"  [cyan]{section}[/]: {fields}", highlight=False)
    shown = ", ".join(f"{s} (damaged)" if s in damaged else str(s) for s in steps) or "none (a metrics-only run)"
    console.print(f"  [cyan]checkpoints[/] ({len(steps)}): {shown}", highlight=False)
    if check and steps:
        load_run(run_dir).verify()
        console.print(f"  verified: all {len(steps)} checkpoints load into the model and are finite", highlight=False)
    _print_final_metrics(run_dir)


def _outside_info(run_dir: Path, pattern: Optional[str], check: bool, revisions: Optional[str] = None) -> None:
    """A Hugging Face run: architecture, shape, checkpoint folders (damaged ones named, identical ones warned of);
    --check boots each."""
    from ..runs import open_run

    run = open_run(run_dir, pattern=pattern, revisions=revisions)
    damaged = damaged_checkpoints(run)
    for error in damaged.values():
        warn(error)
    warn_identical(run)
    shape = {k: run.config[k] for k in ("num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
                                         "hidden_size", "n_embd", "vocab_size") if k in run.config}
    console.print(f"[bold]{run_dir}[/]  (Hugging Face checkpoints, {run.architecture})", highlight=False)
    console.print("  [cyan]model[/]: " + ", ".join(f"{k}={v}" for k, v in shape.items()), highlight=False)
    shown = ", ".join(f"{s} (damaged)" if s in damaged else str(s) for s in run.steps)
    console.print(f"  [cyan]checkpoints[/] ({len(run.steps)}): {shown}", highlight=False)
    if check:
        for step in run.steps:
            bad = [name for name, p in run.model(step).bridge.named_parameters() if not p.isfinite().all()]
            if bad:
                raise CoopError(f"checkpoint {run.folders[step]} holds non-finite values in {', '.join(bad[:3])}")
        console.print(f"  verified: all {len(run.steps)} checkpoints boot in transformer-lens and are finite",
                      highlight=False)


def _print_final_metrics(run_dir: Path) -> None:
    from ..tables import read_table

    path = run_dir / "metrics.parquet"
    if not path.is_file():
        console.print(f"  (no metrics.parquet in {run_dir})")
        return
    m = read_table(path)
    m = m[m.analysis == "behavior"]
    last = m[m.step == m.step.max()]
    metrics = list(dict.fromkeys(last.metric))  # what the task logs: acc and loss, or a loss alone (Markov)
    table = Table(title=f"evaluators at step {int(last.step.max())}")
    table.add_column("evaluator")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for ev, g in last.groupby("evaluator", sort=False):
        vals = dict(zip(g.metric, g.value))
        table.add_row(str(ev), *(f"{vals[m]:.3f}" if m in vals else "-" for m in metrics))
    console.print(table)


@app.command("config")
@friendly
def config_cmd(
    source: Optional[Path] = typer.Argument(None, help="A run directory or run.json (default: the --preset)."),
    preset: str = typer.Option("demo", help=f"Preset to export when no SOURCE is given: {PRESET_EXAMPLES}."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON here (default: print it)."),
) -> None:
    """Export a bare RunConfig JSON (from a run or a preset), to edit and pass to `train --config`."""
    from ..config import RunConfig
    from ..tasks import preset as get_preset
    from ..tables import atomic_path

    if out is not None:
        check_out(out, (".json",))
        if out.exists():
            raise CoopError(f"{out} exists; choose another --out (nothing is overwritten)")
    if source is None:
        rc = get_preset(preset)
    else:
        rc = RunConfig.from_json(source / "run.json" if source.is_dir() else source)
    if out is None:
        print(rc.to_json())
        return
    with atomic_path(out) as tmp:
        tmp.write_text(rc.to_json() + "\n")
    console.print(f"wrote {out}", highlight=False)
