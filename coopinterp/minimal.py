"""The minimal coopetition model (the paper's section 5).

Two rank-1 "mechanisms" share the vectors b, c: mechanism 1 ("ICL") fits a*⊗b*⊗c* with a⊗b⊗c,
mechanism 2 ("CIWL") fits d*⊗b*⊗c* with d⊗b⊗c, and a cost alpha·|a⊗d|² makes them compete:

    L = (L1 + mu1)(L2 + mu2) + alpha·C,   L1 = ½ mean[(a*⊗b*⊗c* - a⊗b⊗c)²],
    L2 = ½ mean[(d*⊗b*⊗c* - d⊗b⊗c)²],     C  = ½ mean[(a⊗d)²].

The product couples them: either mechanism alone lowers L (cooperation, through the shared b, c),
but once the slow d-path (160 dims) is fit, the cost drives a to zero (competition): ICL is transient.

The paper's code (aadityasingh/icl-dynamics, `coopetition_model_solver.py`) draws targets and the
initial vectors from N(0, I) (init scale 1) and plots the two mechanisms' losses. Here each
mechanism's strength is also read out as its overlap with its target,
    icl_strength  = <a⊗b⊗c, a*⊗b*⊗c*> / |a*⊗b*⊗c*|²,  ciwl_strength likewise with d,
which is 1 when the mechanism reproduces its target exactly and 0 when it contributes nothing (it can
overshoot 1 briefly). The "divot" is the slower mechanism's loss L2 rising while ICL forms, before CIWL
drives it to zero: the non-monotonic formation of the slower strategy the paper reports.
All seeds run at once as a batch (the leading dimension of every vector).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import CoopError
from .tables import table

DIMS = {"a": 20, "b": 20, "c": 20, "d": 160}
METRICS = ("loss", "loss_L1", "loss_L2", "cost", "icl_strength", "ciwl_strength",
           "norm_a", "norm_b", "norm_c", "norm_d")


def _rank1_loss(x: Float[Tensor, "seed i"], y: Float[Tensor, "seed j"], z: Float[Tensor, "seed k"],
                xs: Float[Tensor, "seed i"], ys: Float[Tensor, "seed j"], zs: Float[Tensor, "seed k"],
                ) -> Float[Tensor, "seed"]:
    """½ mean[(x*⊗y*⊗z* - x⊗y⊗z)²] in closed form, from dot products.

    Written out rather than materialising the outer products (64,000 entries for d⊗b⊗c):
    |u - v|² = |u|² - 2<u, v> + |v|², and every term of a rank-1 tensor factorises.
    """
    dot = lambda u, v: (u * v).sum(-1)  # noqa: E731
    n = x.shape[-1] * y.shape[-1] * z.shape[-1]
    target = dot(xs, xs) * dot(ys, ys) * dot(zs, zs)
    overlap = dot(x, xs) * dot(y, ys) * dot(z, zs)
    return 0.5 * (target - 2 * overlap + dot(x, x) * dot(y, y) * dot(z, z)) / n


def _overlap(x: Tensor, y: Tensor, z: Tensor, xs: Tensor, ys: Tensor, zs: Tensor) -> Float[Tensor, "seed"]:
    """<x⊗y⊗z, x*⊗y*⊗z*> / |x*⊗y*⊗z*|²: how much of its target a mechanism reproduces."""
    return ((x * xs).sum(-1) * (y * ys).sum(-1) * (z * zs).sum(-1)
            / ((xs * xs).sum(-1) * (ys * ys).sum(-1) * (zs * zs).sum(-1)))


def losses(p: dict[str, Tensor], t: dict[str, Tensor], mu1: float, mu2: float,
           alpha: float) -> dict[str, Float[Tensor, "seed"]]:
    """The total loss and its parts for parameters `p` and targets `t` (dicts of a, b, c, d)."""
    L1 = _rank1_loss(p["a"], p["b"], p["c"], t["a"], t["b"], t["c"])
    L2 = _rank1_loss(p["d"], p["b"], p["c"], t["d"], t["b"], t["c"])
    C = 0.5 * (p["a"] * p["a"]).sum(-1) * (p["d"] * p["d"]).sum(-1) / (p["a"].shape[-1] * p["d"].shape[-1])
    return {"loss": (L1 + mu1) * (L2 + mu2) + alpha * C, "loss_L1": L1, "loss_L2": L2, "cost": C}


def _draw(seeds: Sequence[int], init_scale: float, dtype: torch.dtype) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Targets ~ N(0, I) and initial vectors ~ init_scale·N(0, I), one generator per seed."""
    targets: dict[str, list[Tensor]] = {k: [] for k in DIMS}
    init: dict[str, list[Tensor]] = {k: [] for k in DIMS}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        for k, n in DIMS.items():
            targets[k].append(torch.randn(n, generator=g, dtype=dtype))
            init[k].append(init_scale * torch.randn(n, generator=g, dtype=dtype))
    return ({k: torch.stack(v) for k, v in targets.items()}, {k: torch.stack(v) for k, v in init.items()})


