"""Sweeps: a grid of run configs, trained in a local process pool or on Ray; finished runs are skipped.

A grid file is JSON: `{"base": "tiny" | {RunConfig dict}, "grid": {"task.eps": [0.3, 0.5], ...},
"set": {"train.forget_every": 100}}`. `set` changes the base, `grid` is expanded as a product; each run is
named from its grid values (`eps=0.3_seed=0`) and trains into OUT/<name>/ in the single-run format.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .checkpoints import ResumeState, read_run_config
from .cluster import ray_session
from .config import RunConfig, read_json
from .errors import CheckpointError, ConfigError, CoopError
from .runs import load_run
from .spawning import spawn_context
from .tasks import preset

SPEC_KEYS = ("base", "grid", "set")


@dataclass
class Result:
    """What became of one run of a sweep."""

    name: str
    status: str  # "done", "skipped" (finished before) or "failed"
    seconds: float = 0.0
    icl: float | None = None  # final in-context accuracy of the `icl` evaluator
    ciwl: float | None = None
    error: str = ""


def load_spec(path: str | Path) -> dict[str, Any]:
    return read_json(path, "grid")


def _split(key: str) -> tuple[str, str]:
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in ("task", "model", "train"):
        raise ConfigError(f"grid key {key!r} must be 'task.<field>', 'model.<field>' or 'train.<field>'")
    return parts[0], parts[1]


def _apply(config: RunConfig, values: dict[str, Any], name: str | None = None) -> RunConfig:
    d = config.to_dict()
    for key, value in values.items():
        section, field = _split(key)
        d[section][field] = value
    if name is not None:
        d["name"] = name
    return RunConfig.from_dict(d)


def _label(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]", "-", text)


def expand(spec: dict[str, Any]) -> list[tuple[str, RunConfig]]:
    """(run name, config) for every point of the grid, in the grid's key order."""
    if not isinstance(spec, dict):
        raise ConfigError("a grid file must hold a JSON object with 'base', 'grid' and optionally 'set'")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid file key(s): {', '.join(sorted(unknown))}; expected {', '.join(SPEC_KEYS)}")
    if "base" not in spec:
        raise ConfigError("a grid file needs a 'base': a preset name or a RunConfig object")
    base = spec["base"]
    base = preset(base) if isinstance(base, str) else RunConfig.from_dict(base)
    fixed, grid = spec.get("set", {}), spec.get("grid", {})
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise ConfigError("'set' and 'grid' must be JSON objects of dotted keys, e.g. {\"task.eps\": [0.3, 0.5]}")
    base = _apply(base, fixed)
    for key, values in grid.items():
        _split(key)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid[{key!r}] must be a non-empty list of values")
    fields = [_split(k)[1] for k in grid]
    labels = [f if fields.count(f) == 1 else k for k, f in zip(grid, fields)]  # task.seed vs train.seed
    runs = []
    for combo in itertools.product(*grid.values()):
        name = "_".join(f"{label}={_label(v)}" for label, v in zip(labels, combo)) or base.name
        runs.append((name, _apply(base, dict(zip(grid, combo)), name=f"{base.name}_{name}" if grid else None)))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise ConfigError("the grid repeats a value: two runs would share a name")
    return runs


def is_finished(run_dir: Path, config: RunConfig) -> bool:
    """True when `run_dir` holds this exact config trained to its last step."""
    try:
        return read_run_config(run_dir).to_dict() == config.to_dict() and ResumeState(run_dir).step() == config.train.steps
    except CheckpointError:
        return False


def final_accuracies(run) -> tuple[float | None, float | None]:
    """(icl, ciwl) accuracy at the last logged step of a Run."""
    m = run.metrics
    m = m[(m.analysis == "behavior") & (m.metric == "acc") & (m.step == m.step.max())]
    acc = dict(zip(m.evaluator, m.value))
    return acc.get("icl"), acc.get("ciwl")


def run_one(config: dict[str, Any], run_dir: str, device: str | None = None, threads: int = 1) -> Result:
    """Train one run (a pool or Ray worker's entry point); any failure becomes a `failed` Result."""
    import torch

    from .training import train

    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(config)
    t0 = time.perf_counter()
    try:
        run = train(cfg, run_dir, progress=False, device=device)
    except CoopError as e:
        return Result(Path(run_dir).name, "failed", time.perf_counter() - t0, error=str(e))
    except Exception as e:  # a bug in one config must not stop the sweep: report it instead
        first = (str(e).splitlines() or [""])[0]
        return Result(Path(run_dir).name, "failed", time.perf_counter() - t0, error=f"{type(e).__name__}: {first}")
    return Result(Path(run_dir).name, "done", time.perf_counter() - t0, *final_accuracies(run))


def _local(jobs: list[tuple[str, RunConfig, Path]], workers: int, device: str | None,
           report: Callable[[Result], None]) -> None:
    if workers <= 1:
        for name, cfg, path in jobs:
            report(run_one(cfg.to_dict(), str(path), device))
        return
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        pending = {pool.submit(run_one, cfg.to_dict(), str(path), device): name for name, cfg, path in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                name = pending.pop(future)
                try:
                    report(future.result())
                except Exception as e:  # the worker process died (e.g. killed for memory)
                    report(Result(name, "failed", error=f"worker died: {type(e).__name__}: {e}"))


def _ray(jobs: list[tuple[str, RunConfig, Path]], address: str, workers: int, device: str | None,
         report: Callable[[Result], None]) -> None:
    with ray_session(address, workers) as ray:
        remote = ray.remote(num_cpus=1)(run_one)
        pending = {remote.remote(cfg.to_dict(), str(path.resolve()), device): name for name, cfg, path in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                report(ray.get(done[0]))
            except ray.exceptions.RayError as e:
                report(Result(name, "failed", error=f"ray: {(str(e).splitlines() or [''])[0]}"))


def run_sweep(spec: dict[str, Any] | str | Path, out_dir: str | Path, workers: int = 1, ray_address: str | None = None,
              device: str | None = None, on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Train every run of the grid not finished yet; returns one Result per run, in grid order.

    `ray_address`: "local" starts a Ray instance on this machine, anything else is passed to `ray.init`
    (e.g. "auto"); Ray workers write to OUT, so OUT must be on a filesystem every node sees.
    """
    runs = expand(spec if isinstance(spec, dict) else load_spec(spec))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    results: dict[str, Result] = {}

    def report(result: Result) -> None:
        results[result.name] = result
        if on_result:
            on_result(result)

    jobs = []
    for name, cfg in runs:
        if is_finished(out / name, cfg):
            report(Result(name, "skipped", 0.0, *final_accuracies(load_run(out / name))))
        else:
            jobs.append((name, cfg, out / name))
    out.mkdir(parents=True, exist_ok=True)
    if jobs and ray_address:
        _ray(jobs, ray_address, workers, device, report)
    elif jobs:
        _local(jobs, workers, device, report)
    return [results[name] for name, _ in runs]
