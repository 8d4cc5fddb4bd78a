"""K/V composition: layer 1 reads layer 0 through its keys and values, not its queries.

The paper's check: every layer-0 head's output zeroed only in layer 1's K (or V, or Q) input, everything else clean
(paper, 64M sequences: clean .986, Q .957, K .571, V .593 on the training distribution). Checkpoint: the
CIWL-state checkpoint (first with `flip` <= .1; common.Chosen); the ICL-peak checkpoint and the variant with the
query's direct path cut are reported. Criteria (fixed before the run): train accuracy with K or V zeroed is
>= .2 below clean, with Q zeroed within .05 of clean."""
from __future__ import annotations

from common import N, choose, parse, verdict

import coopinterp as ci
from coopinterp.analysis.patching import qkv_check


def describe(r: dict[str, float]) -> str:
    return f"clean {r['clean']:.3f}, K {r['k']:.3f}, V {r['v']:.3f}, Q {r['q']:.3f}"


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    at = choose(args.run, run.steps)
    batch = ci.make_batch(run.config.task, "train", n=4 * N, seed=0)
    state, peak = run.model(at.ciwl_state), run.model(at.icl_peak)
    r, cut, p = qkv_check(state, batch), qkv_check(state, batch, direct_path="cut"), qkv_check(peak, batch)
    ok = r["k"] <= r["clean"] - 0.2 and r["v"] <= r["clean"] - 0.2 and r["q"] >= r["clean"] - 0.05
    return verdict(ok, "layer 1 reads layer 0 through K and V, not Q",
                   f"{at.describe()}; train acc, layer-0 zeroed only in layer 1's input: CIWL state {describe(r)}; "
                   f"direct path cut {describe(cut)}; ICL peak {describe(p)} (paper .986/.571/.593/.957; needs "
                   "K,V <= clean-.2 and Q >= clean-.05)")


if __name__ == "__main__":
    main()