def _record(p: dict[str, Tensor], t: dict[str, Tensor], parts: dict[str, Tensor]) -> Float[Tensor, "metric seed"]:
    vals = {**parts,
            "icl_strength": _overlap(p["a"], p["b"], p["c"], t["a"], t["b"], t["c"]),
            "ciwl_strength": _overlap(p["d"], p["b"], p["c"], t["d"], t["b"], t["c"]),
            **{f"norm_{k}": p[k].norm(dim=-1) for k in DIMS}}
    return torch.stack([vals[m].detach() for m in METRICS])


def run_minimal(steps: int = 16_000, seed: int | Sequence[int] = 7, init_scale: float = 1.0, lr: float = 1.0,
                mu1: float = 0.1, mu2: float = 0.0, alpha: float = 0.1, every: int = 10,
                dtype: torch.dtype = torch.float64) -> pd.DataFrame:
    """Gradient descent on the minimal model; a tidy table of METRICS every `every` steps (and the last).

    Several seeds run together; the table's `run` is "minimal" for one seed, "minimal_seed{s}" for many.
    init_scale 1 is the paper's; at small scales the plateau before either mechanism forms grows like
    log(1/init_scale) and its length depends strongly on the seed.
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if not seeds or steps < 1 or every < 1 or not init_scale > 0 or not lr > 0:
        raise CoopError(f"minimal model needs seeds, steps >= 1, every >= 1, init_scale > 0 and lr > 0; got "
                        f"seeds={seeds}, steps={steps}, every={every}, init_scale={init_scale}, lr={lr}")
    t, p = _draw(seeds, init_scale, dtype)
    p = {k: v.requires_grad_() for k, v in p.items()}
    logged, records = [], []
    for step in range(steps + 1):
        parts = losses(p, t, mu1, mu2, alpha)
        if step % every == 0 or step == steps:
            logged.append(step)
            records.append(_record(p, t, parts))
        if step == steps:
            break
        # Sum over seeds: each seed's loss depends only on its own row, so this is per-seed gradient descent.
        grads = torch.autograd.grad(parts["loss"].sum(), list(p.values()))
        with torch.no_grad():
            for v, g in zip(p.values(), grads):
                v -= lr * g
    values = torch.stack(records)  # [logged step, metric, seed]
    if not torch.isfinite(values).all():
        raise CoopError(f"minimal model diverged (non-finite values); lower lr (got {lr}) or init_scale")
    values = values.numpy()
    names = ["minimal"] if len(seeds) == 1 else [f"minimal_seed{s}" for s in seeds]
    # Full-batch gradient descent sees no sequences; seqs_seen repeats the step to fill the schema.
    return table({"run": names[k], "step": step, "seqs_seen": step, "analysis": "minimal", "metric": metric,
                  "value": float(values[i, m, k])}
                 for k in range(len(seeds)) for i, step in enumerate(logged) for m, metric in enumerate(METRICS))


@dataclass(frozen=True)
class MinimalSummary:
    """When ICL peaks and fades, when CIWL overtakes it, and the divot in the slower mechanism's loss."""

    icl_peak_step: int
    icl_peak: float
    icl_final: float
    ciwl_final: float
    ciwl_overtakes_step: int | None  # first step after the ICL peak with ciwl_strength > icl_strength
    l2_divot_step: int | None  # where loss_L2 rises most above its running minimum (the "divot")
    l2_divot_height: float  # that rise; 0 when loss_L2 falls monotonically (up to round-off)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_minimal(df: pd.DataFrame, run: str | None = None) -> MinimalSummary:
    """Summarise one run of `run_minimal` (pass `run` when the table holds several seeds)."""
    runs = sorted(df["run"].unique())
    if run is None and len(runs) != 1:
        raise CoopError(f"table holds runs {runs}; pass run=")
    run = run if run is not None else runs[0]
    sub = df[(df["run"] == run) & (df["analysis"] == "minimal")]
    if sub.empty:
        raise CoopError(f"no minimal-model rows for run {run!r}; runs: {runs}")
    wide = sub.pivot(index="step", columns="metric", values="value").sort_index()
    icl, ciwl, l2 = wide["icl_strength"], wide["ciwl_strength"], wide["loss_L2"]
    peak = int(icl.idxmax())
    after = wide.loc[peak:]
    over = after.index[after["ciwl_strength"] > after["icl_strength"]]
    rise = l2 - l2.cummin()
    divot = float(rise.max())
    has_divot = divot > 1e-6 * float(l2.iloc[0])  # ignore round-off wiggles
    return MinimalSummary(
        icl_peak_step=peak, icl_peak=float(icl.max()), icl_final=float(icl.iloc[-1]),
        ciwl_final=float(ciwl.iloc[-1]), ciwl_overtakes_step=int(over[0]) if len(over) else None,
        l2_divot_step=int(rise.idxmax()) if has_divot else None, l2_divot_height=divot if has_divot else 0.0,
    )


