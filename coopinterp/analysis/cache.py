"""The analysis cache: one table per (step, analysis) under RUN/analysis/ (or a `cache_dir`), keyed so that a stale
file is never served (the layout and the key: the package docstring, coopinterp/analysis/__init__.py).

An analysis over the whole trajectory (`Analysis.across`) keeps one array per step instead (a `StepArray`, in a
.safetensors file beside where its table would be, its key in the file's metadata), and one table of its run-level
rows per set of steps it saw (`run.{digest}.parquet`: the digest hashes the key, which holds every step's key)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import CoopError
from ..tables import atomic_path, read_table, write_table
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


@dataclass(frozen=True)
class StepArray:
    """One checkpoint's part of an analysis over the whole trajectory: what its row function returned there."""

    analysis: str
    step: int
    values: Float[Tensor, "n k"]


Frame = pd.DataFrame | StepArray  # what one analysis gives at one checkpoint


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
        suffix = "safetensors" if registry()[analysis].across else "parquet"
        return (root or self.root) / analysis / f"step_{step:09d}{batches}{source}.{suffix}"

    def run_path(self, analysis: str, key: dict, root: Path | None = None) -> Path:
        """Where the run-level rows of an analysis over the trajectory go, for the steps (and step keys) in `key`."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return (root or self.root) / analysis / f"run.{digest}.parquet"

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
        per_step = getattr(record.options, "per_step", None) if record.across else None
        if options is not None and per_step is not None:  # another smoothing width reuses every step's array
            options = {name: options[name] for name in per_step}
        if options is not None:
            key["options"] = json.dumps(options, sort_keys=True)
        return key

    def get(self, step: int, analysis: str, key: dict[str, str],
            ignore: tuple[str, ...] = ()) -> pd.DataFrame | StepArray | None:
        """The cached table (or step array) whose key matches, apart from the entries named in `ignore` (e.g.
        "options")."""
        key = {k: v for k, v in key.items() if k not in ignore}
        for root in self.roots:
            path = self.path(step, analysis, root)
            found = _read_array(path, analysis, step) if path.suffix == ".safetensors" else self._read(path)
            if found is not None and {k: v for k, v in found[1].items() if k not in ignore} == key:
                return found[0]
        return None

    def get_run(self, analysis: str, key: dict) -> pd.DataFrame | None:
        """The cached run-level rows of an analysis over the trajectory, for exactly the steps in `key`."""
        for root in self.roots:
            found = self._read(self.run_path(analysis, key, root))
            if found is not None and found[1] == key:
                return found[0]
        return None

    def _read(self, path: Path) -> tuple[pd.DataFrame, dict] | None:
        if not path.is_file():
            return None
        try:
            df = read_table(path)
        except CoopError:
            return None
        df["run"] = self.run.name  # the run may have been renamed or copied since
        return df, df.attrs.get("cache_key", {})

    def put(self, step: int, analysis: str, key: dict[str, str], found: pd.DataFrame | StepArray) -> None:
        self._write(self.path(step, analysis), key, found)

    def put_run(self, analysis: str, key: dict, df: pd.DataFrame) -> None:
        self._write(self.run_path(analysis, key), key, df)

    def _write(self, path: Path, key: dict, found: pd.DataFrame | StepArray) -> None:
        if not self.writable:
            return
        try:
            if isinstance(found, StepArray):
                with atomic_path(path) as tmp:
                    save_file({"values": found.values.contiguous()}, str(tmp),
                              metadata={"cache_key": json.dumps(key, sort_keys=True)})
            else:
                df = found.copy()
                df.attrs["cache_key"] = key
                write_table(df, path)
        except OSError as e:
            self.writable = False
            warnings.warn(f"cannot write the analysis cache under {self.root} ({e}); continuing without caching",
                          stacklevel=_caller_outside_this_package())


def _read_array(path: Path, analysis: str, step: int) -> tuple[StepArray, dict] | None:
    """A cached step array and its key (None: no file, or one that cannot be read)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            key = json.loads((f.metadata() or {}).get("cache_key", "{}"))
            return StepArray(analysis, step, f.get_tensor("values")), key
    except Exception:  # safetensors raises several types for a truncated or foreign file
        return None
