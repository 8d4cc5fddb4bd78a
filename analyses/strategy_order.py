"""Strategy order (the paper's first figure): ICL emerges first, then CIWL takes over, `flip` crosses from the
in-context answer to the memorised one, and pure in-weights learning stays low throughout.

Criteria (from the paper, fixed before the run): on behaviour curves smoothed over 5 evaluations, ICL peaks at
>= .9 and is above CIWL there; CIWL ends >= .9; `flip` (in-context answer) reaches >= .7 and ends <= .3; pure
IWL (query's label absent from the context) stays <= .1 at every evaluation (the paper's network "barely does
pure IWL")."""
from __future__ import annotations

from common import SMOOTH, metrics, parse, save, verdict

from coopinterp.phases import accuracy_curves
from coopinterp.plots import behavior_figure


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
                   "final<=.3, IWL<=.1 throughout)")


if __name__ == "__main__":
    main()
