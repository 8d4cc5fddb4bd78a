"""Transience: after its peak, ICL accuracy fades as CIWL takes over.

Criterion (the paper's transience, fixed before the run): on behaviour curves smoothed over 5 evaluations, ICL at
the end of training is at least .25 below its peak (the paper's ICL falls from ~1 toward chance over ~10M steps at
lr 1e-5)."""
from __future__ import annotations

from common import SMOOTH, metrics, parse, save, verdict

from coopinterp.phases import accuracy_curves, find_phases
from coopinterp.plots import behavior_figure


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    table = metrics(args.run)
    ph = find_phases(accuracy_curves(table, smooth=SMOOTH))
    final_step = int(table.step.max())
    save(behavior_figure(table), args.out, "transience")
    ok = ph.icl_final <= ph.icl_peak - 0.25
    return verdict(ok, "ICL fades after its peak",
                   f"ICL peak {ph.icl_peak:.3f} at step {ph.icl_peak_step}, final {ph.icl_final:.3f} at step "
                   f"{final_step} (fade {ph.icl_peak - ph.icl_final:.3f}); CIWL final {ph.ciwl_final:.3f}, "
                   f"overtakes ICL at {ph.ciwl_overtake_step} (needs fade>=.25)")


if __name__ == "__main__":
    main()
