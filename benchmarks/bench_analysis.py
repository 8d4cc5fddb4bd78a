"""Single-head ablations + path patching: the batched engine vs one TL hooked forward per head / pair.

Both compute the same table (acc and loss on every evaluator for every head ablated alone in each mode, and
for every sender -> receiver -> q|k|v path) on the same checkpoints; the hooked side loops the way
transformer-lens's `patching` module does (a cached clean run, then one `run_with_hooks` per patch; path
patching adds one forward per sender group to record the patched q/k/v). Prints both timings, the speed-up
and the largest difference.

    OMP_NUM_THREADS=1 python benchmarks/bench_analysis.py [RUN] [--steps 25650] [--n 512]

RUN defaults to checkpoints/demo; its run.json and the chosen checkpoints are copied to a temporary
directory first, so a run still training can be measured.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import coopinterp as ci
from coopinterp.analysis import ablation, eval_batches, patching
from coopinterp.checkpoints import checkpoint_path
from coopinterp.task import accuracy, loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import hooked_reference as reference  # noqa: E402  (the transformer-lens references live beside the tests)


def key(analysis: str, row: dict) -> tuple:
    return (analysis, row["metric"], row["evaluator"], row.get("layer"), row.get("head"), row.get("src_head"),
            row["component"])


class Timed:
    """Wraps `Engine.score` to time the unembedding + metrics, the part no batching removes."""

    def __init__(self):
        self.seconds, self.score = 0.0, ablation.Engine.score

    def __enter__(self) -> "Timed":
        def score(engine, hidden, batch):
            t0 = time.perf_counter()
            out = self.score(engine, hidden, batch)
            self.seconds += time.perf_counter() - t0
            return out
        ablation.Engine.score = score
        return self

    def __exit__(self, *exc) -> None:
        ablation.Engine.score = self.score


def batched(model: ci.CoopModel, batches: dict[str, ci.Batch]) -> dict[tuple, float]:
    return {key(name, r): r["value"] for name, module in (("ablation", ablation), ("path_patching", patching))
            for r in module.rows(model, batches)}


def hooked(model: ci.CoopModel, batches: dict[str, ci.Batch]) -> dict[tuple, float]:
    out: dict[tuple, float] = {}

    def record(analysis: str, logits: torch.Tensor, batch: ci.Batch, **cols) -> None:
        for metric, fn in (("acc", accuracy), ("loss", loss)):
            out[key(analysis, {"metric": metric, "evaluator": batch.evaluator, **cols})] = fn(logits, batch).item()

    H = model.cfg.n_heads
    groups = [[h] for h in range(H)] + [list(range(H))]
    names = list(range(H)) + [None]
    for ev, batch in batches.items():
        for mode in ablation.MODES:
            values = ablation.z_replacements(model, batch, mode)
            for layer, head in ablation.all_heads(model.cfg):
                logits = reference.ablate_hooked(model, batch, [(layer, head)], values)
                record("ablation", logits, batch, layer=layer, head=head, component=mode)
        values = ablation.z_replacements(model, batch, "mean")[0]
        for sender, src in zip(groups, names):
            inputs = reference.sender_inputs_hooked(model, batch, sender, values)
            for receiver, dst in zip(groups, names):
                for comp in patching.COMPONENTS:
                    logits = reference.receive_hooked(model, batch, receiver, comp, inputs)
                    record("path_patching", logits, batch, layer=1, head=dst, src_head=src, component=comp)
    return out


def copy_run(src: Path, steps: list[int] | None, dst: Path) -> ci.Run:
    run = ci.load_run(src)
    steps = steps or run.steps[-1:]
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "run.json", dst / "run.json")
    for step in steps:
        shutil.copy(checkpoint_path(src, run.check_step(step)), checkpoint_path(dst, step))
    return ci.load_run(dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="checkpoints/demo")
    parser.add_argument("--steps", default=None, help="comma-separated steps (default: the newest)")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = copy_run(Path(args.run), [int(s) for s in args.steps.split(",")] if args.steps else None,
                       Path(tmp) / "run")
        batches = eval_batches(run.config.task, args.n, args.seed)
        print(f"{args.run}: steps {run.steps}, n={args.n} x {len(batches)} evaluators, "
              f"{run.config.task.labels} labels, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        t_fast = t_slow = 0.0
        diff, count = 0.0, 0
        for step in run.steps:
            model = run.model(step)
            t0 = time.perf_counter()
            with Timed() as unembed:
                fast = batched(model, batches)
            t1 = time.perf_counter()
            slow = hooked(model, batches)
            t2 = time.perf_counter()
            assert fast.keys() == slow.keys()
            step_diff = max(abs(fast[k] - slow[k]) for k in fast)
            print(f"step {step}: {len(fast)} values, batched {t1 - t0:.1f} s (of which unembedding + metrics "
                  f"{unembed.seconds:.1f} s), hooked {t2 - t1:.1f} s, max |diff| {step_diff:.2e}", flush=True)
            t_fast, t_slow, diff, count = t_fast + t1 - t0, t_slow + t2 - t1, max(diff, step_diff), count + len(fast)
    print(f"total: batched engine {t_fast:.1f} s, one hooked forward per head/pair {t_slow:.1f} s, "
          f"speed-up {t_slow / t_fast:.1f}x, max |diff| {diff:.2e} over {count} values "
          f"(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
