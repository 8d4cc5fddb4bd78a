"""analyze(): the registered analyses at every checkpoint of a run, as one tidy table, cached per (step, analysis).

Every analysis module exposes `rows(model, batches) -> list[dict]` (keys among metric, evaluator, layer, head,
src_layer, src_head, component, value); `analyze` adds run, step, seqs_seen and analysis. A module with settings
defines an `Options` dataclass (with `parse(dict)` and `to_dict()`) and takes `rows(model, batches, options)`.
Opt-in analyses (OPT_IN: the SGLD-sampled `llc`, minutes per checkpoint, optional dependency) run only when
named. Modules are imported only when an analysis has to be computed, so a missing one only matters to those
who ask for it. Within one
checkpoint the analyses share one hooked forward per batch (`clean_run`: query logits and every attention
pattern), and all of analyze() runs under torch.no_grad().

Cache: RUN/analysis/{analysis}/step_{step:09d}.n{n}.seed{seed}.parquet, the table of one (step, analysis)
(step_{step:09d}.parquet for OWN_DATA analyses, which draw their own batches).
Its key rides in the parquet's pandas attrs (pandas >= 2.1 stores them): the analysis, n, seed, a hash of the
task and model config, of the checkpoint file, the analysis's options if it has any, and of the code that
computes the analysis (`code_version`: the analysis module and every coopinterp module it imports, transitively,
as syntax trees without docstrings, so an edit to the code invalidates the cache while an edit to a comment or
docstring does not). A file whose key differs, or that cannot be read, is recomputed and replaced;
`recompute=True` ignores every cached file. A run directory that cannot be written is analysed without a cache
(one warning).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import json
import multiprocessing as mp
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..checkpoints import Run, checkpoint_path
from ..errors import ConfigError, CoopError
from ..tables import concat, read_table, table, write_table
from ..task import Batch
from .forwards import CleanRun, clean_run, eval_batches, shared_forwards

ANALYSES: dict[str, str] = {
    "behavior": "coopinterp.analysis.behavior",
    "attention": "coopinterp.analysis.attention",
    "composition": "coopinterp.analysis.composition",
    "ablation": "coopinterp.analysis.ablation",
    "path_patching": "coopinterp.analysis.patching",
    "clamping": "coopinterp.analysis.clamping",
    "paper_checks": "coopinterp.analysis.paper_checks",
    "llc": "coopinterp.analysis.llc",
}
OPT_IN = ("llc",)
OWN_DATA = ("llc",)  # analyses that draw their own batches: their cache ignores the evaluation batches' n and seed
DEFAULT_ANALYSES = tuple(name for name in ANALYSES if name not in OPT_IN)


def _names(analyses: str | Sequence[str] | None) -> list[str]:
    if analyses is None:
        return list(DEFAULT_ANALYSES)
    names = [analyses] if isinstance(analyses, str) else list(analyses)
    unknown = [a for a in names if a not in ANALYSES]
    if unknown or not names:
        raise ConfigError(f"unknown analysis {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(ANALYSES)}")
    return list(dict.fromkeys(names))


def _module(name: str):
    try:
        return importlib.import_module(ANALYSES[name])
    except ModuleNotFoundError as e:
        if e.name != ANALYSES[name]:
            raise
        raise CoopError(f"analysis {name!r} is not available: module {ANALYSES[name]} is missing") from None


_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _source(module: str) -> Path | None:
    """The file of a coopinterp module (`coopinterp.a.b` -> a/b.py or a/b/__init__.py), None if there is none."""
    parts = module.split(".")
    if parts[0] != "coopinterp":
        return None
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.Module, package: str) -> set[str]:
    """The coopinterp modules a module of `package` imports (`from .x import y` included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module or ""
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if _source(name)}


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def code_version(module: str) -> str:
    """A hash of the code behind `module`: its syntax tree and those of the coopinterp modules it imports,
    transitively, docstrings left out (comments never reach the tree)."""
    seen, todo, digest = set(), [module], hashlib.sha256()
    while todo:
        name = todo.pop()
        path = _source(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo += sorted(_imports(tree, package))
        digest.update(name.encode() + ast.dump(_without_docstrings(tree)).encode())
    return digest.hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class _Cache:
    """Per-(step, analysis) tables under RUN/analysis/ (or `cache_dir`); keyed so that a stale file is never served.

    With a `cache_dir`, tables are written there and read from there first, then from RUN/analysis/: a shipped
    run's own cache is used but never written to.
    """

    def __init__(self, run: Run, n: int, seed: int, cache_dir: str | Path | None = None):
        self.run, self.n, self.seed = run, n, seed
        # The task (which sequences are drawn) and the model (its shape) decide an analysis; the training settings
        # do not, so extending a run (train.steps) keeps its cache.
        config = {k: v for k, v in run.config.to_dict().items() if k in ("task", "model")}
        self.config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(cache_dir) if cache_dir is not None else run.path / "analysis"
        self.roots = list(dict.fromkeys([self.root, run.path / "analysis"]))
        self.writable = True

    def path(self, step: int, analysis: str, root: Path | None = None) -> Path:
        batches = "" if analysis in OWN_DATA else f".n{self.n}.seed{self.seed}"
        return (root or self.root) / analysis / f"step_{step:09d}{batches}.parquet"

    def step_key(self, step: int) -> dict[str, str]:
        return {"n": str(self.n), "seed": str(self.seed), "config": self.config_hash,
                "checkpoint": _file_hash(checkpoint_path(self.run.path, step))}

    @staticmethod
    def key(analysis: str, step_key: dict[str, str], options: dict | None) -> dict[str, str]:
        key = {"analysis": analysis, "code": code_version(ANALYSES[analysis]), **step_key}
        if analysis in OWN_DATA:
            del key["n"], key["seed"]
        if options is not None:
            key["options"] = json.dumps(options, sort_keys=True)
        return key

    def get(self, step: int, analysis: str, key: dict[str, str], any_options: bool = False) -> pd.DataFrame | None:
        """The cached table whose key matches (with `any_options`, whatever options it was computed with)."""
        if any_options:
            key = {k: v for k, v in key.items() if k != "options"}
        for root in self.roots:
            path = self.path(step, analysis, root)
            if not path.is_file():
                continue
            try:
                df = read_table(path)
            except CoopError:
                continue
            found = df.attrs.get("cache_key", {})
            if any_options:
                found = {k: v for k, v in found.items() if k != "options"}
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
    out = {}
    for name in names:
        parse = getattr(_module(name), "Options", None)
        if parse is None and name in options:
            raise ConfigError(f"analysis {name!r} takes no options")
        out[name] = None if parse is None else parse.parse(options.get(name)).to_dict()
    return out


def _compute(run: Run, step: int, analysis: str, batches: dict[str, Batch], options: dict | None) -> pd.DataFrame:
    module = _module(analysis)
    model = run.model(step)
    rows = module.rows(model, batches) if options is None else module.rows(model, batches, module.Options(**options))
    fixed = {"run": run.name, "step": step, "seqs_seen": run.seqs_seen(step), "analysis": analysis}
    return table({**row, **fixed} for row in rows)


def _step_frames(run: Run, step: int, options: dict[str, dict | None], n: int, seed: int, recompute: bool,
                 cache: "_Cache", batches: dict[str, Batch] | None,
                 cached_only: bool = False) -> tuple[list[pd.DataFrame], dict | None]:
    """One checkpoint's tables (cached ones reused; with `cached_only` only those), and the evaluation batches
    if they had to be drawn."""
    step_key = cache.step_key(step)
    frames = []
    with shared_forwards():  # one checkpoint's clean forwards, shared by its analyses
        for analysis, opts in options.items():
            key = cache.key(analysis, step_key, opts)
            df = None if recompute else cache.get(step, analysis, key, any_options=cached_only)
            if df is None and not cached_only:
                batches = batches or eval_batches(run.config.task, n, seed, run.device)
                df = _compute(run, step, analysis, batches, opts)
                cache.put(step, analysis, key, df)
            if df is not None:
                frames.append(df)
    return frames, batches


def _worker_step(path: str, device: str, step: int, options: dict[str, dict | None], n: int, seed: int,
                 recompute: bool, cache_dir: str | None) -> list[pd.DataFrame]:
    """`_step_frames` in a worker process (it opens the run itself)."""
    from ..checkpoints import load_run

    run = load_run(path, device=device)
    with torch.no_grad():
        return _step_frames(run, step, options, n, seed, recompute, _Cache(run, n, seed, cache_dir), None)[0]


def analyze(run: Run, analyses: str | Sequence[str] | None = None, steps: Sequence[int] | None = None,
            n: int = 512, seed: int = 0, progress: bool = True, recompute: bool = False,
            workers: int = 1, cache_dir: str | Path | None = None, options: dict[str, dict] | None = None,
            cached_only: bool = False) -> pd.DataFrame:
    """Run `analyses` (default: DEFAULT_ANALYSES, every one but the opt-in `llc`) at `steps` (default: every
    checkpoint): one tidy frame.

    Cached (step, analysis) tables whose key matches are reused (module docstring); `recompute` ignores them.
    `workers` > 1 analyses that many checkpoints at once, each in its own process (one thread each, see
    threads.py): on a machine with that many free cores, the whole run takes about 1/workers of the time.
    `cache_dir` writes the cache there instead of RUN/analysis/ (which is still read): for runs not to be written.
    `options` maps an analysis to its settings, e.g. {"llc": {"draws": 100}}; `cached_only` computes nothing
    and returns the cached tables that match, whatever options they were computed with (the latest computed).
    """
    names = _names(analyses)
    steps = list(run.steps) if steps is None else list(dict.fromkeys(run.check_step(int(s)) for s in steps))
    if n < 2:
        raise ConfigError(f"n must be >= 2, got {n}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    per_analysis = _options(names, options)
    cache = _Cache(run, n, seed, cache_dir)
    bar = Progress(TextColumn("[bold]analyze {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), disable=not progress)
    per_step: dict[int, list[pd.DataFrame]] = {}
    with bar, torch.no_grad():
        task = bar.add_task(run.name, total=len(steps))
        if workers == 1 or len(steps) == 1 or cached_only:
            batches = None
            for step in steps:
                per_step[step], batches = _step_frames(run, step, per_analysis, n, seed, recompute, cache, batches,
                                                       cached_only)
                bar.advance(task)
        else:
            # spawn, not fork: a forked child of a process that has run OpenMP code can hang
            with ProcessPoolExecutor(min(workers, len(steps)), mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_worker_step, str(run.path), run.device, step, per_analysis, n, seed, recompute,
                                       None if cache_dir is None else str(cache_dir)): step
                           for step in steps}
                for future in as_completed(futures):
                    per_step[futures[future]] = future.result()
                    bar.advance(task)
    out = concat([df for step in steps for df in per_step[step]])
    out["run"] = run.name
    out.attrs = {}
    return out


__all__ = ["ANALYSES", "DEFAULT_ANALYSES", "OPT_IN", "OWN_DATA", "CleanRun", "analyze", "clean_run", "code_version",
           "eval_batches", "shared_forwards"]
