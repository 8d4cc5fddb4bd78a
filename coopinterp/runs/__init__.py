"""Training runs on disk, whatever wrote them, behind one `Run` protocol; `open_run` is the only place that chooses.

- a coopinterp run directory (run.json, checkpoints/step_*.safetensors) of any built-in task (native.py);
- a directory of Hugging Face checkpoints, one `save_pretrained` folder per step (`step1000/`, `checkpoint-1000/`,
  or folders matching a `pattern`): any architecture transformer-lens's bridge boots (huggingface.py);
- `hf:ORG/NAME`: the revisions of a model that the local Hugging Face cache holds (`refs/step1000`), offline
  (hub.py); `revisions` chooses among them.

Every consumer (analyze, plots, the app, the interventions) reads a run only through the protocol, as transformer-lens's
patching and head detector read any model through its model protocol. Runs never import analyses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from ..errors import CheckpointError
from .huggingface import HuggingFaceRun, load_huggingface_run
from .hub import is_hub_spec, load_hub_run
from .identical import describe, identical_steps
from .native import NativeRun, load_run


@runtime_checkable
class Run(Protocol):
    """A training run: checkpoints by step, the model at each, the data its analyses read."""

    path: Path
    steps: list[int]  # sorted steps with a checkpoint
    config: Any  # a RunConfig (native runs) or the first checkpoint's config.json (Hugging Face runs)
    device: str
    pattern: str | None  # the regex its checkpoint folders were found with, an hf: run's revisions (None: fixed names)
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


def open_run(path: str | Path, device: str = "cpu", pattern: str | None = None, revisions: str | None = None) -> Run:
    """The run at `path` (a directory, or `hf:ORG/NAME` in the local Hugging Face cache, whose `revisions` may
    also come as `pattern`, as the executors reopen runs); a missing, empty or damaged run is a one-line
    CheckpointError."""
    if is_hub_spec(path):
        if pattern is not None and revisions is not None and pattern != revisions:
            raise CheckpointError("--pattern names checkpoint folders; an hf: run takes --revisions")
        return load_hub_run(str(path), device=device, revisions=revisions if revisions is not None else pattern)
    if revisions is not None:
        raise CheckpointError(f"--revisions chooses revisions of an hf:ORG/NAME run, not of the directory {path}")
    run_dir = Path(path)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"not a directory: {run_dir}")
    if (run_dir / "run.json").exists() and pattern is None:
        return load_run(run_dir, device=device)
    return load_huggingface_run(run_dir, device=device, pattern=pattern)


def identical_checkpoints(run: Run, steps: list[int] | None = None) -> list[str]:
    """One warning line per group of the run's steps (or of `steps`) whose weight files hold identical bytes (no
    tensor is loaded)."""
    files = {}
    for step in run.steps if steps is None else [s for s in steps if s in run.steps]:
        try:
            files[step] = run.weights_file(step)
        except CheckpointError:
            continue  # a missing file is another command's error
    return describe(identical_steps(files))


__all__ = ["HuggingFaceRun", "NativeRun", "Run", "identical_checkpoints", "load_run", "open_run"]
