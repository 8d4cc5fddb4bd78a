"""Training runs on disk, whatever wrote them, behind one `Run` protocol; `open_run` is the only place that chooses.

- a coopinterp run directory (run.json, checkpoints/step_*.safetensors) of any built-in task (native.py);
- a directory of Hugging Face checkpoints, one `save_pretrained` folder per step (`step1000/`, `checkpoint-1000/`,
  or folders matching a `pattern`): any architecture transformer-lens's bridge boots (huggingface.py).

Every consumer (analyze, plots, the app, the interventions) reads a run only through the protocol, as transformer-lens's
patching and head detector read any model through its model protocol. Runs never import analyses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from ..errors import CheckpointError
from .huggingface import HuggingFaceRun, load_huggingface_run
from .native import NativeRun, load_run


@runtime_checkable
class Run(Protocol):
    """A training run: checkpoints by step, the model at each, the data its analyses read."""

    path: Path
    steps: list[int]  # sorted steps with a checkpoint
    config: Any  # a RunConfig (native runs) or the first checkpoint's config.json (Hugging Face runs)
    device: str
    pattern: str | None  # the regex its checkpoint folders were found with (None: fixed names)
    cache_size: int  # models kept loaded

    @property
    def name(self) -> str: ...
    @property
    def model_kinds(self) -> tuple[str, ...]:
        """The analyses' row functions its models take, most specific first (analysis/record.py)."""
    @property
    def metrics(self) -> pd.DataFrame:
        """Metrics logged during training (tidy schema); empty where none were logged."""

    def model(self, step: int) -> Any:
        """The model at a checkpointed step, float32, eval mode, no gradients."""
    def batches(self, source: str | None, n: int, seed: int) -> dict[str, Any]:
        """Evaluation batches by name, from the run's own evaluators or a named token source (sources.py)."""
    def source_key(self, source: str | None) -> str | None:
        """The cache key of a data source; a source the run cannot read is a one-line ConfigError."""
    def check_step(self, step: int) -> int: ...
    def seqs_seen(self, step: int) -> int: ...
    def weights_file(self, step: int) -> Path: ...
    def analysis_config(self) -> dict:
        """What decides an analysis besides the weights (hashed into the cache key)."""
    def damage(self, step: int) -> str | None:
        """The one-line error of a damaged checkpoint file, else None (no tensor is loaded)."""
    def readable(self, step: int) -> bool: ...
    def info(self) -> dict[str, Any]:
        """`task` (one line) and `config` (a dict), as `coopinterp info` and the report show them."""


def open_run(path: str | Path, device: str = "cpu", pattern: str | None = None) -> Run:
    """The run at `path`; a missing, empty or damaged run is a one-line CheckpointError."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"not a directory: {run_dir}")
    if (run_dir / "run.json").exists() and pattern is None:
        return load_run(run_dir, device=device)
    return load_huggingface_run(run_dir, device=device, pattern=pattern)


__all__ = ["HuggingFaceRun", "NativeRun", "Run", "load_run", "open_run"]
