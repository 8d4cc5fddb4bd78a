"""Strategy order (the paper's first figure): ICL emerges first, then CIWL takes over, `flip` crosses from the
in-context answer to the memorised one, and pure in-weights learning stays low throughout.

Criteria (from the paper, fixed before the run): on behaviour curves smoothed over 5 evaluations, ICL peaks at
>= .9 and is above CIWL there; CIWL ends >= .9; `flip` (in-context answer) reaches >= .7 and ends <= .3; pure
IWL (query's label absent from the context) stays <= .1 at every evaluation (the paper's network "barely does
pure IWL").

Reported beside the verdict (not part of it): the direct path alone (`paper_checks` `direct_only`: the query's own
embedding, every attention output removed) on `train` and `ciwl` at every checkpoint (`--fast`: the ICL-peak,
CIWL-state and final ones), against the paper's .627 on train (its appendix, `only_embunemb`; two-way, chance .5).
Where it decides the two-way choice by itself, `ciwl` measures memorisation through it rather than layer 1."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from common import SMOOTH, analyze, choose, metrics, parse, save, verdict

import coopinterp as ci
from coopinterp.phases import accuracy_curves
from coopinterp.plots import behavior_figure

PAPER_DIRECT_ONLY = 0.627  # train accuracy of the paper's direct path alone (appendix, only_embunemb)
DECIDES = 0.75  # direct-path-only train accuracy above which the direct path decides the two-way choice


def direct_only(run_dir: Path, fast: bool) -> pd.DataFrame:
    """step x evaluator (train, ciwl) accuracy of the direct path alone, from `paper_checks`."""
    run = ci.load_run(run_dir)
    if fast:
        at = choose(run_dir, run.steps)
        steps = sorted({at.icl_peak, at.ciwl_state, at.final})
    else:
        steps = run.steps
    table = analyze(run, ["paper_checks"], steps=steps)
    rows = table[(table.component == "direct_only") & (table.metric == "acc")
                 & table.evaluator.isin(["train", "ciwl"])]
    return rows.pivot_table(index="step", columns="evaluator", values="value").sort_index()


def describe_direct(d: pd.DataFrame) -> str:
    """The direct-path numbers and how they compare with the paper's."""
    per_step = ", ".join(f"{row.train:.3f}/{row.ciwl:.3f} at {step:,}" for step, row in d.iterrows())
    above = d.index[d.train > DECIDES]
    judged = (f"above {DECIDES} at {len(above)} of {len(d)} checkpoints (from step {above[0]:,}): it decides the "
              "two-way choice by itself" if len(above) else f"<= {DECIDES} at every checkpoint")
    return (f"direct path alone (query's embedding, attention removed), train/ciwl: {per_step}; train max "
            f"{d.train.max():.3f} vs the paper's {PAPER_DIRECT_ONLY} (chance .5), {judged}")


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    table = metrics(args.run)
    curves, raw = accuracy_curves(table, smooth=SMOOTH), accuracy_curves(table)
    peak = int(curves.icl.idxmax())
    icl_peak, ciwl_at_peak = float(curves.icl[peak]), float(curves.ciwl[peak])
    ciwl_final, flip_max, flip_final = float(curves.ciwl.iloc[-1]), float(curves.flip.max()), float(curves.flip.iloc[-1])
    iwl_max, iwl_step = float(raw.iwl.max()), int(raw.iwl.idxmax())
    save(behavior_figure(table), args.out, "strategy_order")
    ok = (icl_peak >= 0.9 and icl_peak > ciwl_at_peak and ciwl_final >= 0.9 and flip_max >= 0.7
          and flip_final <= 0.3 and iwl_max <= 0.1)
    return verdict(ok, "ICL first, then CIWL takes over; flip crosses; pure IWL stays low",
                   f"ICL peak {icl_peak:.3f} at step {peak} (CIWL there {ciwl_at_peak:.3f}); CIWL final "
                   f"{ciwl_final:.3f}; flip max {flip_max:.3f}, final {flip_final:.3f}; pure IWL max {iwl_max:.3f} "
                   f"(step {iwl_step}) (needs ICL peak>=.9 and >CIWL there, CIWL final>=.9, flip max>=.7 and "
                   f"final<=.3, IWL<=.1 throughout); {describe_direct(direct_only(args.run, args.fast))}")


if __name__ == "__main__":
    main()
