"""Persistent ICL: training with `match_query` (the query is the very exemplar shown in context) keeps ICL high
to the end of training, while the plain run loses it."""
from __future__ import annotations

from common import INTERVENTIONS, icl_curves, metrics, parse, save, verdict

from coopinterp.phases import accuracy_curves, find_phases


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    plain, match = metrics(args.run), metrics(INTERVENTIONS / "match_query")
    plain_acc, match_acc = accuracy_curves(plain, smooth=5), accuracy_curves(match, smooth=5)
    last = int(min(match_acc.index.max(), plain_acc.index.max()))
    m_end, p_same = float(match_acc.icl.loc[:last].iloc[-1]), float(plain_acc.icl.loc[:last].iloc[-1])
    p = find_phases(plain_acc)
    save(icl_curves({"plain": plain, "match_query": match}, ("icl", "ciwl")), args.out, "persistent_icl")
    ok = m_end >= 0.9 and m_end >= p_same + 0.05 and p.icl_final <= p.icl_peak - 0.25
    return verdict(ok, "match_query keeps ICL while the plain run loses it",
                   f"ICL acc at step {last}: match_query {m_end:.3f}, plain {p_same:.3f}; plain ICL peak "
                   f"{p.icl_peak:.3f} -> {p.icl_final:.3f} at step {int(plain_acc.index.max())}; match_query "
                   f"CIWL at {last}: {float(match_acc.ciwl.loc[:last].iloc[-1]):.3f} (needs match>=.9 and "
                   ">= plain+.05 at the same step, plain fades >=.25)")


if __name__ == "__main__":
    main()
