"""Layer-0 switch: layer-0 ("Layer 1") heads attend from each label to its exemplar (previous token) at the ICL
peak, and switch to attending to themselves as CIWL takes over.

Checkpoints: the ICL-peak checkpoint and the CIWL-state checkpoint (first with `flip` <= .1; see common.Chosen).
Criteria (fixed before the run): the top previous-token head at the ICL peak scores >= .5 there; by the CIWL
state its previous-token score has fallen by >= .2 and its self score risen by >= .2."""
from __future__ import annotations

from common import attention_over_training, parse, save, verdict

from coopinterp.plots import layer0_figure


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run, at, table = attention_over_training(args)
    layer0 = table[(table.layer == 0) & table.metric.isin(["prev_token_score", "self_score"])]
    score = layer0.pivot_table(index=["step", "head"], columns="metric", values="value")
    head = int(score.loc[at.icl_peak].prev_token_score.idxmax())
    prev0, self0 = score.loc[(at.icl_peak, head)]
    prev1, self1 = score.loc[(at.ciwl_state, head)]
    prev2, self2 = score.loc[(at.final, head)]
    save(layer0_figure(table), args.out, "layer0_switch")
    ok = prev0 >= 0.5 and prev1 <= prev0 - 0.2 and self1 >= self0 + 0.2
    return verdict(ok, "layer-0 heads switch from previous-token to self attention",
                   f"{at.describe()}; head 0.{head} (top previous-token head at the ICL peak): prev-token "
                   f"{prev0:.3f} -> {prev1:.3f}, self {self0:.3f} -> {self1:.3f} (final checkpoint {at.final}: "
                   f"{prev2:.3f}, {self2:.3f}) (needs prev>=.5 at the peak, then falls>=.2 and self rises>=.2)")


if __name__ == "__main__":
    main()
