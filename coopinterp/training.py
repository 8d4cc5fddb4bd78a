"""Training: one loop for one seed or many, Adam on the query loss, checkpoint schedule, evaluator logging,
forgetting interventions, resume and extension.

The loop (`run_loop`) drives a `Learner` (learner.py) that the run's task builds (coopinterp.tasks): one seed
(`train`) or many at once (`train_seeds`); the loop never learns the task. Resume is exact: the newest state (float32 weights, Adam moments, the data stream's RNG) is saved
at every evaluation, on Ctrl-C and at the end, and the forgetting re-inits draw from a generator seeded by
(seed, step), so an interrupted CPU run continues bit-identically, and a finished run extended to more steps
ends with the weights of a run trained to that length straight away. Ctrl-C (SIGINT) takes effect only between
two steps (`interrupts_between_steps`): a signal that arrives mid-step, mid-evaluation or mid-checkpoint write
lets that work finish, so the state saved is one the straight run passes through too. A second Ctrl-C stops
at once; the run then resumes from its last evaluation, as after a kill.
"""
from __future__ import annotations

import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .checkpoints import ResumeState, prepare_run_dir
from .config import RunConfig
from .errors import ConfigError, CoopError
from .learner import Learner, Results
from .runs import NativeRun, load_run
from .tables import concat, read_table, table, write_table
from .tasks import task_of

LOG_EVERY_S = 30.0  # without a terminal, a progress line at most this often


class TrainingInterrupted(CoopError):
    """Ctrl-C during training; the state was saved and the same call resumes."""


