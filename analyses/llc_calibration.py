"""LLC calibration: SGLD excess-loss traces per chain on the demo, over step sizes and localisations.

How the llc analysis's defaults (coopinterp.analysis.llc.Options) were chosen, following devinterp's recipe: for a
grid of (lr, localization) at nbeta = batch / log(batch), run the chains at checkpoints before ICL, at the ICL peak,
in the CIWL state and at the end, for the whole model and two heads (L0H5, the previous-token head; L1H2, a
skip-trigram copier), and look at each chain's trace of nbeta * (L(w_t) - L(w*)). A usable setting has traces that
flatten well inside the draws (so the mean is of the stationary part), chains that agree, no divergence, and an
estimate that moves little when lr changes (discretisation error small). Writes
llc_calibration_{whole_model,L0H5,L1H2}.png and prints each setting's estimate (mean and std over chains, after
the default burn-in) and its traces' drift (last quarter minus second quarter, in LLC units: near 0 once flat).
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import plotly.graph_objects as go
from common import choose, parse, save
from plotly.subplots import make_subplots

import coopinterp as ci
from coopinterp.analysis import llc
from coopinterp.plots import HEAD_COLORS

SETTINGS = [(1e-4, 100.0), (3e-4, 100.0), (1e-3, 100.0), (3e-3, 100.0), (1e-3, 10.0), (1e-3, 1000.0)]
TARGETS = {"whole model": None, "L0H5": (0, 5), "L1H2": (1, 2)}
CHAINS, STEPS = 4, 300


def traces_at(run_dir: str, step: int, fast: bool) -> dict:
    """{(lr, localization, target): chains x steps of nbeta * (L - L*)} at one checkpoint."""
    run = ci.load_run(run_dir)
    model = llc.trainable(run.model(step))
    out = {}
    for lr, gamma in SETTINGS[2:3] if fast else SETTINGS:
        options = llc.Options(lr=lr, localization=gamma, chains=2 if fast else CHAINS, burnin=0,
                              draws=60 if fast else STEPS)
        batches = llc.sampling_batches(model, options)
        for name, head in TARGETS.items():
            restriction = llc.full_restriction(model) if head is None else llc.head_restriction(model, *head)
            excess = llc.sample_losses(model, llc.train_loss, batches, restriction, options)
            out[lr, gamma, name] = options.inverse_temperature * excess
    return out


def figure(traces: dict[int, dict], target: str, labels: dict[int, str]) -> go.Figure:
    steps = list(traces)
    fig = make_subplots(len(steps), len(SETTINGS), shared_xaxes=True, vertical_spacing=0.05, horizontal_spacing=0.03,
                        column_titles=[f"lr {lr:g}, γ {gamma:g}" for lr, gamma in SETTINGS],
                        row_titles=[labels[s] for s in steps])
    for r, step in enumerate(steps, 1):
        for c, (lr, gamma) in enumerate(SETTINGS, 1):
            values = traces[step].get((lr, gamma, target))
            if values is None:
                continue
            for chain, trace in enumerate(values.tolist()):
                fig.add_trace(go.Scatter(y=trace, mode="lines", line=dict(width=1, color=HEAD_COLORS[chain]),
                                         name=f"chain {chain}", legendgroup=str(chain), showlegend=r == c == 1),
                              row=r, col=c)
    fig.update_xaxes(title="SGLD step", row=len(steps))
    fig.update_yaxes(title="nβ (L − L*)", col=1)
    fig.update_layout(title=f"LLC calibration on the demo, {target}: each chain's excess loss in LLC units "
                            f"(a flat trace's height is the estimate)", template="plotly_white",
                      height=230 * len(steps) + 120, width=260 * len(SETTINGS) + 150, legend_title_text="chain")
    return fig


def main(argv: list[str] | None = None) -> None:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    at = choose(args.run, run.steps)
    checkpoints = {run.steps[2]: "before ICL", at.icl_peak: "ICL peak", at.ciwl_state: "CIWL state",
                   at.final: "final"}
    labels = {s: f"{name}<br>step {s:,}" for s, name in checkpoints.items()}
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        jobs = {s: pool.submit(traces_at, str(args.run), s, args.fast) for s in checkpoints}
        traces = {s: job.result() for s, job in jobs.items()}
    burnin = llc.Options().burnin
    print(f"estimates after the default burn-in of {burnin} steps; drift in LLC units")
    print(f"{'checkpoint':>22} {'lr':>7} {'γ':>6} {'target':>12} {'llc':>9} {'std':>7} {'drift':>8}")
    for step, per in traces.items():
        for (lr, gamma, target), values in per.items():
            per_chain = values[:, burnin:].mean(1)
            n = values.shape[1]
            drift = float(values[:, 3 * n // 4:].mean() - values[:, n // 4:n // 2].mean())
            print(f"{checkpoints[step] + ' ' + str(step):>22} {lr:>7g} {gamma:>6g} {target:>12} "
                  f"{float(per_chain.mean()):>9.3f} {float(per_chain.std()):>7.3f} {drift:>8.3f}")
    for target in TARGETS:
        save(figure(traces, target, labels), args.out, f"llc_calibration_{target.replace(' ', '_')}", scale=1.0)


if __name__ == "__main__":
    main()
