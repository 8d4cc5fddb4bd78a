"""Forgetting (Anand et al.): re-initialising the content (exemplar) embedding and its Adam state every k steps
keeps ICL, also on held-out classes, and holds back the memorisation that CIWL needs; done only for the first N
steps (`temporary_forgetting`), ICL forms and CIWL catches up afterwards.

Compared at the runs' last evaluation (plain run at the same step). Criteria (fixed before the run): active
forgetting: ICL and held-out ICL >= .8, CIWL >= .1 below the plain run's; temporary forgetting: ICL >= .8 at N,
CIWL rises by >= .1 from N to the end. The label-embedding variant (`active_forgetting_label`) is reported."""
from __future__ import annotations

from common import INTERVENTIONS, SMOOTH, icl_curves, metrics, parse, save, verdict

from coopinterp.checkpoints import read_run_config
from coopinterp.phases import accuracy_curves

RUNS = ("active_forgetting", "temporary_forgetting", "active_forgetting_label")


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    runs = {name: metrics(INTERVENTIONS / name) for name in RUNS}
    runs["plain"] = metrics(args.run)
    acc = {name: accuracy_curves(t, smooth=SMOOTH) for name, t in runs.items()}
    until = read_run_config(INTERVENTIONS / "temporary_forgetting").train.forget_until
    last = int(min(acc[name].index.max() for name in RUNS[:2]))
    label_last = int(min(last, acc["active_forgetting_label"].index.max()))
    at = lambda name, col, step=last: float(acc[name][col].loc[:step].iloc[-1])  # noqa: E731
    save(icl_curves({k: runs[k] for k in ("plain", *RUNS[:2])}, ("icl", "ciwl", "icl/holdout"),
                    "Forgetting the exemplar embedding every 10,000 steps (temporary: until 50,000)"), args.out,
         "forgetting")
    ok = (at("active_forgetting", "icl") >= 0.8 and at("active_forgetting", "icl/holdout") >= 0.8
          and at("active_forgetting", "ciwl") <= at("plain", "ciwl") - 0.1
          and at("temporary_forgetting", "icl", until) >= 0.8
          and at("temporary_forgetting", "ciwl") >= at("temporary_forgetting", "ciwl", until) + 0.1)
    return verdict(ok, "forgetting the exemplar embedding keeps ICL and holds back CIWL; temporary lets CIWL return",
                   f"at step {last}: active ICL {at('active_forgetting', 'icl'):.3f} (held out "
                   f"{at('active_forgetting', 'icl/holdout'):.3f}), CIWL {at('active_forgetting', 'ciwl'):.3f} vs "
                   f"plain {at('plain', 'ciwl'):.3f} (plain ICL {at('plain', 'icl'):.3f}); temporary ICL "
                   f"{at('temporary_forgetting', 'icl', until):.3f} at N={until} -> "
                   f"{at('temporary_forgetting', 'icl'):.3f}, CIWL {at('temporary_forgetting', 'ciwl', until):.3f} -> "
                   f"{at('temporary_forgetting', 'ciwl'):.3f}; label-embedding variant at step {label_last}: ICL "
                   f"{at('active_forgetting_label', 'icl', label_last):.3f}, CIWL "
                   f"{at('active_forgetting_label', 'ciwl', label_last):.3f}, IWL "
                   f"{at('active_forgetting_label', 'iwl', label_last):.3f} (needs active ICL,held-out>=.8, CIWL<=plain-.1; "
                   "temporary ICL>=.8 at N, CIWL +.1 after N)")


if __name__ == "__main__":
    main()
