"""Shared pieces of the analyses/ scripts: arguments, the shipped runs, verdict lines, figure export."""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "checkpoints" / "demo"
INTERVENTIONS = REPO / "checkpoints" / "interventions"

sys.path.insert(0, str(REPO))  # run from a checkout without installing

from coopinterp import threads  # noqa: E402
from coopinterp.errors import CoopError  # noqa: E402
from coopinterp.phases import accuracy_curves  # noqa: E402
from coopinterp.plots import write_html, write_pngs  # noqa: E402
from coopinterp.tables import read_table  # noqa: E402

threads.apply()  # the scripts run under coopinterp's thread policy (one thread per process)

SMOOTH = 5  # evaluations in the centred rolling mean of every behaviour curve (each evaluation: 1,024 sequences)
CIWL_STATE_FLIP = 0.1  # the CIWL state: `flip` accuracy (in-context answer) at most this
N = 512  # sequences per evaluator batch in the checkpoint analyses


def parse(doc: str, argv: list[str] | None, run: Path = DEMO,
          extra: list[tuple[str, str]] = ()) -> argparse.Namespace:
    """The scripts' arguments: --run, --out, --fast, and `extra` on/off flags as (flag, help)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, text in extra:
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--run", type=Path, default=run, help=f"run directory (default: {run.relative_to(REPO)})")
    p.add_argument("--out", type=Path, default=REPO / "analyses" / "out", help="where figures go")
    p.add_argument("--fast", action="store_true", help="fewer sequences and steps (for tests)")
    return p.parse_args(argv)


def metrics(run_dir: Path) -> pd.DataFrame:
    """A run's logged evaluator metrics (works for runs shipped without checkpoints)."""
    return read_table(run_dir / "metrics.parquet")


@dataclass(frozen=True)
class Chosen:
    """Checkpoints picked by rules from a run's behaviour curves (smoothed over SMOOTH evaluations).

    icl_peak    the checkpoint nearest the step where ICL accuracy peaks;
    ciwl_state  the first checkpoint after the ICL peak whose `flip` accuracy is <= CIWL_STATE_FLIP (the model
                answers the memorised label, not the in-context one); the final checkpoint if none is;
    final       the last checkpoint.
    """

    icl_peak: int
    ciwl_state: int
    ciwl_state_reached: bool
    final: int

    def describe(self) -> str:
        state = "" if self.ciwl_state_reached else f" (flip never <= {CIWL_STATE_FLIP}: final checkpoint)"
        return f"ICL-peak checkpoint {self.icl_peak}, CIWL-state checkpoint {self.ciwl_state}{state}"


def choose(run_dir: Path, steps: list[int]) -> Chosen:
    curves = accuracy_curves(metrics(run_dir), smooth=SMOOTH)
    peak = int(curves.icl.idxmax())
    flip_at = lambda step: float(curves.flip.loc[:step].iloc[-1])  # noqa: E731  (last evaluation at or before)
    after = [s for s in steps if s >= peak]
    state = next((s for s in after if flip_at(s) <= CIWL_STATE_FLIP), None)
    return Chosen(icl_peak=min(steps, key=lambda s: abs(s - peak)), ciwl_state=state or steps[-1],
                  ciwl_state_reached=state is not None, final=steps[-1])


def analyze(run, analyses: list[str], steps: list[int], n: int = N, progress: bool = False):
    """`coopinterp.analyze` that reads the run's own cache but writes new tables to a temporary folder, never into
    the (shipped) run."""
    import coopinterp as ci

    return ci.analyze(run, analyses, steps=steps, n=n, progress=progress,
                      cache_dir=Path(tempfile.gettempdir()) / "coopinterp-analyses" / run.name)


def sweep_and_analyze(spec: dict, runs: Path, analysis: str, n: int, tag: Callable[[str, object], dict],
                      workers: int = 1, ray: str | None = None, analyze_workers: int | None = None,
                      cache: str = "coopinterp-analyses") -> tuple[pd.DataFrame, float]:
    """Train every run of a sweep grid where missing, then one analysis of each (cached in a temporary folder per
    run); its rows with the columns `tag(name, config)` gives, and the sweep's wall time. A failed run ends the
    script with its error."""
    import time

    import coopinterp as ci
    from coopinterp.sweep import expand, run_sweep
    from coopinterp.tables import concat

    t0 = time.perf_counter()
    results = run_sweep(spec, runs, workers=workers, ray_address=ray, device="cpu",
                        on_result=lambda r: print(f"{r.status} {r.name} ({r.seconds:.0f} s)", flush=True))
    seconds = time.perf_counter() - t0
    failed = [r for r in results if r.status == "failed"]
    if failed:
        sys.exit(f"{len(failed)} runs failed: {failed[0].name}: {failed[0].error}")
    tables = []
    for name, config in expand(spec):
        extra = {} if analyze_workers is None else {"workers": analyze_workers}
        table = ci.analyze(ci.load_run(runs / name), [analysis], n=n, progress=False,
                           cache_dir=Path(tempfile.gettempdir()) / cache / name, **extra)
        tables.append(table.assign(run=name, **tag(name, config)))
    return concat(tables), seconds


def attention_over_training(args: argparse.Namespace):
    """The run, its chosen checkpoints, and its attention table at every checkpoint (`--fast`: the chosen ones)."""
    import coopinterp as ci

    run = ci.load_run(args.run)
    at = choose(args.run, run.steps)
    steps = sorted({at.icl_peak, at.ciwl_state, at.final}) if args.fast else run.steps
    return run, at, analyze(run, ["attention"], steps=steps)


def verdict(ok: bool, claim: str, numbers: str) -> str:
    line = f"{'PASS' if ok else 'FAIL'} {claim}: {numbers}"
    print(line, flush=True)
    return line


def save(fig: go.Figure, out: Path, name: str, scale: float = 2.0) -> None:
    """HTML always; PNG when kaleido can make it (a one-line note otherwise)."""
    out.mkdir(parents=True, exist_ok=True)
    write_html(fig, out / f"{name}.html")
    try:
        write_pngs({name: fig}, out, scale=scale)
    except CoopError as e:
        print(f"note: {name}.png not written: {e}", file=sys.stderr)


def icl_curves(runs: dict[str, pd.DataFrame], evaluators: tuple[str, ...], title: str) -> go.Figure:
    """Accuracy of some evaluators over training for several runs (one colour per run, dash per evaluator)."""
    fig = go.Figure()
    dashes = dict(zip(evaluators, ("solid", "dash", "dot", "dashdot")))
    colors = dict(zip(runs, ("#444444", "#1f77b4", "#d62728", "#2ca02c", "#9467bd")))
    for name, table in runs.items():
        acc = table[(table.analysis == "behavior") & (table.metric == "acc")]
        for ev in evaluators:
            g = acc[(acc.evaluator == ev) & (acc.step > 0)].sort_values("step")
            if len(g):
                fig.add_trace(go.Scatter(x=g.step, y=g.value, name=f"{name}: {ev}", mode="lines", legendgroup=name,
                                         line=dict(dash=dashes[ev], color=colors[name], width=1.5)))
    fig.update_xaxes(type="log", title="training step (log scale)")
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    fig.update_layout(template="plotly_white", height=480, title=title)
    return fig
