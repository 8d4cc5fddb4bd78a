"""Minimal coopetition model: the fast "ICL" mechanism rises then decays while the slower "CIWL" one takes over,
and the slower one forms non-monotonically (its loss rises for a while: the divot)."""
from __future__ import annotations

from common import parse, save, verdict

from coopinterp.minimal import minimal_figure, run_minimal, summarize_minimal


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    table = run_minimal(steps=4000 if args.fast else 16_000, seed=7)
    s = summarize_minimal(table)
    save(minimal_figure(table), args.out, "minimal_model")
    overtakes_after_peak = s.ciwl_overtakes_step is not None and s.ciwl_overtakes_step > s.icl_peak_step
    ok = s.icl_peak >= 0.5 and s.icl_final <= 0.5 * s.icl_peak and overtakes_after_peak and s.l2_divot_height > 0.05
    return verdict(ok, "minimal model: ICL transient, CIWL takes over with a divot",
                   f"ICL strength peak {s.icl_peak:.3f} at step {s.icl_peak_step}, final {s.icl_final:.3f}; CIWL "
                   f"overtakes at {s.ciwl_overtakes_step}, final {s.ciwl_final:.3f}; L2 divot +{s.l2_divot_height:.3f} "
                   f"at step {s.l2_divot_step} (needs peak>=.5, final<=half, overtake after peak, divot>.05)")


if __name__ == "__main__":
    main()
