"""Training throughput, side by side: a plain eager loop, the fast single-seed path, S seeds at once.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --threads 2 [--seeds 8,32] [--steps 200] [--device cuda]

Variants (same preset, batch and model):
  eager    hooked TL forward through the bridge (`CoopModel.__call__`) + torch.optim.Adam (default implementation)
  fast     training.py's step: `fast_logits` + fused Adam, batches drawn on the device
  stack S  multiseed.SeedStack: S models as stacked tensors, batched matmuls, one fused Adam
  --compile adds the fast and stacked forwards under torch.compile (compile time reported separately).
Variants run interleaved in rounds so that a changing background load hits all of them alike; warm-up
excluded. Reports sequences/s over all seeds, per seed, and the speed-up over eager in all-seed throughput.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from common import loadavg
from rich.console import Console
from rich.table import Table

from coopinterp.tasks import preset
from coopinterp.model import CoopModel
from coopinterp.multiseed import SeedStack, stacked_logits
from coopinterp.task import sample_train


def single_step(config, device: str, hooked: bool, compiled: bool):
    """One seed's training step as a closure: hooked+torch Adam (eager) or fast_logits+fused Adam (fast)."""
    model = CoopModel(config.task, config.model, seed=0).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.train.lr, fused=not hooked)
    gen = torch.Generator(device=device).manual_seed(0)

    def loss_fn(exemplars, labels, target):
        return F.cross_entropy(model.fast_logits(exemplars, labels), target)

    loss_fn = torch.compile(loss_fn) if compiled else loss_fn

    def step() -> None:
        batch = sample_train(config.task, config.train.batch_size, gen)
        logits = model(batch) if hooked else None
        loss = F.cross_entropy(logits, batch.target) if hooked else loss_fn(batch.exemplars, batch.labels, batch.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def stack_step(config, device: str, n_seeds: int, compiled: bool):
    stack = SeedStack(config, list(range(n_seeds)), device)
    if compiled:
        stack.forward = torch.compile(stacked_logits)
    return stack.train_step


def step_floor(config) -> dict[str, float]:
    """A demo step's floor on this core, in ms: Adam's memory traffic and the unembedding's matmuls.

    Fused Adam reads parameter, gradient and both moments and writes parameter and moments: 7 float32 passes over
    every trainable parameter. The unembedding (the only large matmul) costs 3 matmuls of [batch, d_model] x
    [d_model, labels] per step (forward, input gradient, weight gradient). Both rates are measured here.
    """
    model = CoopModel(config.task, config.model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    big = torch.randn(32 * 2**20 // 4)  # 32 MB: beyond the caches
    dst = torch.empty_like(big)
    for _ in range(3):
        dst.copy_(big)
    t0 = time.perf_counter()
    for _ in range(20):
        dst.copy_(big)
    bandwidth = 20 * 2 * big.numel() * 4 / (time.perf_counter() - t0)  # bytes read + written per second
    B, d, L = config.train.batch_size, config.model.d_model, config.task.labels
    x, w = torch.randn(B, d), torch.randn(d, L)
    for _ in range(10):
        x @ w
    t0 = time.perf_counter()
    for _ in range(200):
        x @ w
    flops = 200 * 2 * B * d * L / (time.perf_counter() - t0)
    adam_ms = 7 * n_params * 4 / bandwidth * 1e3
    unembed_ms = 3 * 2 * B * d * L / flops * 1e3
    return {"params": n_params, "GB/s": bandwidth / 1e9, "GFLOP/s": flops / 1e9, "adam ms": adam_ms,
            "unembed ms": unembed_ms, "floor ms": adam_ms + unembed_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seeds", default="8,32", help="stack sizes to time, comma-separated")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="the timed steps are split into this many interleaved rounds")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd fast and stacked forwards")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = preset(args.preset)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    console = Console()
    console.print(f"preset {args.preset} (labels {config.task.labels}, batch {config.train.batch_size}), "
                  f"device {args.device}, torch threads {args.threads}, "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                  f"cores {os.cpu_count()}; load average before: {loadavg()}")

    variants: dict[str, tuple[int, object]] = {
        "eager": (1, single_step(config, args.device, hooked=True, compiled=False)),
        "fast": (1, single_step(config, args.device, hooked=False, compiled=False)),
    }
    for s in (int(x) for x in args.seeds.split(",")):
        variants[f"stack S={s}"] = (s, stack_step(config, args.device, s, compiled=False))
    compile_s = {}
    if args.compile:
        t0 = time.perf_counter()
        variants["fast+compile"] = (1, single_step(config, args.device, hooked=False, compiled=True))
        variants["fast+compile"][1]()
        compile_s["fast+compile"] = time.perf_counter() - t0
        s = int(args.seeds.split(",")[0])
        t0 = time.perf_counter()
        variants[f"stack S={s}+compile"] = (s, stack_step(config, args.device, s, compiled=True))
        variants[f"stack S={s}+compile"][1]()
        compile_s[f"stack S={s}+compile"] = time.perf_counter() - t0

    for _, step in variants.values():
        for _ in range(args.warmup):
            step()
    sync()
    wall = dict.fromkeys(variants, 0.0)
    cpu = dict.fromkeys(variants, 0.0)
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for name, (_, step) in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                step()
            sync()
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    steps = per_round * args.rounds
    load_after = loadavg()

    B = config.train.batch_size
    eager = steps * B / wall[next(iter(variants))]
    table = Table(title=f"training throughput, {steps} timed steps per variant after {args.warmup} warm-up")
    for col in ("variant", "seeds", "ms/step", "seq/s (all seeds)", "seq/s per seed", "x eager", "cpu ms/seed-step",
                "compile s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, (s, _) in variants.items():
        seqs = steps * B * s / wall[name]
        table.add_row(name, str(s), f"{wall[name] / steps * 1e3:.1f}", f"{seqs:,.0f}", f"{seqs / s:,.0f}",
                      f"{seqs / eager:.2f}", f"{cpu[name] / steps / s * 1e3:.2f}",
                      f"{compile_s[name]:.0f}" if name in compile_s else "")
    console.print(table)
    console.print(f"load average after: {load_after} (1, 5, 15 min). cpu ms/seed-step is process CPU time, the "
                  "least load-sensitive column with one thread; wall-clock columns include waiting for the CPU.")
    f = step_floor(config)
    fast_ms = wall["fast"] / steps * 1e3
    console.print(f"floor of one step: Adam over {f['params']:,} parameters at {f['GB/s']:.1f} GB/s = "
                  f"{f['adam ms']:.2f} ms, unembedding at {f['GFLOP/s']:.0f} GFLOP/s = {f['unembed ms']:.2f} ms; "
                  f"floor {f['floor ms']:.2f} ms, the fast step {fast_ms:.2f} ms = {fast_ms / f['floor ms']:.1f} x")


if __name__ == "__main__":
    main()
