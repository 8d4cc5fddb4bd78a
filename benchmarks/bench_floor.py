"""The whole-run analysis against its floor: what the analyses must compute, what this machine computes per
second, and how long `analyze` takes from scratch.

    python benchmarks/bench_floor.py [RUN] [--workers 2] [--busy]

The floor: nearly all of the time is the unembedding of the intervened queries whose metric needs every label (the
loss: a 64 x labels fp32 matmul and a log-sum-exp; iwl accuracy: a maximum, which an anchor row decides without
any unembedding for most of path patching's rows, and a matmul for the rest: the bf16 screen's where bf16 is fast,
else fp32's); in-context accuracy and the logit difference read only the context labels' logits. The script runs
every default analysis on every checkpoint in this process (one core; timed), counting the rows of each kind
(wrapping `engine.full_rows`, `engine.anchored_top` and `Engine.context_logits`), measures this machine's fp32 matmul
and exp rates on blocks of `exact_rows`'s shape and, where bf16 is fast, the bf16 matmul rate on blocks of the
screen's, and reports
floor = loss rows x (1 / fp32 rate + 1 / exp rate) + unembedded argmax rows / (bf16 or fp32) rate for the whole
run, per core and for the cores used; then it times `analyze` from scratch (a copy of the run without its cache)
with each worker count and prints the ratio.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import busy_neighbour, loadavg

import coopinterp as ci
from coopinterp.analysis import default_analyses, engine, eval_batches, registry, shared_forwards
from coopinterp.analysis.executors import compute as compute_rows

REPO = Path(__file__).resolve().parents[1]


def count_rows(run: ci.Run, n: int) -> tuple[dict[str, int], float]:
    """Rows of every checkpoint's analyses by what they need: the full unembedding with the loss's log-sum-exp,
    an argmax over every label (iwl accuracy; of those, the rows their anchor decides without an unembedding), or
    only the context labels' logits; and the seconds it took in this process."""
    seen = {"loss": 0, "argmax": 0, "anchored": 0, "context": 0}
    full_rows, anchored_top, context_logits = engine.full_rows, engine.anchored_top, engine.Engine.context_logits

    def counting_full(hidden, W_U, b_U, target, loss=True, top=True, anchor=None):
        seen["loss" if loss else "argmax"] += hidden.numel() // hidden.shape[-1]
        return full_rows(hidden, W_U, b_U, target, loss, top, anchor)

    def counting_anchor(hidden, W_U, b_U, target, anchor):
        decided, is_top = anchored_top(hidden, W_U, b_U, target, anchor)
        seen["anchored"] += int(decided.sum())
        return decided, is_top

    def counting_context(self, hidden, batch):
        seen["context"] += hidden.numel() // hidden.shape[-1]
        return context_logits(self, hidden, batch)

    engine.full_rows, engine.anchored_top, engine.Engine.context_logits = (counting_full, counting_anchor,
                                                                          counting_context)
    t0 = time.perf_counter()
    try:
        batches = eval_batches(run.config.task, n, 0)
        for step in run.steps:
            with shared_forwards():
                for name in default_analyses():
                    compute_rows(run, step, name, batches, registry()[name].parse(None))
    finally:
        engine.full_rows, engine.anchored_top, engine.Engine.context_logits = (full_rows, anchored_top,
                                                                              context_logits)
    return seen, time.perf_counter() - t0


def rates(d_model: int, labels: int, repeats: int = 400) -> dict[str, float]:
    """Rows per second of the unembedding matmul (fp32 on `exact_rows`'s blocks; where bf16 is fast, bf16 with the
    bias as one more input dim on `screened_top`'s) and of exp over the labels."""
    block = max(engine.MIN_ROWS, engine.ROW_BLOCK // labels)
    x, w = torch.randn(engine.SCREEN_ROWS, d_model + 1), torch.randn(d_model + 1, labels)
    shapes = {"fp32": (x[:block, :d_model], w[:d_model])}
    if engine.bf16_is_fast("cpu"):
        shapes["bf16"] = (x.bfloat16(), w.bfloat16())
    out = {}
    for name, (a, b) in shapes.items():
        for _ in range(20):
            a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        out[f"matmul {name}"] = len(a) * repeats / (time.perf_counter() - t0)
    logits = x[:block, :d_model] @ w[:d_model]
    t0 = time.perf_counter()
    for _ in range(repeats):
        logits.exp()
    out["exp fp32"] = block * repeats / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path, default=REPO / "checkpoints" / "demo")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--workers", default="2")
    ap.add_argument("--busy", action="store_true", help="time beside a busy neighbour")
    ap.add_argument("--checkpoints", type=int, default=None,
                    help="time only the last K checkpoints and scale to the whole run (default: all)")
    args = ap.parse_args()
    run = ci.load_run(args.run)
    cfg = run.config
    print(f"load before: {loadavg()}; threads per process: {torch.get_num_threads()}")
    rows, one_process = count_rows(run, args.n)
    K = len(run.steps)
    r = rates(cfg.model.d_model, cfg.task.labels)
    flops = 2 * cfg.model.d_model * cfg.task.labels
    argmax = rows["argmax"] - rows["anchored"]
    screen = "bf16" if engine.bf16_is_fast("cpu") else "fp32"
    print(f"{K} checkpoints: {rows['loss']:,} rows need the loss (full unembedding + log-sum-exp), "
          f"{rows['argmax']:,} an argmax over every label (iwl accuracy; {argmax:,} of them not decided by their "
          f"anchor, unembedded in {screen}), {rows['context']:,} only the context labels' logits: "
          f"{(rows['loss'] + argmax) * flops / 1e12:.1f} TFLOP of unembedding and "
          f"{rows['loss'] * cfg.task.labels / 1e9:.0f} G exps")
    for name, rate in r.items():
        extra = f" ({rate * flops / 1e9:.0f} GFLOP/s)" if name.startswith("matmul") else ""
        print(f"  one core: {rate:,.0f} rows/s {name}{extra}")
    per_core = rows["loss"] * (1 / r["matmul fp32"] + 1 / r["exp fp32"]) + argmax / r[f"matmul {screen}"]
    print(f"floor (fp32 matmul + exp of the loss rows, {screen} matmul of the argmax rows, one core): {per_core:.0f} s; "
          f"on 2 cores: {per_core / 2:.0f} s")
    print(f"every analysis in this process (one core, imports and model code loaded): {one_process:.0f} s = "
          f"{one_process / per_core:.1f} x the floor for one core")
    timed_steps = run.steps[-args.checkpoints:] if args.checkpoints else run.steps
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as tmp, busy_neighbour(args.busy):
            copy = Path(tmp) / run.name
            shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("analysis", "state"))
            t0 = time.perf_counter()
            ci.analyze(ci.load_run(copy), steps=timed_steps, n=args.n, progress=False, workers=workers)
            seconds = (time.perf_counter() - t0) * len(run.steps) / len(timed_steps)
        floor = per_core / min(workers, 2)
        scaled = "" if len(timed_steps) == len(run.steps) else f" (timed on {len(timed_steps)} checkpoints, scaled)"
        print(f"analyze from scratch, {workers} worker(s){' beside a busy neighbour' if args.busy else ''}: "
              f"{seconds:.0f} s{scaled} = {seconds / floor:.1f} x the floor for {min(workers, 2)} core(s)")


if __name__ == "__main__":
    main()
