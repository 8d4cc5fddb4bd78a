"""Layer 1 conserved: the end-of-training layer 1 ("Layer 2") still does ICL when grafted into the ICL-peak
checkpoint, while its induction attention on `flip` forms and then reverses (the layer-0 switch, not layer 1,
turns ICL off).

Checkpoints: the ICL-peak, CIWL-state (first with `flip` <= .1) and final checkpoints (common.Chosen).
Criteria (the paper's, fixed before the run): graft-out (final layer 1 into the ICL-peak checkpoint) keeps ICL
accuracy within .1 of the ICL-peak checkpoint's own; the layer-1 head with the largest induction strength at the
ICL peak scores >= .3 there (forms) and < 0 at the CIWL state (reverses: it attends to the label next to the
other class, the memorised answer). Graft-in (the ICL-peak layer 1 into the final checkpoint) is reported."""
from __future__ import annotations

from common import N, attention_over_training, parse, save, verdict

from coopinterp.analysis import eval_batches
from coopinterp.analysis.grafting import graft_in, graft_out
from coopinterp.tasks.exemplar import evaluate
from coopinterp.plots import layer1_figure


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run, at, table = attention_over_training(args)
    ind = table[(table.layer == 1) & (table.metric == "induction_strength")].pivot_table(
        index="step", columns="head", values="value")
    head = int(ind.loc[at.icl_peak].idxmax())
    formed, at_state, at_final = (float(ind.loc[s, head]) for s in (at.icl_peak, at.ciwl_state, at.final))
    early, late = run.model(at.icl_peak), run.model(at.final)
    batches = eval_batches(run.config.task, 4 * N, seed=1)
    icl = {name: evaluate(m, batches)["icl"]["acc"] for name, m in
           (("early", early), ("late", late), ("out", graft_out(early, late)), ("in", graft_in(early, late)))}
    save(layer1_figure(table), args.out, "layer1_conserved")
    ok = icl["out"] >= icl["early"] - 0.1 and formed >= 0.3 and at_state < 0
    return verdict(ok, "layer 1 is conserved (graft-out keeps ICL) while its flip induction forms then reverses",
                   f"{at.describe()}; ICL acc: checkpoint {at.icl_peak} {icl['early']:.3f}, final {icl['late']:.3f}, "
                   f"graft-out (final layer 1 into {at.icl_peak}) {icl['out']:.3f}, graft-in ({at.icl_peak}'s layer "
                   f"1 into final) {icl['in']:.3f}; head 1.{head} induction on flip {formed:.3f} -> {at_state:.3f} "
                   f"(CIWL state) -> {at_final:.3f} (final) (needs graft-out>=peak-.1, induction>=.3 then <0)")


if __name__ == "__main__":
    main()
