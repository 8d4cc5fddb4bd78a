"""Layer-0 switch: layer-0 ("Layer 1") heads attend from each label to its exemplar (previous token) around the
ICL peak, and switch to attending to themselves (self score rises, previous-token score falls) as CIWL takes over."""
from __future__ import annotations

from common import metrics, parse, save, verdict

import coopinterp as ci
from coopinterp.phases import accuracy_curves, find_phases
from coopinterp.plots import layer0_figure


def nearest(steps: list[int], step: int) -> int:
    return min(steps, key=lambda s: abs(s - step))


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    peak = find_phases(accuracy_curves(metrics(args.run), smooth=5)).icl_peak_step
    at_peak, final = nearest(run.steps, peak), run.steps[-1]
    steps = [at_peak, final] if args.fast else run.steps
    table = ci.analyze(run, ["attention"], steps=steps, n=128 if args.fast else 512, progress=False)
    layer0 = table[(table.layer == 0) & table.metric.isin(["prev_token_score", "self_score"])]
    score = layer0.pivot_table(index=["step", "head"], columns="metric", values="value")
    head = int(score.loc[at_peak].prev_token_score.idxmax())  # the previous-token head at the ICL peak
    prev0, self0 = score.loc[(at_peak, head)]
    prev1, self1 = score.loc[(final, head)]
    mean_prev = score.prev_token_score.groupby(level="step").mean()
    mean_self = score.self_score.groupby(level="step").mean()
    save(layer0_figure(table), args.out, "layer0_switch")
    ok = prev0 >= 0.5 and prev1 <= prev0 - 0.2 and self1 >= self0 + 0.2
    return verdict(ok, "layer-0 heads switch from previous-token to self attention",
                   f"head 0.{head} (top previous-token head at step {at_peak}, near the ICL peak at {peak}): "
                   f"prev-token {prev0:.3f} -> {prev1:.3f}, self {self0:.3f} -> {self1:.3f} by step {final}; "
                   f"layer-0 mean prev-token {mean_prev[at_peak]:.3f} -> {mean_prev[final]:.3f}, mean self "
                   f"{mean_self[at_peak]:.3f} -> {mean_self[final]:.3f} "
                   "(needs prev>=.5 at peak, falls>=.2, self rises>=.2)")


if __name__ == "__main__":
    main()
