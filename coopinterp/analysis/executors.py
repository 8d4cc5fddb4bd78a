"""Where analyze() computes its checkpoints: in this process, in spawned worker processes beside it, or on Ray.

A `Job` is one checkpoint's work, complete enough for a process that has never seen the run: it opens the run from
its path (once per process) and reads or fills the same cache. Every executor has one method,
`run(jobs, done)`, which calls `done(step, frames)` in this process as each checkpoint finishes:

- `Serial(here)`: one after another in this process (`here`: a `Here`, the run analyze() was given, its cache and
  its evaluation batches, drawn once);
- `Pool(workers, here)`: in `workers - 1` spawned processes and in this one (`Pool.run`: the scheduling);
- `RayCluster(address, workers)`: as Ray tasks (cluster.py), into the same cache.

`choose` picks one the way analyze() always has. Worker processes run under the thread policy (threads.py).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd
import torch

from ..spawning import spawn_context
from ..tables import table
from .cache import Cache, Frame, StepArray
from .forwards import shared_forwards
from .registry import registry

Done = Callable[[int, list[Frame]], None]  # done(step, frames): one checkpoint's tables (or arrays), as it finishes


@dataclass(frozen=True)
class Job:
    """One checkpoint's work: the run (by path, device and pattern, as `open_run` takes them), the step, each
    analysis's checked options in the table's order (None: an analysis without settings), the evaluation batches
    (n, seed, data source), whether to ignore the cache, and where to write it (None: RUN/analysis/)."""

    path: str
    device: str
    pattern: str | None
    step: int
    options: Mapping[str, dict | None]
    n: int
    seed: int
    source: str | None
    recompute: bool
    cache_dir: str | None


# --- one checkpoint ----------------------------------------------------------------------------------------------

def compute(run, step: int, analysis: str, batches: dict, options: dict | None) -> pd.DataFrame | StepArray:
    """One analysis's table at one checkpoint (no cache); an analysis over the trajectory: its array there."""
    record = registry()[analysis]
    rows = record.compute(run.model(step), batches, options)
    if record.across is not None:
        return StepArray(analysis, step, rows)
    fixed = {"run": run.name, "step": step, "seqs_seen": run.seqs_seen(step), "analysis": analysis}
    return table({**row, **fixed} for row in rows)


def step_frames(run, job: Job, cache: Cache, batches: dict | None = None, cached_only: bool = False,
                exact: bool = False) -> tuple[list[Frame], dict | None]:
    """One checkpoint's tables (cached ones reused; with `cached_only` only those, whatever their options unless
    `exact`, and for a damaged checkpoint file those computed before the damage), and the evaluation batches if
    they had to be drawn (or were given)."""
    step = job.step
    readable = run.readable(step)
    step_key = cache.step_key(step) if readable else {**cache.step_key_without_weights(), "checkpoint": ""}
    ignore = () if not cached_only or exact else ("options",) if readable else ("options", "checkpoint")
    frames = []
    with shared_forwards():  # one checkpoint's clean forwards, shared by its analyses
        for analysis, opts in job.options.items():
            key = cache.key(analysis, step_key, opts)
            df = None if job.recompute else cache.get(step, analysis, key, ignore)
            if df is None and not cached_only:
                batches = batches or run.batches(job.source, job.n, job.seed)
                df = compute(run, step, analysis, batches, opts)
                cache.put(step, analysis, key, df)
            if df is not None:
                frames.append(df)
    return frames, batches


class Here:
    """Computes jobs in this process on the run analyze() was given, into its cache, drawing the evaluation
    batches once."""

    def __init__(self, run, cache: Cache):
        self.run, self.cache = run, cache
        self._batches: dict[tuple, dict] = {}

    def __call__(self, job: Job) -> list[Frame]:
        drawn = (job.source, job.n, job.seed)
        with torch.no_grad():
            frames, batches = step_frames(self.run, job, self.cache, self._batches.get(drawn))
        if batches is not None:
            self._batches[drawn] = batches
        return frames


_opened: dict[tuple, object] = {}  # a worker process's opened runs, reused by its later checkpoints


