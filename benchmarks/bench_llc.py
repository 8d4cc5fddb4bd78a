"""Cost of the llc analysis at one checkpoint: the whole model's LLC and every head's refined LLC.

Times the SGLD chains at the default options (coopinterp.analysis.llc.Options) on one core, split into the whole
model and the heads, and prints ms per SGLD step for each, seconds per checkpoint, and what a whole run costs on
one and on two cores (`analyze --workers 2`: one checkpoint per process).

    OMP_NUM_THREADS=1 python benchmarks/bench_llc.py [RUN] [--step STEP] [--draws N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import loadavg

import coopinterp as ci
from coopinterp.analysis import llc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", default=Path(__file__).resolve().parents[1] / "checkpoints" / "demo")
    p.add_argument("--step", type=int, default=None, help="checkpoint (default: the last)")
    p.add_argument("--draws", type=int, default=None, help="SGLD draws per chain (default: the analysis default)")
    args = p.parse_args()
    run = ci.load_run(args.run)
    step = run.steps[-1] if args.step is None else run.check_step(args.step)
    options = llc.Options() if args.draws is None else llc.Options(draws=args.draws)
    model = llc.trainable(run.model(step))
    batches = llc.sampling_batches(model, options)
    steps = options.chains * len(batches)
    print(f"{run.name} step {step}: {options.chains} chains x {len(batches)} SGLD steps of {options.batch_size} "
          f"sequences, torch threads {torch.get_num_threads()}, load {loadavg()}")
    seconds = {}
    for key, restriction in llc.restrictions(model, options).items():
        t0 = time.perf_counter()
        llc.sample_losses(model, llc.train_loss, batches, restriction, options)
        seconds[key] = time.perf_counter() - t0
    whole, heads = seconds.pop(None), sum(seconds.values())
    total = whole + heads
    print(f"whole model: {whole:6.1f} s ({1e3 * whole / steps:.1f} ms per SGLD step)")
    print(f"{len(seconds)} heads:    {heads:6.1f} s ({1e3 * heads / steps / len(seconds):.1f} ms per SGLD step "
          "and head)")
    n = len(run.steps)
    print(f"per checkpoint: {total:.0f} s; all {n} checkpoints: {n * total / 60:.1f} min on one core, "
          f"{-(-n // 2) * total / 60:.1f} min with --workers 2 on two")


if __name__ == "__main__":
    main()
