"""K/V composition: with all layer-0 heads ablated only in layer 1's K (or V) input, train accuracy falls toward
chance; ablated only in its Q input, it barely changes (paper: K .571, V .593, Q .957). Judged at the final
checkpoint; the checkpoint nearest the ICL peak is reported beside it."""
from __future__ import annotations

from common import metrics, parse, verdict
from layer0_switch import nearest

import coopinterp as ci
from coopinterp.analysis.patching import qkv_check
from coopinterp.phases import accuracy_curves, find_phases


def describe(r: dict[str, float]) -> str:
    return f"clean {r['clean']:.3f}, K {r['k']:.3f}, V {r['v']:.3f}, Q {r['q']:.3f}, everywhere {r['ablated']:.3f}"


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    final = run.steps[-1]
    at_peak = nearest(run.steps, find_phases(accuracy_curves(metrics(args.run), smooth=5)).icl_peak_step)
    batch = ci.make_batch(run.config.task, "train", n=256 if args.fast else 2048, seed=0)
    r, p = (qkv_check(run.model(step), batch, mode="mean") for step in (final, at_peak))
    ok = r["k"] <= r["clean"] - 0.2 and r["v"] <= r["clean"] - 0.2 and r["q"] >= r["clean"] - 0.05
    return verdict(ok, "layer 1 reads layer 0 through K and V, not Q",
                   f"train acc with layer-0 heads mean-ablated only in layer 1's K, V or Q input: step {final} "
                   f"{describe(r)}; step {at_peak} (ICL peak) {describe(p)} (paper .571/.593/.957; needs at the "
                   "final step K,V <= clean-.2 and Q >= clean-.05)")


if __name__ == "__main__":
    main()
