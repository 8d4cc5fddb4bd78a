"""Persistent ICL: training with `match_query` (the query is the very exemplar shown in context) keeps ICL, and
CIWL does not take over.

Compared at the intervention run's last evaluation with the plain run at the same step. Criteria (fixed before
the run): match_query ICL >= .9 and >= the plain run's ICL; match_query CIWL >= .1 below the plain run's."""
from __future__ import annotations

from common import INTERVENTIONS, SMOOTH, icl_curves, metrics, parse, save, verdict

from coopinterp.phases import accuracy_curves


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    plain, match = metrics(args.run), metrics(INTERVENTIONS / "match_query")
    p, m = accuracy_curves(plain, smooth=SMOOTH), accuracy_curves(match, smooth=SMOOTH)
    last = int(min(m.index.max(), p.index.max()))
    at = lambda curves, col: float(curves[col].loc[:last].iloc[-1])  # noqa: E731
    save(icl_curves({"plain": plain, "match_query": match}, ("icl", "ciwl"),
                    "Persistent ICL: the query is its in-context exemplar (match_query)"), args.out, "persistent_icl")
    ok = at(m, "icl") >= 0.9 and at(m, "icl") >= at(p, "icl") and at(m, "ciwl") <= at(p, "ciwl") - 0.1
    return verdict(ok, "match_query keeps ICL and holds CIWL back",
                   f"at step {last}: ICL match_query {at(m, 'icl'):.3f} vs plain {at(p, 'icl'):.3f}; CIWL "
                   f"match_query {at(m, 'ciwl'):.3f} vs plain {at(p, 'ciwl'):.3f}; flip match_query "
                   f"{at(m, 'flip'):.3f} vs plain {at(p, 'flip'):.3f} (needs match ICL>=.9 and >=plain, CIWL "
                   "<=plain-.1)")


if __name__ == "__main__":
    main()