def minimal_figure(df: pd.DataFrame):
    """The minimal model in the house style: strategy strengths, the mechanisms' losses and the vector norms
    against step, one legend per panel, the ICL peak and the CIWL overtake marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .plots import TEMPLATE, Phase, mark_phases, panel_legend

    panels = [("strategy strength", {"icl_strength": "ICL (a-path)", "ciwl_strength": "CIWL (d-path)"}),
              ("loss", {"loss_L1": "L1 (ICL task)", "loss_L2": "L2 (CIWL task)", "loss": "total L"}),
              ("vector norm", {"norm_a": "|a|", "norm_d": "|d|"})]
    colors = {"icl_strength": "#1f77b4", "ciwl_strength": "#d62728", "loss_L1": "#1f77b4", "loss_L2": "#d62728",
              "loss": "#444444", "norm_a": "#1f77b4", "norm_d": "#d62728"}
    runs = list(dict.fromkeys(df["run"]))
    dashes = dict(zip(runs, ("solid", "dash", "dot", "dashdot", "longdash")))
    fig = make_subplots(len(panels), 1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[title for title, _ in panels])
    for row, (title, metrics) in enumerate(panels, start=1):
        for metric, name in metrics.items():
            for run in runs:
                g = df[(df["metric"] == metric) & (df["run"] == run)].sort_values("step")
                label = name if len(runs) == 1 else f"{name}, {run}"
                fig.add_trace(go.Scatter(x=g["step"], y=g["value"], name=label, mode="lines",
                                         legend="legend" if row == 1 else f"legend{row}",
                                         line=dict(color=colors[metric], dash=dashes.get(run, "solid")),
                                         hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.3f}}<extra></extra>"),
                              row=row, col=1)
        fig.update_yaxes(title_text=title, row=row, col=1)
    fig.update_xaxes(title_text="gradient-descent step", row=len(panels), col=1)
    fig.update_layout(title=dict(text="Minimal coopetition model: ICL (a-path) rises, then fades as CIWL (d-path) "
                                      "takes over", y=0.98, yanchor="top"),
                      template=TEMPLATE, height=850, margin=dict(t=90, l=70, r=150, b=60))
    for row, (title, _) in enumerate(panels, start=1):
        panel_legend(fig, "legend" if row == 1 else f"legend{row}", "y" if row == 1 else f"y{row}", title)
    s = summarize_minimal(df, runs[0])
    marks = [Phase("icl_peak", s.icl_peak_step, s.icl_peak_step, f"ICL peak ({s.icl_peak:.2f})")]
    if s.ciwl_overtakes_step is not None:
        marks.append(Phase("ciwl_overtakes", s.ciwl_overtakes_step, s.ciwl_overtakes_step, "CIWL overtakes ICL"))
    return mark_phases(fig, marks, "step", index=float)