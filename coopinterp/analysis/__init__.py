"""analyze(): the analyses at every checkpoint of a run, as one tidy table, cached per (step, analysis).

Every analysis is one module of this package that declares an `ANALYSIS` record (record.py: name, version,
rows, typed options, opt-in, the kinds of model it applies to, figures, headline); `analyze` adds run, step,
seqs_seen and analysis to its rows. Opt-in analyses (the SGLD-sampled `llc`: minutes per checkpoint, an optional
dependency) run only when named; analyses that do not apply to the run's model (the exemplar task's evaluators on a
token model) are left out of the default set. Within one checkpoint the analyses share one hooked forward per
batch (`clean_run`: logits and every attention pattern), and all of analyze() runs under torch.no_grad().

Cache: RUN/analysis/{analysis}/step_{step:09d}.n{n}.seed{seed}[.{source}].parquet, the table of one
(step, analysis) (step_{step:09d}.parquet for analyses that draw their own batches). Its key rides in the parquet's
pandas attrs: the analysis and its declared version, n, seed, the data source, a hash of the run's task and model
config, of the checkpoint's weights file, and the analysis's options if it has any. A file whose key differs, or
that cannot be read, is recomputed and replaced; `recompute=True` ignores every cached file. A run directory that
cannot be written is analysed without a cache (one warning).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import multiprocessing as mp
import pkgutil
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..cluster import ray_session
from ..errors import ConfigError, CoopError
from ..tables import concat, read_table, table, write_table
from ..threads import default_workers, policy_threads
from .forwards import CleanRun, clean_run, eval_batches, shared_forwards
from .record import Analysis


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, Analysis]:
    """Every analysis of this package, by name: the modules that declare an `ANALYSIS` record."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        record = getattr(importlib.import_module(f"{__name__}.{info.name}"), "ANALYSIS", None)
        if isinstance(record, Analysis):
            found[record.name] = record
    return dict(sorted(found.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


ORDER = ("behavior", "attention", "composition", "ablation", "path_patching", "clamping", "paper_checks", "llc")


def default_analyses(kind: str = "exemplar") -> list[str]:
    """What analyze() runs when not told: every analysis for this kind of model but the opt-in ones."""
    return [name for name, a in registry().items() if not a.opt_in and a.applies(kind)]


def _names(analyses: str | Sequence[str] | None, kind: str) -> list[str]:
    if analyses is None:
        return default_analyses(kind)
    names = [analyses] if isinstance(analyses, str) else list(analyses)
    known = registry()
    unknown = [a for a in names if a not in known]
    if unknown or not names:
        raise ConfigError(f"unknown analysis {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(known)}")
    wrong = [a for a in names if not known[a].applies(kind)]
    if wrong:
        raise ConfigError(f"analysis {', '.join(wrong)} does not apply to this run's {kind} model; "
                          f"choose from {', '.join(default_analyses(kind))}")
    return list(dict.fromkeys(names))


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class _Cache:
    """Per-(step, analysis) tables under RUN/analysis/ (or `cache_dir`); keyed so that a stale file is never served.

    With a `cache_dir`, tables are written there and read from there first, then from RUN/analysis/: a shipped
    run's own cache is used but never written to.
    """

    def __init__(self, run, n: int, seed: int, source: str | None, cache_dir: str | Path | None = None):
        self.run, self.n, self.seed, self.source = run, n, seed, source
        # What decides an analysis's rows besides the weights: the run's task and model config (training settings
        # do not, so extending a run keeps its cache).
        self.config_hash = hashlib.sha256(json.dumps(run.analysis_config(), sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(cache_dir) if cache_dir is not None else run.path / "analysis"
        self.roots = list(dict.fromkeys([self.root, run.path / "analysis"]))
        self.writable = True

    def path(self, step: int, analysis: str, root: Path | None = None) -> Path:
        batches = "" if self.run.kind in registry()[analysis].own_data else f".n{self.n}.seed{self.seed}"
        source = "" if self.source is None else f".{hashlib.sha256(self.source.encode()).hexdigest()[:8]}"
        return (root or self.root) / analysis / f"step_{step:09d}{batches}{source}.parquet"

    def step_key_without_weights(self) -> dict[str, str]:
        key = {"n": str(self.n), "seed": str(self.seed), "config": self.config_hash}
        return key if self.source is None else {**key, "source": self.source}

    def step_key(self, step: int) -> dict[str, str]:
        return {**self.step_key_without_weights(), "checkpoint": _file_hash(self.run.weights_file(step))}

    def key(self, analysis: str, step_key: dict[str, str], options: dict | None) -> dict[str, str]:
        record = registry()[analysis]
        key = {"analysis": analysis, "version": str(record.version), **step_key}
        if self.run.kind in record.own_data:
            del key["n"], key["seed"]
        if options is not None:
            key["options"] = json.dumps(options, sort_keys=True)
        return key

    def get(self, step: int, analysis: str, key: dict[str, str], ignore: tuple[str, ...] = ()) -> pd.DataFrame | None:
        """The cached table whose key matches, apart from the entries named in `ignore` (e.g. "options")."""
        key = {k: v for k, v in key.items() if k not in ignore}
        for root in self.roots:
            path = self.path(step, analysis, root)
            if not path.is_file():
                continue
            try:
                df = read_table(path)
            except CoopError:
                continue
            found = {k: v for k, v in df.attrs.get("cache_key", {}).items() if k not in ignore}
            if found == key:
                df["run"] = self.run.name  # the run may have been renamed or copied since
                return df
        return None

    def put(self, step: int, analysis: str, key: dict[str, str], df: pd.DataFrame) -> None:
        if not self.writable:
            return
        df = df.copy()
        df.attrs["cache_key"] = key
        try:
            write_table(df, self.path(step, analysis))
        except OSError as e:
            self.writable = False
            warnings.warn(f"cannot write the analysis cache under {self.root} ({e}); continuing without caching",
                          stacklevel=3)


def _options(names: list[str], options: dict[str, dict] | None) -> dict[str, dict | None]:
    """Each analysis's options, checked and completed with defaults (None: the analysis has no settings)."""
    options = dict(options or {})
    stray = sorted(set(options) - set(names))
    if stray:
        raise ConfigError(f"options given for {', '.join(stray)}, which is not among the analyses to run")
    return {name: registry()[name].parse(options.get(name)) for name in names}


def _compute(run, step: int, analysis: str, batches: dict, options: dict | None) -> pd.DataFrame:
    rows = registry()[analysis].compute(run.model(step), batches, options)
    fixed = {"run": run.name, "step": step, "seqs_seen": run.seqs_seen(step), "analysis": analysis}
    return table({**row, **fixed} for row in rows)


def _step_frames(run, step: int, options: dict[str, dict | None], n: int, seed: int, source: str | None,
                 recompute: bool, cache: "_Cache", batches: dict | None, cached_only: bool = False,
                 exact: bool = False) -> tuple[list[pd.DataFrame], dict | None]:
    """One checkpoint's tables (cached ones reused; with `cached_only` only those, whatever their options unless
    `exact`, and for a damaged checkpoint file those computed before the damage), and the evaluation batches if
    they had to be drawn."""
    readable = run.readable(step)
    step_key = cache.step_key(step) if readable else {**cache.step_key_without_weights(), "checkpoint": ""}
    ignore = () if not cached_only or exact else ("options",) if readable else ("options", "checkpoint")
    frames = []
    with shared_forwards():  # one checkpoint's clean forwards, shared by its analyses
        for analysis, opts in options.items():
            key = cache.key(analysis, step_key, opts)
            df = None if recompute else cache.get(step, analysis, key, ignore)
            if df is None and not cached_only:
                batches = batches or run.batches(source, n, seed)
                df = _compute(run, step, analysis, batches, opts)
                cache.put(step, analysis, key, df)
            if df is not None:
                frames.append(df)
    return frames, batches


_worker_runs: dict[tuple, object] = {}  # a worker process's opened runs, reused by its later checkpoints


def _worker_step(path: str, device: str, step: int, options: dict[str, dict | None], n: int, seed: int,
                 source: str | None, recompute: bool, cache_dir: str | None,
                 pattern: str | None) -> list[pd.DataFrame]:
    """`_step_frames` in a worker process (it opens the run itself, once), under the thread policy (threads.py)."""
    from ..runs import open_run
    from ..threads import apply

    apply()
    key = (path, device, pattern)
    if key not in _worker_runs:
        _worker_runs[key] = open_run(path, device=device, pattern=pattern)
    run = _worker_runs[key]
    with torch.no_grad():
        cache = _Cache(run, n, seed, run.source_key(source), cache_dir)
        return _step_frames(run, step, options, n, seed, source, recompute, cache, None)[0]


def _beside_a_pool(jobs: list[tuple], workers: int, here: Callable[[tuple], list[pd.DataFrame]],
                   done: Callable[[int, list[pd.DataFrame]], None]) -> None:
    """Compute `jobs` in `workers - 1` spawned processes and in this one, which has its imports loaded: a new
    process spends ~10 s importing torch, transformer-lens and transformers before its first checkpoint. The
    pool takes jobs from the front, two queued per process so that none waits for this one; this process takes
    them from the back, and at the end the queued ones no worker has started.
    """
    pending = deque(jobs)
    # spawn, not fork: a forked child of a process that has run OpenMP code can hang
    with ProcessPoolExecutor(workers - 1, mp_context=mp.get_context("spawn")) as pool:
        running: dict = {}  # future -> job

        def collect(block: bool) -> None:
            finished, _ = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in finished:
                done(running.pop(future)[2], future.result())
            while pending and len(running) < 2 * (workers - 1):
                job = pending.popleft()
                running[pool.submit(_worker_step, *job)] = job

        collect(block=False)
        while True:
            if pending:
                job = pending.pop()
            else:  # a queued job no worker has started yet, if any
                job = next((running.pop(future) for future in list(running) if future.cancel()), None)
                if job is None:
                    break
            done(job[2], here(job))
            collect(block=False)
        while running:
            collect(block=True)


def analyze(run, analyses: str | Sequence[str] | None = None, steps: Sequence[int] | None = None,
            n: int = 512, seed: int = 0, progress: bool = True, recompute: bool = False,
            workers: int | None = None, cache_dir: str | Path | None = None, options: dict[str, dict] | None = None,
            cached_only: bool = False, source: str | None = None, ray: str | None = None) -> pd.DataFrame:
    """Run `analyses` (default: every analysis for the run's kind of model but the opt-in ones) at `steps`
    (default: every checkpoint): one tidy frame.

    Cached (step, analysis) tables whose key matches are reused (module docstring); `recompute` ignores them.
    `workers` > 1 analyses that many checkpoints at once: this process and workers - 1 spawned ones, one thread
    each (threads.py): on a machine with that many free cores, the whole run takes about 1/workers of the time (default:
    `threads.default_workers()`, the cores this process may use, or COOPINTERP_WORKERS). Cached
    tables are read first; with fewer than two checkpoints per worker left to compute, they are computed here.
    `cache_dir` writes the cache there instead of RUN/analysis/ (which is still read): for runs not to be written.
    `options` maps an analysis to its settings, e.g. {"llc": {"draws": 100}}; `cached_only` computes nothing
    and returns the cached tables that match, whatever options they were computed with (the latest computed),
    and for a damaged checkpoint file whatever file they were computed from (the file before the damage).
    `source` names the evaluation data of a token model (sources.py; default: repeated random tokens); the
    built-in exemplar model always reads its task's evaluators. `ray` fans the checkpoints to compute out over a
    Ray cluster instead of local processes (cluster.py: "local", "auto" or an address), into the same cache.
    """
    names = _names(analyses, run.kind)
    steps = list(run.steps) if steps is None else list(dict.fromkeys(run.check_step(int(s)) for s in steps))
    if n < 2:
        raise ConfigError(f"n must be >= 2, got {n}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    per_analysis = _options(names, options)
    cache = _Cache(run, n, seed, run.source_key(source), cache_dir)
    bar = Progress(TextColumn("[bold]analyze {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), disable=not progress)
    per_step: dict[int, list[pd.DataFrame]] = {}
    with bar, torch.no_grad():
        task = bar.add_task(run.name, total=len(steps))
        todo = steps
        if (workers > 1 or ray) and len(steps) > 1 and not cached_only and not recompute:
            # what is cached is read here; only checkpoints with something to compute go to worker processes
            for step in steps:
                per_step[step], _ = _step_frames(run, step, per_analysis, n, seed, source, False, cache, None,
                                                 cached_only=True, exact=True)
            todo = [step for step in steps if len(per_step[step]) < len(per_analysis)]
            bar.advance(task, len(steps) - len(todo))
        jobs = [(str(run.path), run.device, step, per_analysis, n, seed, source, recompute,
                 None if cache_dir is None else str(cache_dir), run.pattern) for step in todo]
        if ray and todo and not cached_only:
            with ray_session(ray, workers) as session:
                remote = session.remote(num_cpus=1)(_worker_step)
                refs = {remote.remote(*job): job[2] for job in jobs}
                while refs:
                    (done,), _ = session.wait(list(refs), num_returns=1)
                    per_step[refs.pop(done)] = session.get(done)
                    bar.advance(task)
        elif workers == 1 or len(todo) < 2 * workers or cached_only:  # a worker costs seconds to start (imports)
            batches = None
            for step in todo:
                per_step[step], batches = _step_frames(run, step, per_analysis, n, seed, source, recompute, cache,
                                                       batches, cached_only)
                bar.advance(task)
        else:
            here_batches: dict = {}

            def here(job: tuple) -> list[pd.DataFrame]:
                frames, here_batches["b"] = _step_frames(run, job[2], per_analysis, n, seed, source, recompute,
                                                         cache, here_batches.get("b"))
                return frames

            def done(step: int, frames: list[pd.DataFrame]) -> None:
                per_step[step] = frames
                bar.advance(task)

            host_threads = torch.get_num_threads()  # this process computes too, under the policy while it does
            torch.set_num_threads(policy_threads())
            try:
                _beside_a_pool(jobs, workers, here, done)
            finally:
                torch.set_num_threads(host_threads)
    out = concat([df for step in steps for df in per_step[step]])
    out["run"] = run.name
    out.attrs = {}
    return out


__all__ = ["Analysis", "CleanRun", "analyze", "clean_run", "default_analyses", "eval_batches", "registry",
           "shared_forwards"]
