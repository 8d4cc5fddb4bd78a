"""Training: one loop for one seed or many, Adam on the query loss, checkpoint schedule, evaluator logging,
forgetting interventions, resume and extension.

The loop (`run_loop`) drives a `Learner`: one seed here (`SingleSeed`), many at once in multiseed.py
(`SeedStack`). Resume is exact: the newest state (float32 weights, Adam moments, the data stream's RNG) is saved
at every evaluation, on Ctrl-C and at the end, and the forgetting re-inits draw from a generator seeded by
(seed, step), so an interrupted CPU run continues bit-identically, and a finished run extended to more steps
ends with the weights of a run trained to that length straight away. Ctrl-C (SIGINT) takes effect only between
two steps (`interrupts_between_steps`): a signal that arrives mid-step, mid-evaluation or mid-checkpoint write
lets that work finish, so the state saved is one the straight run passes through too. A second Ctrl-C stops
at once; the run then resumes from its last evaluation, as after a kill.
"""
from __future__ import annotations

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

from .checkpoints import ResumeState, Run, load_run, prepare_run_dir, save_checkpoint
from .config import RunConfig
from .markov import MarkovBatch
from .markov_model import MarkovSeeds, training_batches
from .errors import CoopError
from .model import CoopModel
from .tables import concat, read_table, table, write_table
from .task import EVALUATORS, Batch, accuracy, loss, make_batch, sample_train

EVAL_SEED = 10_000
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


def eval_batches(config: RunConfig, device: str) -> dict[str, Batch] | dict[str, MarkovBatch]:
    """Fixed evaluation batches (train classes, and holdout classes when the task has them; the Markov task: its
    in- and out-of-distribution sequences)."""
    if config.task.kind == "markov":
        return training_batches(config, device)
    task, n = config.task, config.train.eval_n
    batches = {ev: make_batch(task, ev, n, seed=EVAL_SEED + i, device=device) for i, ev in enumerate(EVALUATORS)}
    if task.holdout_classes:
        for i, ev in enumerate(EVALUATORS):
            batches[f"{ev}/holdout"] = make_batch(task, ev, n, seed=EVAL_SEED + 100 + i, holdout=True, device=device)
    return batches


Results = dict[str, dict[str, float]]  # evaluator -> {"acc": ..., "loss": ...}


@torch.no_grad()
def evaluate(model: CoopModel, batches: dict[str, Batch]) -> Results:
    out = {}
    for name, batch in batches.items():
        logits = model.fast_logits(batch.exemplars, batch.labels)
        out[name] = {"acc": accuracy(logits, batch).item(), "loss": loss(logits, batch).item()}
    return out


def metric_rows(run_name: str, step: int, seqs: int, results: Results) -> pd.DataFrame:
    return table({"run": run_name, "step": step, "seqs_seen": seqs, "analysis": "behavior", "metric": metric,
                  "evaluator": ev, "value": value}
                 for ev, vals in results.items() for metric, value in vals.items())


def forget_now(config: RunConfig, step: int) -> bool:
    t = config.train
    if t.forgetting == "none" or step == 0 or step % t.forget_every:
        return False
    return t.forgetting == "active" or step < t.forget_until


def forget_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of the forgetting re-init at `step`: a function of (seed, step), so resume is exact. It lives on
    the parameters' device (a CPU generator serves cpu and meta, which has none of its own)."""
    device = torch.device(device)
    where = "cpu" if device.type in ("cpu", "meta") else device
    return torch.Generator(device=where).manual_seed(seed * 1_000_003 + step)


@runtime_checkable
class Learner(Protocol):
    """What the loop needs of the models it trains: seed j of len(self) writes the run directory dirs[j]."""

    device: str

    def __len__(self) -> int: ...
    def load_state(self, j: int, run_dir: Path) -> int: ...
    def save_state(self, j: int, run_dir: Path, step: int) -> None: ...
    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None: ...
    def evaluate(self, batches: dict[str, Batch]) -> list[Results]: ...
    def forget(self, step: int) -> None: ...
    def train_step(self, step: int | None = None) -> None: ...


class SingleSeed:
    """One model, its Adam and its data stream (the seed of `config.train`)."""

    def __init__(self, config: RunConfig, device: str):
        t = config.train
        self.config, self.device = config, device
        self.model = CoopModel(config.task, config.model, seed=t.seed).to(device)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=t.lr, fused=True)
        self.gen = torch.Generator(device=device).manual_seed(t.seed)

    def __len__(self) -> int:
        return 1

    def load_state(self, j: int, run_dir: Path) -> int:
        return ResumeState(run_dir).load(self.model, self.opt, self.gen)

    def save_state(self, j: int, run_dir: Path, step: int) -> None:
        ResumeState(run_dir).save(step, self.model, self.opt, self.gen)

    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None:
        t = self.config.train
        save_checkpoint(run_dir, self.model, step, step * t.batch_size, t.checkpoint_dtype)

    def evaluate(self, batches: dict[str, Batch]) -> list[Results]:
        return [evaluate(self.model, batches)]

    def forget(self, step: int) -> None:
        """Re-initialise the exemplar or label embedding and its Adam state (Anand et al.'s forgetting)."""
        t = self.config.train
        self.model.reset_embedding(t.forget_target, forget_generator(t.seed, step, self.model.label_embedding.device))
        for param in self.model.forget_parameters(t.forget_target):
            for value in self.opt.state.get(param, {}).values():
                value.zero_()

    def train_step(self, step: int | None = None) -> None:
        batch = sample_train(self.config.task, self.config.train.batch_size, self.gen, step)
        train_loss = F.cross_entropy(self.model.fast_logits(batch.exemplars, batch.labels), batch.target)
        self.opt.zero_grad(set_to_none=True)
        train_loss.backward()
        self.opt.step()


class Reporter:
    """Progress: a rich bar on a terminal; elsewhere (a log file, CI) a plain line at most every LOG_EVERY_S
    seconds and at the end, so that long runs are never silent."""

    def __init__(self, label: str, total: int, start: int, enabled: bool):
        self.label, self.total, self.start = label, total, start
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
        if "train" in results[0]:
            mean = {ev: sum(r[ev]["acc"] for r in results) / len(results) for ev in ("icl", "ciwl", "flip")}
            train_loss = sum(r["train"]["loss"] for r in results) / len(results)
            stats = f"loss {train_loss:.3f}  " + "  ".join(f"{ev} {v:.2f}" for ev, v in mean.items())
        else:  # the Markov task logs a loss per evaluator
            stats = "  ".join(f"{ev} loss {sum(r[ev]['loss'] for r in results) / len(results):.3f}"
                              for ev in results[0])
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
    batches = eval_batches(config, learner.device)
    step = start
    with Reporter(label, t.steps, start, progress) as report, interrupts_between_steps() as interrupted:
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


def train(config: RunConfig, out_dir: str | Path, progress: bool = True, device: str | None = None) -> Run:
    """Train (or resume, or extend to more steps) a run into `out_dir`; returns the loaded Run."""
    config.validate()
    device = resolve_device(device)
    out = Path(out_dir)
    prepare_run_dir(config, out)
    learner = MarkovSeeds(config, [config.train.seed], device) if config.task.kind == "markov" \
        else SingleSeed(config, device)
    run_loop(learner, config, [out], ResumeState(out).step(), progress, f"train {config.name}")
    return load_run(out)
