"""LLC curves of the demo against its phases: the numbers behind docs/results.md's "Learning coefficient" paragraph.

Reads the run's cached `llc` rows (`coopinterp analyze RUN --analyses llc` computes them; nothing is computed
here) and prints, per checkpoint: the whole model's LLC with its std over chains, the slope of the LLC per decade
of steps since the previous checkpoint, the layer-0 and layer-1 heads' summed refined LLC, and the three heads
with the largest refined LLC; then the phase steps (ICL peak, CIWL takeover, flip crossing) from the logged
curves. Writes the `llc` and `rllc_heatmap` figures. Descriptive: no verdict.

`--groups` also samples the refined LLC of four parameter groups (label embedding + unembedding, exemplar
embedding, every head's attention weights together, layer norms + positions) at the ICL-emergence, ICL-peak,
CIWL-state and final checkpoints, at the analysis's default options: where the whole model's LLC lives
(refined LLCs of groups do not add up to the whole; they say which weights the loss is sensitive to).
"""
from __future__ import annotations

import math

from common import choose, metrics, parse, save

import coopinterp as ci
from coopinterp import plots
from coopinterp.analysis import llc
from coopinterp.phases import accuracy_curves, find_phases
from coopinterp.tables import concat


def parameter_groups(model: ci.CoopModel) -> dict[str, llc.Restriction]:
    head = model.bridge.unembed.original_component
    norms = [b.ln1.original_component for b in model.bridge.blocks] + [model.bridge.ln_final.original_component]
    groups = {"label embedding + unembedding": [model.label_embedding, head.weight, head.bias],
              "exemplar embedding": [model.exemplar_embed.weight, model.exemplar_embed.bias],
              "attention weights": [getattr(b.attn, name).original_component.weight for b in model.bridge.blocks
                                    for name in ("q", "k", "v", "o")],
              "layer norms + positions": [p for n in norms for p in (n.weight, n.bias)] + [model.pos_embedding]}
    return {name: {p: None for p in params} for name, params in groups.items()}


def group_llcs(run: ci.Run, steps: list[int]) -> None:
    options = llc.Options()
    print(f"refined LLC of parameter groups (mean ± std over {options.chains} chains)")
    for step in steps:
        model = llc.trainable(run.model(step))
        batches = llc.sampling_batches(model, options)
        parts = []
        for name, restriction in parameter_groups(model).items():
            per_chain = llc.estimate(llc.sample_losses(model, llc.train_loss, batches, restriction, options), options)
            parts.append(f"{name} {float(per_chain.mean()):.2f} ± {float(per_chain.std()):.2f}")
        print(f"{step:>8}  " + "; ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse(__doc__, argv, extra=[("--groups", "also the refined LLC of parameter groups (minutes)")])
    run = ci.load_run(args.run)
    table = ci.analyze(run, "llc", progress=False, cached_only=True)
    if table.empty:
        raise SystemExit(f"no cached llc rows in {args.run}: run `coopinterp analyze {args.run} --analyses llc`")
    wide = table[table.metric.isin(["llc", "llc_std"])].pivot(index="step", columns="metric", values="value")
    heads = table[table.metric == "rllc"]
    print(f"{'step':>8} {'LLC':>8} {'± std':>6} {'/decade':>8} {'ΣrLLC L0':>9} {'ΣrLLC L1':>9}  top heads (rLLC)")
    previous = None
    for step, row in wide.iterrows():
        at = heads[heads.step == step]
        per_layer = at.groupby("layer").value.sum()
        top = at.nlargest(3, "value")
        slope = "" if previous is None or previous[0] == 0 else \
            f"{(row.llc - previous[1]) / math.log10(step / previous[0]):8.1f}"
        print(f"{step:>8} {row.llc:>8.2f} {row.llc_std:>6.2f} {slope:>8} {per_layer.get(0, float('nan')):>9.3f} "
              f"{per_layer.get(1, float('nan')):>9.3f}  " +
              ", ".join(f"L{int(r.layer)}H{int(r['head'])} {r.value:.3f}" for _, r in top.iterrows()))
        previous = (step, row.llc)
    logged = metrics(args.run)
    found = find_phases(accuracy_curves(logged, smooth=5))
    print(f"ICL peak {found.icl_peak_step} (acc {found.icl_peak:.3f}); CIWL overtakes at {found.ciwl_overtake_step}; "
          f"flip below 0.5 from {found.flip_switch_step}")
    figs, _ = plots.figures(concat([table, ci.analyze(run, "behavior", progress=False)]), logged)
    for name in ("llc", "rllc_heatmap"):
        save(figs[name], args.out, name)
    if args.groups:
        at = choose(args.run, run.steps)
        emergence = int(heads.groupby("step").value.sum().idxmax())  # where the heads' refined LLC peaks
        group_llcs(run, list(dict.fromkeys([emergence, at.icl_peak, at.ciwl_state, at.final])))


if __name__ == "__main__":
    main()