def checkpoint_schedule(total_steps: int, n: int) -> list[int]:
    """Step 0, then log-spaced steps up to total/4 (fast early phase changes), then linear steps to the end."""
    n_linear = max(1, n // 3)
    n_log = max(1, n - 1 - n_linear)
    quarter = max(1, total_steps // 4)
    early = np.geomspace(max(1, total_steps // 500), quarter, n_log)
    late = np.linspace(quarter, total_steps, n_linear + 1)[1:]
    steps = {0, total_steps, *(int(round(s)) for s in early), *(int(round(s)) for s in late)}
    return sorted(s for s in steps if 0 <= s <= total_steps)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CoopError("--device cuda requested but no CUDA device is available")
    return device


def metric_rows(run_name: str, step: int, seqs: int, results: Results) -> pd.DataFrame:
    return table({"run": run_name, "step": step, "seqs_seen": seqs, "analysis": "behavior", "metric": metric,
                  "evaluator": ev, "value": value}
                 for ev, vals in results.items() for metric, value in vals.items())


def forget_now(config: RunConfig, step: int) -> bool:
    t = config.train
    if t.forgetting == "none" or step == 0 or step % t.forget_every:
        return False
    return t.forgetting == "active" or step < t.forget_until


class Reporter:
    """Progress: a rich bar on a terminal; elsewhere (a log file, CI) a plain line at most every LOG_EVERY_S
    seconds and at the end, so that long runs are never silent."""

    def __init__(self, label: str, total: int, start: int, enabled: bool, summary: Callable[[list[Results]], str]):
        self.label, self.total, self.start, self.summary = label, total, start, summary
        self.plain = enabled and not sys.stdout.isatty()
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                            disable=not enabled or self.plain)
        self.t0 = self.last_line = time.monotonic()

    def __enter__(self) -> "Reporter":
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=self.total, completed=self.start, stats="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def advance(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    def evaluated(self, step: int, results: list[Results]) -> None:
        stats = self.summary(results)
        stats = stats if len(results) == 1 else f"mean over {len(results)} seeds: {stats}"
        self.bar.update(self.task, completed=step, stats=stats)
        now = time.monotonic()
        if self.plain and (now - self.last_line >= LOG_EVERY_S or step == self.total):
            rate = (step - self.start) / max(now - self.t0, 1e-9)
            left = (self.total - step) / rate if rate > 0 else float("nan")
            print(f"{self.label}: step {step}/{self.total} ({rate:.0f} steps/s, ~{left / 60:.0f} min left)  {stats}",
                  flush=True)
            self.last_line = now


@contextmanager
def interrupts_between_steps() -> Iterator[Callable[[], bool]]:
    """Inside the block a first SIGINT only raises a flag, which the loop reads between steps (the yielded
    callable); a second one raises KeyboardInterrupt at once. Outside the main thread, where no handler can be
    installed and no SIGINT arrives, the flag stays down."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def first(signum, frame) -> None:
        flag.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def run_loop(learner: Learner, config: RunConfig, dirs: list[Path], start: int, progress: bool, label: str) -> None:
    """Train every seed of `learner` from `start` to `config.train.steps`, writing seed j's run into dirs[j]."""
    t = config.train
    if start:
        for j, d in enumerate(dirs):
            learner.load_state(j, d)
    metrics = []
    for d in dirs:
        path = d / "metrics.parquet"
        m = read_table(path) if start and path.exists() else table([])
        metrics.append(m[m.step < start])
    schedule = set(checkpoint_schedule(t.steps, t.n_checkpoints))
    task = task_of(config)
    batches = task.training_batches(config, learner.device)
    step = start
    with Reporter(label, t.steps, start, progress, task.progress) as report, interrupts_between_steps() as interrupted:
        while True:
            if interrupted():  # between steps: weights, Adam, RNG and metrics are those of the straight run here
                for j, d in enumerate(dirs):
                    write_table(metrics[j], d / "metrics.parquet")
                    learner.save_state(j, d, step)
                where = dirs[0] if len(dirs) == 1 else f"{dirs[0].parent} ({len(dirs)} seeds)"
                raise TrainingInterrupted(f"interrupted at step {step}; state saved in {where}, "
                                          "run the same command again to resume")
            if step in schedule:
                for j, d in enumerate(dirs):
                    learner.save_checkpoint(j, d, step)
            if step % t.eval_every == 0 or step == t.steps:
                results = learner.evaluate(batches)
                for j, d in enumerate(dirs):
                    metrics[j] = concat([metrics[j], metric_rows(config.name, step, step * t.batch_size,
                                                                 results[j])])
                    write_table(metrics[j], d / "metrics.parquet")
                    learner.save_state(j, d, step)
                report.evaluated(step, results)
            if step == t.steps:
                break
            if forget_now(config, step):
                learner.forget(step)
            learner.train_step(step)
            step += 1
            if step % 100 == 0:
                report.advance(step)


def train(config: RunConfig, out_dir: str | Path, progress: bool = True, device: str | None = None) -> NativeRun:
    """Train (or resume, or extend to more steps) a run into `out_dir`; returns the loaded run."""
    config.validate()
    device = resolve_device(device)
    out = Path(out_dir)
    learner = task_of(config).learner(config, None, device)  # first: a config its task refuses leaves no directory
    prepare_run_dir(config, out)
    run_loop(learner, config, [out], ResumeState(out).step(), progress, f"train {config.name}")
    return load_run(out)


def parse_seeds(text: str) -> list[int]:
    """'0-31' -> [0, ..., 31]; '0,2,5' -> [0, 2, 5]; ranges and lists mix ('0-3,8')."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"bad seed list {text!r}: use e.g. '0-31' or '0,2,5'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed list {text!r} repeats a seed")
    return seeds


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def train_seeds(config: RunConfig, seeds: list[int], out_dir: str | Path, progress: bool = True,
                device: str | None = None) -> list[NativeRun]:
    """Train (or resume) one run per seed into OUT/seed_{s}/, all seeds at once; returns their Runs.

    Seeds whose saved states stand at different steps (e.g. a seed list extended later) train in groups.
    """
    config.validate()
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be distinct non-negative integers, got {seeds}")
    device = resolve_device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    for s in seeds:
        prepare_run_dir(config.replace(train={"seed": s}), seed_dir(out, s))
    starts = {s: ResumeState(seed_dir(out, s)).step() for s in seeds}
    for start in sorted(set(starts.values())):
        group = [s for s in seeds if starts[s] == start]
        learner = task_of(config).learner(config, group, device)
        run_loop(learner, config, [seed_dir(out, s) for s in group], start, progress,
                 f"train {config.name} x{len(group)} seeds")
    return [load_run(seed_dir(out, s)) for s in seeds]