def run_job(job: Job) -> list[Frame]:
    """A job in a worker process (a spawned one or a Ray task): it opens the run itself, once per process, and
    computes under the thread policy (threads.py)."""
    from ..runs import open_run
    from ..threads import apply

    apply()
    opened = (job.path, job.device, job.pattern)
    if opened not in _opened:
        _opened[opened] = open_run(job.path, device=job.device, pattern=job.pattern)
    run = _opened[opened]
    with torch.no_grad():
        cache = Cache(run, job.n, job.seed, run.source_key(job.source), job.cache_dir)
        return step_frames(run, job, cache)[0]


# --- executors ---------------------------------------------------------------------------------------------------

@runtime_checkable  # beartype checks annotations in the tests (tests/conftest.py)
class Executor(Protocol):
    def run(self, jobs: Sequence[Job], done: Done) -> None:
        """Compute every job, calling `done(job.step, frames)` in this process as each finishes."""


class Serial:
    """Every job in this process, one after another."""

    def __init__(self, here: Callable[[Job], list[Frame]]):
        self.here = here

    def run(self, jobs: Sequence[Job], done: Done) -> None:
        for job in jobs:
            done(job.step, self.here(job))


class Pool:
    """Jobs in `workers - 1` spawned processes and in this one, which has its imports loaded: a new process spends
    ~10 s importing torch, transformer-lens and transformers before its first checkpoint. The pool takes jobs from
    the front, two queued per process so that none waits for this one; this process takes them from the back, and
    at the end the queued ones no worker has started. This process computes under the thread policy while it
    does (threads.py), and gets its own thread count back after.
    """

    def __init__(self, workers: int, here: Callable[[Job], list[Frame]]):
        if workers < 2:
            raise ValueError(f"a pool computes beside this process: workers must be >= 2, got {workers}")
        self.workers, self.here = workers, here

    def run(self, jobs: Sequence[Job], done: Done) -> None:
        from ..threads import policy_threads

        host_threads = torch.get_num_threads()
        torch.set_num_threads(policy_threads())
        try:
            self._run(jobs, done)
        finally:
            torch.set_num_threads(host_threads)

    def _run(self, jobs: Sequence[Job], done: Done) -> None:
        pending, spawned = deque(jobs), self.workers - 1
        with ProcessPoolExecutor(spawned, mp_context=spawn_context()) as pool:
            running: dict = {}  # future -> job

            def collect(block: bool) -> None:
                finished, _ = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(running.pop(future).step, future.result())
                while pending and len(running) < 2 * spawned:
                    job = pending.popleft()
                    running[pool.submit(run_job, job)] = job

            collect(block=False)
            while True:
                if pending:
                    job = pending.pop()
                else:  # a queued job no worker has started yet, if any
                    job = next((running.pop(future) for future in list(running) if future.cancel()), None)
                    if job is None:
                        break
                done(job.step, self.here(job))
                collect(block=False)
            while running:
                collect(block=True)


class RayCluster:
    """Jobs as Ray tasks of one CPU each (cluster.py: `address` "local", "auto" or a cluster's address)."""

    def __init__(self, address: str, workers: int):
        self.address, self.workers = address, workers

    def run(self, jobs: Sequence[Job], done: Done) -> None:
        from ..cluster import ray_session

        with ray_session(self.address, self.workers) as session:
            remote = session.remote(num_cpus=1)(run_job)
            refs = {remote.remote(job): job.step for job in jobs}
            while refs:
                (finished,), _ = session.wait(list(refs), num_returns=1)
                done(refs.pop(finished), session.get(finished))


def choose(jobs: Sequence[Job], workers: int, ray: str | None, here: Callable[[Job], list[Frame]]) \
        -> Executor:
    """Ray if asked (and there is something to compute); else this process alone with one worker or fewer than two
    checkpoints per worker (a worker costs seconds to start: its imports); else a pool beside this process."""
    if ray and jobs:
        return RayCluster(ray, workers)
    if workers == 1 or len(jobs) < 2 * workers:
        return Serial(here)
    return Pool(workers, here)
