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
cannot be written is analysed without a cache (one warning). The cache: cache.py; where the checkpoints are computed
(this process, spawned worker processes beside it, or Ray), one `Job` per checkpoint: executors.py.

An analysis over the whole trajectory (`Analysis.across`, e.g. `trajectory`) has two parts: per checkpoint, an array
(cached per step like a table, as .safetensors); then, here, once every step is in, `across` turns the arrays of
the steps analysed into rows. Those rows are cached per set of steps (their key holds every step's key), so the
same steps read them back and another `steps` recomputes them from the cached arrays.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..errors import ConfigError
from ..tables import concat, table
from ..task import eval_batches
from ..threads import default_workers
from .cache import Cache, Frame, StepArray, file_hash
from .executors import Here, Job, choose, step_frames
from .forwards import CleanRun, clean_run, shared_forwards
from .record import Analysis
from .registry import check_names, default_analyses, registry


def _options(names: list[str], options: dict[str, dict] | None) -> dict[str, dict | None]:
    """Each analysis's options, checked and completed with defaults (None: the analysis has no settings)."""
    options = dict(options or {})
    stray = sorted(set(options) - set(names))
    if stray:
        raise ConfigError(f"options given for {', '.join(stray)}, which is not among the analyses to run")
    return {name: registry()[name].parse(options.get(name)) for name in names}


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
    names = check_names(analyses, run.model_kinds)
    steps = list(run.steps) if steps is None else list(dict.fromkeys(run.check_step(int(s)) for s in steps))
    if n < 2:
        raise ConfigError(f"n must be >= 2, got {n}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    per_analysis = _options(names, options)
    cache = Cache(run, n, seed, run.source_key(source), cache_dir)
    jobs = [Job(path=str(run.path), device=run.device, pattern=run.pattern, step=step, options=per_analysis, n=n,
                seed=seed, source=source, recompute=recompute, cache_dir=None if cache_dir is None else str(cache_dir))
            for step in steps]
    bar = Progress(TextColumn("[bold]analyze {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), disable=not progress)
    per_step: dict[int, list[Frame]] = {}
    with bar, torch.no_grad():
        task = bar.add_task(run.name, total=len(steps))

        def done(step: int, frames: list[Frame]) -> None:
            per_step[step] = frames
            bar.advance(task)

        if cached_only:  # nothing is computed: whatever matches, read here
            for job in jobs:
                done(job.step, step_frames(run, job, cache, cached_only=True)[0])
            jobs = []
        elif (workers > 1 or ray) and len(steps) > 1 and not recompute:
            # what is cached is read here; only checkpoints with something to compute go to workers
            todo = []
            for job in jobs:
                frames = step_frames(run, job, cache, cached_only=True, exact=True)[0]
                if len(frames) < len(per_analysis):
                    todo.append(job)
                else:
                    done(job.step, frames)
            jobs = todo
        choose(jobs, workers, ray, Here(run, cache)).run(jobs, done)
    arrays = [f for step in steps for f in per_step[step] if isinstance(f, StepArray)]
    out = concat([df for step in steps for df in per_step[step] if isinstance(df, pd.DataFrame)]
                 + [_across(run, cache, name, arrays, per_analysis[name], recompute) for name in per_analysis
                    if registry()[name].across is not None])
    out["run"] = run.name
    out.attrs = {}
    return out


def _across(run, cache: Cache, name: str, arrays: list[StepArray], options: dict | None,
            recompute: bool) -> pd.DataFrame:
    """The run-level rows of an analysis over the trajectory from its arrays at the steps analysed, cached per set
    of steps: the key holds each step's key (its checkpoint's hash), so other steps or other weights recompute."""
    arrays = [a for a in arrays if a.analysis == name]
    key = {**cache.key(name, cache.step_key_without_weights(), None), "options": json.dumps(options, sort_keys=True)}
    key["steps"] = json.dumps({a.step: file_hash(run.weights_file(a.step)) if run.readable(a.step) else ""
                               for a in arrays})
    df = None if recompute else cache.get_run(name, key)
    if df is None:
        record = registry()[name]
        values = {a.step: a.values for a in arrays}
        rows = record.across(values) if record.options is None else record.across(values, record.options(**options))
        df = table({**row, "run": run.name, "seqs_seen": run.seqs_seen(row["step"]), "analysis": name}
                   for row in rows)
        cache.put_run(name, key, df)
    return df


__all__ = ["Analysis", "Cache", "CleanRun", "Job", "analyze", "clean_run", "default_analyses", "eval_batches",
           "registry", "shared_forwards"]
