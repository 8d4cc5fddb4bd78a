"""K/V composition: with all layer-0 heads ablated only in layer 1's K (or V) input, train accuracy falls toward
chance; ablated only in its Q input, it barely changes (paper: K .571, V .593, Q .957)."""
from __future__ import annotations

from common import parse, verdict

import coopinterp as ci
from coopinterp.analysis.patching import qkv_check


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    final = run.steps[-1]
    batch = ci.make_batch(run.config.task, "train", n=256 if args.fast else 2048, seed=0)
    r = qkv_check(run.model(final), batch, mode="mean")
    ok = r["k"] <= r["clean"] - 0.2 and r["v"] <= r["clean"] - 0.2 and r["q"] >= r["clean"] - 0.05
    return verdict(ok, "layer 1 reads layer 0 through K and V, not Q",
                   f"train acc at step {final}: clean {r['clean']:.3f}, layer-0 heads mean-ablated in layer-1 "
                   f"K only {r['k']:.3f}, V only {r['v']:.3f}, Q only {r['q']:.3f}, everywhere {r['ablated']:.3f} "
                   "(paper .571/.593/.957; needs K,V <= clean-.2 and Q >= clean-.05)")


if __name__ == "__main__":
    main()
