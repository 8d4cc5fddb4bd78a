"""`coopinterp analyze`: the per-step metric table of a run, written to parquet or CSV."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import CoopError
from .common import REVISIONS_HELP, SOURCE_HELP, app, check_out, comma_ints, comma_list, console, friendly, \
    warn_identical


@app.command("analyze")
@friendly
def analyze_cmd(
    run_dir: Path = typer.Argument(..., help="A coopinterp run directory, a directory of Hugging Face checkpoint "
                                   "folders (step1000/, checkpoint-1000/, or --pattern), or hf:ORG/NAME (revisions "
                                   "in the local Hugging Face cache)."),
    analyses: Optional[str] = typer.Option(None, "--analyses", help="Comma-separated analyses (default: every one "
                                           "for the run's kind of model but the opt-in ones, which `coopinterp "
                                           "analyses` marks)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated checkpoint steps (default: all)."),
    n: int = typer.Option(512, "--n", help="Sequences per evaluator batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation batches."),
    source: Optional[str] = typer.Option(None, "--source", help=SOURCE_HELP),
    pattern: Optional[str] = typer.Option(None, "--pattern", help=r"Regex naming checkpoint folders, first group "
                                          r"the step (e.g. 'ckpt_(\d+)')."),
    revisions: Optional[str] = typer.Option(None, "--revisions", help=REVISIONS_HELP),
    option: list[str] = typer.Option([], "--option", help="An analysis option NAME.KEY=VALUE, e.g. llc.draws=100 "
                                     "(repeatable; `coopinterp analyses` lists them)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Table path, .parquet or .csv "
                                       "(default: RUN/analysis/table.parquet)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    recompute: bool = typer.Option(False, "--recompute", help="Ignore cached tables and compute everything again."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Checkpoints analysed at once, one process each "
                                          "(default: the cores this process may use, or COOPINTERP_WORKERS; with --ray "
                                          "local: Ray's CPUs)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Fan checkpoints out over Ray: 'local' starts Ray here, "
                                      "'auto' joins a running cluster (pip install 'coopinterp\\[ray]')."),
) -> None:
    r"""Compute the tidy per-step metric table (cached per step and analysis under RUN/analysis/).

    The opt-in `llc` analysis (needs `pip install 'coopinterp\[devinterp]'`) runs only when named in --analyses;
    its options (--option llc.KEY=VALUE) default to the values calibrated on the shipped demo (docs/reference.md).
    """
    from ..analysis import analyze
    from ..runs import open_run
    from ..tables import write_table

    if out is not None:
        check_out(out, (".parquet", ".csv"))
    names = comma_list(analyses) if analyses is not None else None
    options = parse_option_flags(option, names)
    run = open_run(run_dir, pattern=pattern, revisions=revisions)
    chosen = comma_ints(steps, "--steps") if steps is not None else None
    warn_identical(run, chosen)
    out = out or check_out(run.path / "analysis" / "table.parquet", (".parquet", ".csv"))
    t0 = time.perf_counter()
    df = analyze(run, names, steps=chosen, n=n, seed=seed,
                 progress=progress, recompute=recompute, workers=workers, options=options,
                 source=source, ray=ray)
    try:
        write_table(df, out)
    except OSError as e:
        raise CoopError(f"cannot write {out}: {e.strerror or e}") from None
    console.print(f"analyzed [bold]{run.name}[/]: {df.step.nunique()} checkpoints, {len(df)} rows "
                  f"in {time.perf_counter() - t0:.1f} s -> {out}", highlight=False)
    _summary(df)


def _summary(df) -> None:
    """Rows per analysis, and a few headline numbers at the last step."""
    last = df[df.step == df.step.max()]
    table = Table(title=f"at step {int(df.step.max())}")
    table.add_column("analysis")
    table.add_column("rows", justify="right")
    table.add_column("headline")
    for analysis, g in df.groupby("analysis", sort=False):
        table.add_row(str(analysis), str(len(g)), _headline(last[last.analysis == analysis]))
    console.print(table)


def _headline(g) -> str:
    from ..analysis import registry

    record = registry().get(str(g.analysis.iloc[0])) if len(g) else None
    return record.headline(g) if record is not None and record.headline is not None else ""


def parse_option_flags(flags: list[str], names: list[str] | None) -> dict[str, dict[str, str]] | None:
    """['llc.draws=100', ...] -> {'llc': {'draws': '100'}}; each analysis's record converts and checks the values."""
    options: dict[str, dict[str, str]] = {}
    for flag in flags:
        target, eq, value = flag.partition("=")
        name, dot, key = target.partition(".")
        if not (eq and dot and name and key):
            raise CoopError(f"bad --option {flag!r}: write NAME.KEY=VALUE, e.g. llc.draws=100")
        options.setdefault(name, {})[key] = value
    stray = sorted(set(options) - set(names or []))
    if stray:
        raise CoopError(f"--option {stray[0]}.* applies to the {stray[0]} analysis: add --analyses {stray[0]}")
    return options or None


@app.command("analyses")
@friendly
def analyses_cmd() -> None:
    """List every analysis: what it computes, which models it applies to, its options and figures."""
    from ..analysis import registry
    from ..analysis.record import describe_options
    from ..plots.catalogue import catalogue

    table = Table(title="analyses (coopinterp analyze --analyses NAME --option NAME.KEY=VALUE)")
    for column in ("name", "version", "models", "what it computes", "options (type = default)", "figures"):
        table.add_column(column)
    for name, record in registry().items():
        opts = "\n".join(f"{k}: {t} = {d}" for k, t, d in describe_options(record.options))
        opt_in = "" if not record.opt_in else " (opt-in)" if record.opt_in is True else \
            f" (opt-in on {', '.join(record.opt_in)})"
        table.add_row(name + opt_in, str(record.version), ", ".join(record.rows),
                      record.summary, opts, ", ".join(dict.fromkeys(f.name for f in catalogue() if f.analysis == name)))
    console.print(table)
