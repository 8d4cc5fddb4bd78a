"""The analysis cache: one table per (step, analysis) under RUN/analysis/ (or a `cache_dir`), keyed so that a stale
file is never served (the layout and the key: the package docstring, coopinterp/analysis/__init__.py)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import pandas as pd

from ..errors import CoopError
from ..tables import read_table, write_table
from .record import Analysis
from .registry import registry


def _draws_own_data(run, record: Analysis) -> bool:
    """Whether the analysis draws its own batches on this run's kind of model (then the evaluation batches' n and
    seed are neither in its file name nor in its key). The one place the cache reads the run's kind."""
    return record.draws_own_data(run.model_kinds)


def _caller_outside_this_package() -> int:
    """The `stacklevel` of a warning from the caller of this function that names the first frame outside
    coopinterp/analysis/ (the user's analyze() call, whichever executor ran the checkpoint)."""
    here, level, frame = os.path.join(os.path.dirname(__file__), ""), 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(here):
        level, frame = level + 1, frame.f_back
    return level


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Cache:
    """Per-(step, analysis) tables under RUN/analysis/ (or `cache_dir`); keyed so that a stale file is never served.

    With a `cache_dir`, tables are written there and read from there first, then from RUN/analysis/: a shipped
    run's own cache is used but never written to. `source` is the run's key of the data source
    (`run.source_key(source)`), None for the default data.
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
        batches = "" if _draws_own_data(self.run, registry()[analysis]) else f".n{self.n}.seed{self.seed}"
        source = "" if self.source is None else f".{hashlib.sha256(self.source.encode()).hexdigest()[:8]}"
        return (root or self.root) / analysis / f"step_{step:09d}{batches}{source}.parquet"

    def step_key_without_weights(self) -> dict[str, str]:
        key = {"n": str(self.n), "seed": str(self.seed), "config": self.config_hash}
        return key if self.source is None else {**key, "source": self.source}

    def step_key(self, step: int) -> dict[str, str]:
        return {**self.step_key_without_weights(), "checkpoint": file_hash(self.run.weights_file(step))}

    def key(self, analysis: str, step_key: dict[str, str], options: dict | None) -> dict[str, str]:
        record = registry()[analysis]
        key = {"analysis": analysis, "version": str(record.version), **step_key}
        if _draws_own_data(self.run, record):
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
                          stacklevel=_caller_outside_this_package())
