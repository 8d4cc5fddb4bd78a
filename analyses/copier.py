"""Skip-trigram copier: in the CIWL state a layer-1 ("Layer 2") head copies whichever label it attends to.

Checkpoint: the CIWL-state checkpoint (first with `flip` <= .1; common.Chosen). The paper's clamp: one layer-1
head's query attention is set to s on the true label and 1 - s on the other, and only that head's output reaches
the unembedding (the query's embedding path, every layer-0 head and the other layer-1 heads removed; its values
kept). Criteria (fixed before the run): for the head with the largest skip-trigram score at that checkpoint, CIWL
accuracy is >= .8 at s = 1 and <= .2 at s = 0. The number of layer-1 heads that copy (acc(1) - acc(0) >= .6) is
reported."""
from __future__ import annotations

from common import N, analyze, choose, parse, verdict

import coopinterp as ci
from coopinterp.analysis.clamping import copier_sweep


def main(argv: list[str] | None = None) -> str:
    args = parse(__doc__, argv)
    run = ci.load_run(args.run)
    at = choose(args.run, run.steps)
    table = analyze(run, ["attention"], steps=[at.ciwl_state], n=N, progress=False)
    skip = table[(table.layer == 1) & (table.metric == "skip_trigram_score")].set_index("head").value
    head = int(skip.idxmax())
    model = run.model(at.ciwl_state)
    batch = ci.make_batch(run.config.task, "ciwl", n=4 * N, seed=0)
    sweeps = {h: copier_sweep(model, batch, (1, h), s=[0.0, 0.5, 1.0], metrics=["acc"])["acc"].tolist()
              for h in range(model.cfg.n_heads)}
    lo, mid, hi = sweeps[head]
    copiers = [h for h, (a0, _, a1) in sweeps.items() if a1 - a0 >= 0.6]
    ok = hi >= 0.8 and lo <= 0.2
    return verdict(ok, "a layer-1 head is a skip-trigram copier in the CIWL state",
                   f"{at.describe()}; head 1.{head} (skip-trigram score {skip[head]:.3f}) alone, clamped: CIWL acc "
                   f"s=0/.5/1 {lo:.3f}/{mid:.3f}/{hi:.3f}; copiers among layer-1 heads: "
                   f"{', '.join(f'1.{h}' for h in copiers) or 'none'} ({len(copiers)}/{len(sweeps)}) "
                   "(needs s=1 >=.8 and s=0 <=.2)")


if __name__ == "__main__":
    main()
