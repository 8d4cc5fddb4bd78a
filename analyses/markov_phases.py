"""Markov-chain phase diagram: which algorithm dominates over (number of training chains K, training step).

Trains the grid below with `coopinterp sweep` machinery (runs under --runs, never in the repo; finished runs are
skipped), runs the `strategy` analysis on every checkpoint, and ships what the figures need: each run's run.json and
metrics.parquet (no checkpoints) and one strategy.parquet under checkpoints/markov_phases/. With --plot-only it
redraws from that shipped table. Figures: the dominant algorithm (largest mix weight, in distribution, mean of the
seeds' weights) over (K, step); the step from which each run's final algorithm dominates, against K, with a power
law fitted where at least three values of K end in the same algorithm; and, for the run named by --boundary, its
strategy weights beside its heads' induction and previous-token scores and its most harmful head ablation.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from common import REPO, save, sweep_and_analyze  # noqa: E402  (sets sys.path and the thread policy)

from coopinterp.predictors import NAMES  # noqa: E402
from coopinterp.tables import concat, read_table, write_table  # noqa: E402

SHIP = REPO / "checkpoints" / "markov_phases"
GRID = {"base": "markov", "set": {"train.steps": 2500, "train.n_checkpoints": 16},
        "grid": {"task.n_chains": [1, 2, 4, 8, 16, 64], "train.seed": [0, 1]}}
FAST = {"base": "markov-tiny", "grid": {"task.n_chains": [1, 2, 4], "train.seed": [0]}}
N = 128  # sequences per batch in the strategy analysis
COLORS = {"uni_ret": "#ff7f0e", "uni_inf": "#2ca02c", "bi_ret": "#d62728", "bi_inf": "#1f77b4"}
LABELS = {"uni_ret": "unigram, retrieved", "uni_inf": "unigram, inferred", "bi_ret": "bigram, retrieved",
          "bi_inf": "bigram, inferred"}


def train_and_analyze(spec: dict, runs: Path, ray: str | None) -> tuple[pd.DataFrame, float]:
    """Every run of the grid (trained where missing) and its strategy rows, and the sweep's wall time."""
    return sweep_and_analyze(spec, runs, "strategy", N, ray=ray, tag=lambda name, config: {})


def ship(runs: Path, table: pd.DataFrame, dest: Path) -> None:
    """run.json and metrics.parquet of every run, and the strategy table: a metrics-only copy of the sweep."""
    for name in table.run.unique():
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in ("run.json", "metrics.parquet"):
            shutil.copyfile(runs / name / f, dest / name / f)
    write_table(table, dest / "strategy.parquet")


def chains_of(dest: Path, table: pd.DataFrame) -> dict[str, int]:
    return {name: json.loads((dest / name / "run.json").read_text())["config"]["task"]["n_chains"]
            for name in table.run.unique()}


def weights(table: pd.DataFrame, ev: str = "markov_id") -> pd.DataFrame:
    """run x step x predictor mix weights of one evaluator (wide: one column per predictor)."""
    w = table[(table.metric == "mix_weight") & (table.evaluator == ev)]
    return w.pivot_table(index=["run", "step"], columns="component", values="value")[list(NAMES)]


def transitions(w: pd.DataFrame) -> pd.DataFrame:
    """Per run: its final dominant algorithm and the first checkpoint from which that algorithm stays dominant."""
    rows = []
    for run, g in w.groupby(level="run"):
        dominant = g.idxmax(axis=1).droplevel("run")
        final = dominant.iloc[-1]
        since = dominant.index[-1]
        for step in dominant.index[::-1]:
            if dominant[step] != final:
                break
            since = step
        rows.append({"run": run, "final": final, "since": since})
    return pd.DataFrame(rows).set_index("run")


def power_law(k: np.ndarray, steps: np.ndarray) -> tuple[float, float] | None:
    """(exponent, prefactor) of steps = c K^b by least squares in log-log, or None with fewer than 3 values of K."""
    if len(set(k)) < 3 or (steps <= 0).any():
        return None
    b, log_c = np.polyfit(np.log(k), np.log(steps), 1)
    return float(b), float(np.exp(log_c))


