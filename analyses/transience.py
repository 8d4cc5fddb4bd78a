"""Transience: ICL accuracy rises well above chance then decays; CIWL rises and persists; `flip` switches
from the in-context answer to the true label."""
from __future__ import annotations

from common import metrics, parse, save, verdict

from coopinterp.phases import accuracy_curves, find_phases
from coopinterp.plots import behavior_figure


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    table = metrics(args.run)
    ph = find_phases(accuracy_curves(table, smooth=5))
    flip = accuracy_curves(table, smooth=5)["flip"]
    flip_peak = float(flip.loc[: ph.icl_peak_step].max())
    save(behavior_figure(table), args.out, "transience")
    ok = (ph.icl_peak >= 0.8 and ph.icl_final <= ph.icl_peak - 0.25 and ph.ciwl_final >= 0.8
          and flip_peak >= 0.8 and ph.flip_switch_step is not None)
    return verdict(ok, "ICL rises then fades while CIWL takes over and flip switches",
                   f"ICL peak {ph.icl_peak:.3f} at step {ph.icl_peak_step}, ICL final {ph.icl_final:.3f}; "
                   f"CIWL final {ph.ciwl_final:.3f} (overtakes ICL at {ph.ciwl_overtake_step}); flip (in-context "
                   f"answer) peak {flip_peak:.3f}, below 0.5 from step {ph.flip_switch_step} "
                   "(needs ICL peak>=.8, fade>=.25, CIWL>=.8, flip peak>=.8 then <.5)")


if __name__ == "__main__":
    main()
