"""`coopinterp analyze`: the per-step metric table of a run, written to parquet or CSV."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import CoopError
from .common import app, check_out, comma_ints, comma_list, console, friendly

LLC = "llc analysis (SGLD)"


@app.command("analyze")
@friendly
def analyze_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    analyses: Optional[str] = typer.Option(None, "--analyses", help="Comma-separated analyses "
                                           "(default: all but the opt-in llc)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated checkpoint steps (default: all)."),
    n: int = typer.Option(512, "--n", help="Sequences per evaluator batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation batches."),
    out: Optional[Path] = typer.Option(None, "--out", help="Table path, .parquet or .csv "
                                       "(default: RUN/analysis/table.parquet)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    recompute: bool = typer.Option(False, "--recompute", help="Ignore cached tables and compute everything again."),
    workers: int = typer.Option(1, "--workers", help="Checkpoints analysed at once, one process each "
                                                     "(use the number of free cores)."),
    llc_lr: Optional[float] = typer.Option(None, "--llc-lr", help="llc: SGLD step size.", rich_help_panel=LLC),
    llc_localization: Optional[float] = typer.Option(None, "--llc-localization", help="llc: pull towards the "
                                                     "checkpoint (gamma).", rich_help_panel=LLC),
    llc_nbeta: Optional[float] = typer.Option(None, "--llc-nbeta", help="llc: inverse temperature "
                                              "(default batch / log batch).", rich_help_panel=LLC),
    llc_chains: Optional[int] = typer.Option(None, "--llc-chains", help="llc: SGLD chains.", rich_help_panel=LLC),
    llc_draws: Optional[int] = typer.Option(None, "--llc-draws", help="llc: SGLD steps per chain averaged.",
                                            rich_help_panel=LLC),
    llc_burnin: Optional[int] = typer.Option(None, "--llc-burnin", help="llc: SGLD steps per chain left out first.",
                                             rich_help_panel=LLC),
    llc_batch_size: Optional[int] = typer.Option(None, "--llc-batch-size", help="llc: sequences per SGLD step.",
                                                 rich_help_panel=LLC),
    llc_seed: Optional[int] = typer.Option(None, "--llc-seed", help="llc: seed of the batches and the noise.",
                                           rich_help_panel=LLC),
    llc_heads: Optional[bool] = typer.Option(None, "--llc-heads/--no-llc-heads", help="llc: also each head's "
                                             "refined LLC.", rich_help_panel=LLC),
) -> None:
    r"""Compute the tidy per-step metric table (cached per step and analysis under RUN/analysis/).

    The opt-in `llc` analysis (needs `pip install 'coopinterp\[devinterp]'`) runs only when named in --analyses;
    its --llc-* options default to the values calibrated on the shipped demo (docs/reference.md).
    """
    from ..analysis import analyze
    from ..checkpoints import load_run
    from ..tables import write_table

    llc = {k: v for k, v in dict(lr=llc_lr, localization=llc_localization, nbeta=llc_nbeta, chains=llc_chains,
                                 draws=llc_draws, burnin=llc_burnin, batch_size=llc_batch_size, seed=llc_seed,
                                 heads=llc_heads).items() if v is not None}
    if out is not None:
        check_out(out, (".parquet", ".csv"))
    names = comma_list(analyses) if analyses is not None else None
    if llc and "llc" not in (names or []):
        raise CoopError("--llc-* options apply to the llc analysis: add --analyses llc")
    run = load_run(run_dir)
    out = out or check_out(run.path / "analysis" / "table.parquet", (".parquet", ".csv"))
    t0 = time.perf_counter()
    df = analyze(run, names, steps=comma_ints(steps, "--steps") if steps is not None else None, n=n, seed=seed,
                 progress=progress, recompute=recompute, workers=workers, options={"llc": llc} if llc else None)
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
    if g.empty:
        return ""
    if g.analysis.iloc[0] == "behavior":
        acc = g[g.metric == "acc"]
        return "acc " + " ".join(f"{ev} {v:.2f}" for ev, v in zip(acc.evaluator, acc.value))
    if g.analysis.iloc[0] == "attention":
        best = g.loc[g.groupby("metric").value.idxmax()]
        return "max " + " ".join(f"{m} {v:.2f} ({l}.{h})" for m, v, l, h in
                                 zip(best.metric, best.value, best.layer, best["head"]))
    if g.analysis.iloc[0] == "llc":
        whole = g[g.metric.isin(["llc", "llc_std"])].set_index("metric").value
        heads = g[g.metric == "rllc"]
        top = heads.loc[heads.value.idxmax()] if len(heads) else None
        return f"LLC {whole['llc']:.1f} ± {whole['llc_std']:.1f}" + (
            "" if top is None else f"; top rLLC {top.value:.2f} ({top.layer}.{top['head']})")
    if g.analysis.iloc[0] == "composition":
        best = g[~g.metric.str.endswith("_baseline")].groupby("metric").value.max()
        base = g[g.metric.str.endswith("_baseline")].value.mean()
        return "max " + " ".join(f"{m} {v:.2f}" for m, v in best.items()) + f" (random {base:.2f})"
    return ""