def phase_figure(w: pd.DataFrame, chains: dict[str, int], trans: pd.DataFrame) -> go.Figure:
    """Left: the dominant algorithm over (K, step); right: the step from which each run's final algorithm dominates."""
    per_k = w.groupby([w.index.get_level_values("run").map(chains), w.index.get_level_values("step")]).mean()
    per_k.index.names = ["K", "step"]
    dominant = per_k.idxmax(axis=1).unstack("step")
    share = per_k.max(axis=1).unstack("step")
    code = dominant.apply(lambda col: col.map(NAMES.index))
    Ks, steps = [str(k) for k in dominant.index], [str(s) for s in dominant.columns]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["dominant algorithm (in distribution, mean of seeds)",
                                        "step from which the final algorithm dominates"])
    scale = [[min(1.0, (i + j) / 4), COLORS[a]] for i, a in enumerate(NAMES) for j in (0, 1)]
    fig.add_trace(go.Heatmap(z=code.to_numpy(), x=steps, y=Ks, zmin=-0.5, zmax=3.5, colorscale=scale, showscale=False,
                             text=share.round(2).to_numpy(), texttemplate="%{text}", textfont=dict(size=9),
                             customdata=dominant.to_numpy(),
                             hovertemplate="K %{y}, step %{x}: %{customdata} (weight %{text})<extra></extra>"),
                  row=1, col=1)
    for a in NAMES:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=dict(color=COLORS[a], symbol="square",
                                                                                 size=10), name=LABELS[a]), row=1, col=1)
        sel = trans[trans.final == a]
        if len(sel):
            fig.add_trace(go.Scatter(x=[chains[r] for r in sel.index], y=sel.since.clip(lower=1), mode="markers",
                                     marker=dict(color=COLORS[a], size=10), showlegend=False,
                                     hovertemplate="K %{x}: since step %{y}<extra></extra>"), row=1, col=2)
            fit = power_law(np.array([chains[r] for r in sel.index], float), sel.since.to_numpy(float))
            if fit:
                k = np.geomspace(min(chains[r] for r in sel.index), max(chains[r] for r in sel.index), 20)
                fig.add_trace(go.Scatter(x=k, y=fit[1] * k ** fit[0], mode="lines", line=dict(color=COLORS[a],
                                         dash="dash"), name=f"fit: step ∝ K^{fit[0]:.2f} ({LABELS[a]})"),
                              row=1, col=2)
    fig.update_xaxes(title_text="training step (checkpoint)", row=1, col=1)
    fig.update_yaxes(title_text="K (training chains)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="K (training chains)", row=1, col=2)
    fig.update_yaxes(type="log", title_text="training step", row=1, col=2)
    fig.update_layout(template="plotly_white", height=480, width=1200,
                      title="Markov task: memorise (retrieve) or generalise (infer), over K and training time")
    return fig


def boundary_figure(table: pd.DataFrame, run: str) -> go.Figure:
    """One run: mix weights (in distribution) beside every head's induction and previous-token scores."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=[f"{run}: mix weights (in distribution)", "head scores (markov_id)"])
    w = weights(table[table.run == run]).droplevel("run")
    w = w[w.index > 0]
    for a in NAMES:
        fig.add_trace(go.Scatter(x=w.index, y=w[a], name=LABELS[a], line=dict(color=COLORS[a])), row=1, col=1)
    att = table[(table.run == run) & (table.analysis == "attention") & (table.evaluator == "markov_id") & (table.step > 0)]
    for metric, dash in (("induction_score", "solid"), ("prev_token_score", "dot")):
        for (layer, head), g in att[att.metric == metric].groupby(["layer", "head"]):
            fig.add_trace(go.Scatter(x=g.step, y=g.value, name=f"L{layer}H{head} {metric.split('_')[0]}",
                                     line=dict(dash=dash)), row=1, col=2)
    fig.update_xaxes(type="log", title_text="training step")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(template="plotly_white", height=450, width=1200,
                      title="Which algorithm (left) and which heads (right, solid: induction, dotted: previous token)")
    return fig


def head_table(run_dir: Path, name: str) -> pd.DataFrame:
    """attention and ablation rows of one run at every checkpoint (its checkpoints must be on disk)."""
    import coopinterp as ci

    run = ci.load_run(run_dir)
    return ci.analyze(run, ["attention", "ablation"], n=N, progress=False,
                      cache_dir=Path(tempfile.gettempdir()) / "coopinterp-analyses" / name).assign(run=name)


def report(table: pd.DataFrame, chains: dict[str, int], trans: pd.DataFrame, boundary: str | None) -> None:
    """The numbers docs/markov.md quotes, measured from the table."""
    w = weights(table)
    final = {r: w.loc[r].iloc[-1] for r in trans.index}
    for r in sorted(trans.index, key=lambda r: (chains[r], r)):
        f = final[r]
        ood = weights(table, "markov_ood").loc[r].iloc[-1]
        print(f"K={chains[r]:>3} {r}: final {trans.final[r]} since step {trans.since[r]} | ID weights "
              + " ".join(f"{a} {f[a]:.2f}" for a in NAMES) + " | OOD weights "
              + " ".join(f"{a} {ood[a]:.2f}" for a in NAMES))
    for a in ("bi_ret", "bi_inf"):
        sel = trans[trans.final == a]
        fit = power_law(np.array([chains[r] for r in sel.index], float), sel.since.to_numpy(float))
        print(f"power law for runs ending in {a}: " + (f"step ~ {fit[1]:.0f} K^{fit[0]:.2f}" if fit else
                                                       f"not fitted ({sel.index.size} runs, K {sorted({chains[r] for r in sel.index})})"))
    res = table[(table.metric == "mix_residual_kl")]
    print("residual KL (median over runs) by checkpoint, ID / OOD:")
    print(res.pivot_table(index="step", columns="evaluator", values="value", aggfunc="median").round(4).T.to_string())
    if boundary:
        b = table[table.run == boundary]
        dom = weights(b).droplevel("run").idxmax(axis=1)
        firsts = {a: int(dom[dom == a].index.min()) for a in dom.unique()}
        print(f"{boundary}: first checkpoint where each algorithm dominates (ID): {firsts}")
        abl = b[(b.analysis == "ablation") & (b.metric == "delta_loss") & (b.component == "mean")
                & (b.evaluator == "markov_id")]
        for step, g in abl.groupby("step"):
            top = g.loc[g.value.idxmax()]
            att = b[(b.analysis == "attention") & (b.step == step) & (b.evaluator == "markov_id")]
            ind = att[att.metric == "induction_score"].set_index(["layer", "head"]).value
            prev = att[att.metric == "prev_token_score"].set_index(["layer", "head"]).value
            print(f"  step {step}: {dom[step]}; most harmful mean-ablation L{top.layer}H{top['head']} "
                  f"(+{top.value:.3f} nats); max induction L{ind.idxmax()[0]}H{ind.idxmax()[1]} {ind.max():.2f}, "
                  f"max prev-token L{prev.idxmax()[0]}H{prev.idxmax()[1]} {prev.max():.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "markov_runs" / "phases",
                   help="where the sweep's runs (with checkpoints) go")
    p.add_argument("--out", type=Path, default=REPO / "analyses" / "out", help="where figures go")
    p.add_argument("--ship", type=Path, default=SHIP, help="the metrics-only copy (run.json, metrics, strategy)")
    p.add_argument("--ray", default=None, help="train on Ray ('local', 'auto' or an address) instead of here")
    p.add_argument("--boundary", default=None, help="a run near the boundary: head scores and ablations too")
    p.add_argument("--plot-only", action="store_true", help="redraw from the shipped strategy.parquet")
    p.add_argument("--fast", action="store_true", help="a 3-run grid of markov-tiny (for tests)")
    args = p.parse_args(argv)
    if args.plot_only:
        table = read_table(args.ship / "strategy.parquet")
    else:
        table, seconds = train_and_analyze(FAST if args.fast else GRID, args.runs, args.ray)
        print(f"sweep wall time {seconds:.0f} s ({'Ray ' + args.ray if args.ray else 'local, 1 worker'})")
        if args.boundary:
            table = concat([table, head_table(args.runs / args.boundary, args.boundary)])
        ship(args.runs, table, args.ship)
    chains = chains_of(args.ship, table)
    trans = transitions(weights(table))
    report(table, chains, trans, args.boundary)
    save(phase_figure(weights(table), chains, trans), args.out, "markov_phases")
    if args.boundary:
        save(boundary_figure(table, args.boundary), args.out, "markov_boundary_run")


if __name__ == "__main__":
    main()
