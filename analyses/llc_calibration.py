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
from plotly.colors import qualitative
from plotly.subplots import make_subplots

import coopinterp as ci
from coopinterp.analysis import llc
from coopinterp.plots import TEMPLATE

SETTINGS = [(1e-4, 100.0), (3e-4, 100.0), (1e-3, 100.0), (3e-3, 100.0), (1e-3, 10.0), (1e-3, 1000.0)]
CHOSEN = (llc.Options().lr, llc.Options().localization)  # the defaults these traces chose
LR_SWEEP = [s for s in SETTINGS if s[1] == CHOSEN[1]]  # step sizes at the chosen localization: one y scale per row
GAMMA_SWEEP = [s for s in SETTINGS if s not in LR_SWEEP]  # localizations: the LLC scales with them, own y scales
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
    """Chains' traces, a row per checkpoint: the step-size sweep on one y scale per row (heights compare), then,
    after a gap, the localization sweep, each panel on its own scale (the LLC scales with the localization); the
    chosen setting's column shaded."""
    steps, columns = list(traces), [*LR_SWEEP, None, *GAMMA_SWEEP]  # None: an empty, narrow column between sweeps
    fig = make_subplots(len(steps), len(columns), shared_xaxes=True, vertical_spacing=0.05, horizontal_spacing=0.03,
                        column_widths=[0.25 if c is None else 1 for c in columns],
                        column_titles=["" if c is None else f"lr {c[0]:g}, γ {c[1]:g}" + (" (chosen)" if c == CHOSEN
                                                                                         else "") for c in columns],
                        row_titles=[labels[s] for s in steps])
    for r, step in enumerate(steps, 1):
        shared = [traces[step][(*setting, target)] for setting in LR_SWEEP if (*setting, target) in traces[step]]
        lo = min((float(v.min()) for v in shared), default=0.0)
        hi = max((float(v.max()) for v in shared), default=1.0)
        for c, setting in enumerate(columns, 1):
            values = None if setting is None else traces[step].get((*setting, target))
            if values is None:
                fig.update_xaxes(visible=False, row=r, col=c)
                fig.update_yaxes(visible=False, row=r, col=c)
                continue
            for chain, trace in enumerate(values.tolist()):
                fig.add_trace(go.Scatter(y=trace, mode="lines", line=dict(width=1, color=qualitative.D3[chain % 10]),
                                         name=f"chain {chain}", legendgroup=str(chain), showlegend=r == c == 1),
                              row=r, col=c)
            if setting in LR_SWEEP:
                fig.update_yaxes(range=[min(lo, 0.0), 1.05 * hi], row=r, col=c)
            if setting == CHOSEN:
                fig.add_shape(type="rect", x0=0, x1=1, y0=0, y1=1, xref="x domain", yref="y domain", row=r, col=c,
                              fillcolor="#fff3c4", line_width=0, layer="below")
    fig.update_xaxes(title="SGLD step", row=len(steps))
    fig.update_yaxes(title="nβ (L − L*)", col=1)
    for group, text in ((LR_SWEEP, f"step size lr at γ {CHOSEN[1]:g}: one y scale per row"),
                        (GAMMA_SWEEP, f"localization γ at lr {CHOSEN[0]:g}: each panel its own y scale")):
        first, last = columns.index(group[0]) + 1, columns.index(group[-1]) + 1
        x0, x1 = fig.layout[f"xaxis{first}"].domain[0], fig.layout[f"xaxis{last}"].domain[1]
        fig.add_annotation(text=f"<b>{text}</b>", x=(x0 + x1) / 2, y=1, yshift=30, xref="paper", yref="paper",
                           yanchor="bottom", showarrow=False, font=dict(size=13))
    fig.update_layout(title=f"LLC calibration on the demo, {target}: each chain's excess loss in LLC units "
                            f"(a flat trace's height is the estimate)", template=TEMPLATE,
                      height=230 * len(steps) + 200, width=260 * len(SETTINGS) + 220, margin=dict(t=140, b=110),
                      legend=dict(title_text="chain", orientation="h", x=0.5, xanchor="center", y=-0.06,
                                  yanchor="top"))
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
