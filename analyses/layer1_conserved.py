"""Layer-1 conserved: after its phase change, the layer-1 ("Layer 2") induction head keeps attending to the label
of the same-class exemplar on `flip` and doubles as the skip-trigram copier on `ciwl`, even after ICL has faded."""
from __future__ import annotations

from common import metrics, parse, save, verdict
from layer0_switch import nearest

import coopinterp as ci
from coopinterp.analysis.clamping import clamp_sweep
from coopinterp.phases import accuracy_curves, find_phases
from coopinterp.plots import layer1_figure


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    ph = find_phases(accuracy_curves(metrics(args.run), smooth=5))
    at_peak, final = nearest(run.steps, ph.icl_peak_step), run.steps[-1]
    n = 128 if args.fast else 512
    steps = [at_peak, final] if args.fast else run.steps
    table = ci.analyze(run, ["attention"], steps=steps, n=n, progress=False)
    layer1 = table[table.layer == 1].pivot_table(index=["step", "head"], columns="metric", values="value")
    head = int(layer1.loc[at_peak].induction_strength.idxmax())  # the induction head at the ICL peak
    ind0, ind1 = layer1.loc[(at_peak, head), "induction_strength"], layer1.loc[(final, head), "induction_strength"]
    skip1 = layer1.loc[(final, head), "skip_trigram_score"]
    top_skip = int(layer1.loc[final].skip_trigram_score.idxmax())
    # The paper's copier test on the final checkpoint: clamp the head's query attention to the true label.
    batch = ci.make_batch(run.config.task, "ciwl", n=n, seed=0)
    acc, _ = clamp_sweep(run.model(final), batch, (1, head), s=[0.0, 0.5, 1.0])
    save(layer1_figure(table), args.out, "layer1_conserved")
    ok = ind1 >= 0.2 and top_skip == head and skip1 >= 0.3 and acc[2] >= acc[0] + 0.5
    return verdict(ok, "the layer-1 induction head is conserved and doubles as the skip-trigram copier",
                   f"head 1.{head} (top induction head at step {at_peak}): induction {ind0:.3f} -> {ind1:.3f} at "
                   f"step {final} (ICL acc there {ph.icl_final:.3f}); skip-trigram score {skip1:.3f} at {final} "
                   f"(top skip-trigram head 1.{top_skip}); clamped CIWL acc s=0/.5/1: "
                   f"{acc[0]:.3f}/{acc[1]:.3f}/{acc[2]:.3f} (needs induction>=.2, same head top copier with "
                   "score>=.3, clamp s=1 beats s=0 by >=.5)")


if __name__ == "__main__":
    main()
