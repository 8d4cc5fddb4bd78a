"""The engine against transformer-lens hooks with the intervention sets folded into the batch (issue: one forward path).

For one demo checkpoint, the `ablation` table (every head alone, three modes, five evaluators) and the
`path_patching` table (each layer-0 head or all -> each layer-1 head or all, through q, k, v) are computed twice:
by `analysis.engine.Engine` (the exemplar model's hand-written batched forward) and by the bridge's own forward
with `hook_z` (ablation) or `hook_resid_pre` + `hook_q/k/v` (path patching) hooks editing S x n sequences at once,
stopped at the final LayerNorm. Both sides read the same metrics from the same unembedding (`Engine.score`).
Prints each side's time and the largest difference.

    python benchmarks/bench_forward.py [RUN] [--step 34200] [--n 512]
"""
from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch
from transformer_lens.utilities import get_act_name

from common import loadavg  # noqa: F401  (applies the thread policy)
from coopinterp.analysis import ablation, eval_batches, patching
from coopinterp.analysis.engine import METRICS, Engine, head_masks, replacement
from coopinterp.analysis.forwards import final_stream
from coopinterp.runs import load_run


def query_stream(model, resid: torch.Tensor, hooks: list) -> torch.Tensor:
    """The unembedding's input at the query from a hooked forward of the bridge that stops there."""
    return final_stream(model, resid, hooks, start_at_layer=0)[:, -1]


@torch.no_grad()
def hooked_ablation(model, batches) -> dict:
    heads = ablation.all_heads(model.cfg)
    masks = head_masks([[h] for h in heads], model.cfg)
    S, L = len(heads), model.cfg.n_layers
    names = [get_act_name("z", layer) for layer in range(L)]
    out = {}
    for ev, batch in batches.items():
        _, cache = model.run_with_cache(batch, names_filter=names)
        resid = model.residual(batch).repeat(S, 1, 1)
        for mode in ablation.MODES:
            def edit(z, hook, layer):
                value = replacement(cache[names[layer]], mode)
                m = masks[:, layer][:, None, None, :, None]
                return torch.where(m, value, z.unflatten(0, (S, -1))).flatten(0, 1)

            hidden = query_stream(model, resid, [(names[layer], partial(edit, layer=layer)) for layer in range(L)])
            scores = Engine(model).score(hidden.unflatten(0, (S, -1)), batch, METRICS)
            for m, v in scores.items():
                for (layer, head), value in zip(heads, v.tolist()):
                    out[("ablation", ev, mode, layer, head, m)] = value
    return out


@torch.no_grad()
def hooked_patching(model, batches) -> dict:
    H = model.cfg.n_heads
    groups = [[h] for h in range(H)] + [list(range(H))]
    out = {}
    for ev, batch in batches.items():
        n = len(batch.target)
        _, cache = model.run_with_cache(batch, names_filter=[get_act_name("z", 0)])
        z = cache[get_act_name("z", 0)]
        change = torch.einsum("nthe,hed->nthd", replacement(z, "mean") - z, model.bridge.W_O[0])
        delta = torch.stack([change[:, :, g].sum(2) for g in groups])  # sender n pos d_model
        G = len(groups)
        resid = model.residual(batch)
        store = {}
        qkv = [(get_act_name(c, 1), partial(lambda x, hook, c: store.__setitem__(c, x), c=c)) for c in "qkv"]
        query_stream(model, resid.repeat(G, 1, 1), [(get_act_name("resid_pre", 1),
                                                     lambda x, hook: x + delta.flatten(0, 1))] + qkv)
        patched = {c: store[c].unflatten(0, (G, n)) for c in "qkv"}
        sets = [(c, s, r) for c in "qkv" for s in range(G) for r in range(G)]
        S = len(sets)

        def swap(x, hook, c):
            x = x.unflatten(0, (S, n)).clone()
            for i, (comp, s, r) in enumerate(sets):
                if comp == c:
                    x[i][:, :, groups[r]] = patched[c][s][:, :, groups[r]]
            return x.flatten(0, 1)

        hidden = query_stream(model, resid.repeat(S, 1, 1), [(get_act_name(c, 1), partial(swap, c=c)) for c in "qkv"])
        scores = Engine(model).score(hidden.unflatten(0, (S, n)), batch, ["acc", "logit_diff"])
        for m, v in scores.items():
            for (c, s, r), value in zip(sets, v.tolist()):
                out[("path_patching", ev, c, s, r, m)] = value
    return out


def engine_ablation(model, batches) -> dict:
    return {("ablation", r["evaluator"], r["component"], r["layer"], r["head"], r["metric"]): r["value"]
            for r in ablation.rows(model, batches)}


def engine_patching(model, batches) -> dict:
    names = list(range(model.cfg.n_heads)) + [None]
    return {("path_patching", r["evaluator"], r["component"], names.index(r["src_head"]), names.index(r["head"]),
             r["metric"]): r["value"] for r in patching.rows(model, batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="checkpoints/demo")
    parser.add_argument("--step", type=int, default=34_200)
    parser.add_argument("--n", type=int, default=512)
    args = parser.parse_args()
    run = load_run(args.run)
    model = run.model(run.check_step(args.step))
    batches = eval_batches(run.config.task, args.n, 0)
    print(f"{args.run} step {args.step}, n={args.n}, torch threads {torch.get_num_threads()}, "
          f"load average {loadavg()} on {os.cpu_count()} cores")
    for analysis, engine, hooks in (("ablation", engine_ablation, hooked_ablation),
                                    ("path_patching", engine_patching, hooked_patching)):
        seconds, values = {}, {}
        for name, fn in (("engine", engine), ("hooks", hooks)):
            t = time.perf_counter()
            values[name] = fn(model, batches)
            seconds[name] = time.perf_counter() - t
        a, b = values["engine"], values["hooks"]
        assert a.keys() == b.keys(), f"{analysis}: {len(a)} engine values, {len(b)} hooked"
        diff = max(abs(a[k] - b[k]) for k in a)
        print(f"{analysis}: engine {seconds['engine']:.1f} s, hooks (sets folded into the batch) "
              f"{seconds['hooks']:.1f} s = {seconds['hooks'] / seconds['engine']:.2f}x; {len(a)} values, "
              f"max |diff| {diff:.2e} (load average now {loadavg()})", flush=True)


if __name__ == "__main__":
    main()
