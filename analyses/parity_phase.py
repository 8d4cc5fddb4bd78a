"""Streaming-parity phase diagram: does the RNN's automaton merge, and does it generalise, over (initial weight scale,
fraction of training sequences kept)?

Trains the grid below with `coopinterp sweep` machinery (runs under --runs, never in the repo; finished runs are
skipped), runs the `automaton` analysis on every checkpoint, and writes one line per run (the final training
loss, the final loss and accuracy on the longest validation length, the peak and final automaton sizes) to
OUT/parity_phase.csv, and the diagram to OUT/parity_phase.png (and .html): per grid cell the final minimised
automaton size (colour, log scale) with the longest-length accuracy written in. A run "merges" when its final
minimised automaton has two states and "generalises" when it is right on at least 99% of the longest validation
sequences. Run again, it skips the trained runs and reads the cached analyses (seconds).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from common import REPO, save, sweep_and_analyze  # noqa: E402  (sets sys.path and the thread policy)


GRID = {"base": "parity", "set": {"train.n_checkpoints": 12, "train.eval_every": 2_100},
        "grid": {"task.init_gain": [0.1, 0.4, 1.0], "task.data_fraction": [0.2, 0.5, 1.0]}}
FAST = {"base": "parity-tiny", "grid": {"task.init_gain": [0.1, 1.0], "task.data_fraction": [0.5, 1.0]}}
N = 100  # validation sequences per length (fewer at the longest lengths: tasks/parity.py LONG_TOKENS)


def train_and_analyze(spec: dict, runs: Path, workers: int) -> tuple[pd.DataFrame, float]:
    """The automaton rows of every run of the grid (trained where missing), and the sweep's wall time."""
    return sweep_and_analyze(spec, runs, "automaton", N, workers=workers, analyze_workers=1,
                             cache="coopinterp-parity-phase",
                             tag=lambda name, config: {"gain": config.task.init_gain,
                                                       "fraction": config.task.data_fraction})


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run: final losses and sizes, the peak size, and the verdicts."""
    out = []
    for (gain, fraction), g in rows.groupby(["gain", "fraction"]):
        last = g[g.step == g.step.max()]
        value = {m: v for m, v in zip(last.metric, last.value) if m not in ("val_loss", "val_acc")}
        val = last[last.metric.isin(["val_loss", "val_acc"])]
        longest = max(val.evaluator.unique(), key=lambda e: int(e.split("_")[1]))
        at = dict(zip(val[val.evaluator == longest].metric, val[val.evaluator == longest].value))
        out.append({"init_gain": gain, "data_fraction": fraction, "final_step": int(g.step.max()),
                    "train_loss": value["train_loss"], "longest": longest, "val_loss": at["val_loss"],
                    "val_acc": at["val_acc"], "peak_states": int(g[g.metric == "n_states"].value.max()),
                    "final_states": int(value["n_states"]), "final_states_min": int(value["n_states_min"]),
                    "merged": value["n_states_min"] == 2, "generalises": at["val_acc"] >= 0.99})
    return pd.DataFrame(out)


def diagram(table: pd.DataFrame) -> go.Figure:
    gains, fractions = sorted(table.init_gain.unique()), sorted(table.data_fraction.unique())
    cell = table.set_index(["init_gain", "data_fraction"])
    z = np.array([[np.log2(cell.loc[(g, f), "final_states_min"]) for f in fractions] for g in gains])
    text = [[f"{cell.loc[(g, f), 'final_states_min']} states<br>acc {cell.loc[(g, f), 'val_acc']:.2f}"
             for f in fractions] for g in gains]
    fig = go.Figure(go.Heatmap(z=z, x=[str(f) for f in fractions], y=[str(g) for g in gains], text=text,
                               texttemplate="%{text}", colorscale="Viridis",
                               colorbar=dict(title="log2 minimised<br>states")))
    length = table.longest.iloc[0].replace("len_", "")
    fig.update_layout(title=f"Streaming parity after {table.final_step.iloc[0]:,} steps:<br>minimised automaton "
                            f"states and accuracy at length {int(length):,}",
                      xaxis_title="fraction of training sequences kept", yaxis_title="initial weight scale (gain)",
                      width=700, height=480)
    return fig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "coopinterp-parity-phase-runs",
                   help="where the grid's runs are trained (outside the repo)")
    p.add_argument("--out", type=Path, default=REPO / "analyses" / "out", help="where the table and figure go")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, one thread each")
    p.add_argument("--fast", action="store_true", help="the tiny preset on a 2 x 2 grid (for a quick check)")
    args = p.parse_args(argv)
    rows, seconds = train_and_analyze(FAST if args.fast else GRID, args.runs, args.workers)
    table = summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "parity_phase.csv", index=False)
    save(diagram(table), args.out, "parity_phase")
    print(table.to_string(index=False, float_format="%.3g"))
    print(f"sweep wall time {seconds:.0f} s")


if __name__ == "__main__":
    main()
