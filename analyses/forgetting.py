"""Forgetting (Anand et al.): re-initialising the label embedding every k steps for the first N steps
(`temporary_forgetting`) keeps ICL, also on held-out classes, while in-weights accuracy recovers after N;
doing it throughout (`active_forgetting`) keeps ICL but keeps in-weights learning low."""
from __future__ import annotations

from common import INTERVENTIONS, icl_curves, metrics, parse, save, verdict

from coopinterp.checkpoints import read_run_config
from coopinterp.phases import accuracy_curves


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    runs = {name: metrics(INTERVENTIONS / name) for name in ("temporary_forgetting", "active_forgetting")}
    runs["plain"] = metrics(args.run)
    acc = {name: accuracy_curves(t, smooth=5) for name, t in runs.items()}
    until = read_run_config(INTERVENTIONS / "temporary_forgetting").train.forget_until
    temp, active = acc["temporary_forgetting"], acc["active_forgetting"]
    last = int(min(temp.index.max(), active.index.max()))
    at = lambda a, col, step: float(a[col].loc[:step].iloc[-1])  # noqa: E731
    t_icl, t_hold, t_iwl_n, t_iwl = at(temp, "icl", last), at(temp, "icl/holdout", last), at(temp, "iwl", until), \
        at(temp, "iwl", last)
    a_icl, a_iwl, p_icl = at(active, "icl", last), at(active, "iwl", last), at(acc["plain"], "icl", last)
    save(icl_curves(runs, ("icl", "iwl", "icl/holdout")), args.out, "forgetting")
    ok = t_icl >= 0.8 and t_hold >= 0.8 and t_iwl >= t_iwl_n + 0.1 and a_icl >= 0.8 and a_iwl <= 0.1
    return verdict(ok, "temporary forgetting keeps ICL (also held out) and recovers IWL; active keeps IWL low",
                   f"at step {last}: temporary ICL {t_icl:.3f}, holdout ICL {t_hold:.3f}, IWL {t_iwl_n:.3f} at "
                   f"N={until} -> {t_iwl:.3f}; active ICL {a_icl:.3f}, IWL {a_iwl:.3f}; plain ICL {p_icl:.3f} "
                   "(needs temporary ICL,holdout>=.8, IWL +.1 after N; active ICL>=.8, IWL<=.1)")


if __name__ == "__main__":
    main()
