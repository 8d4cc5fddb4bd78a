"""A coopinterp run directory of any built-in task: run.json, checkpoints/step_*.safetensors, metrics.parquet.

What depends on the task (its model, its evaluation batches, the data sources it reads) comes from the task's
module through the registry (coopinterp.tasks); this class only reads the directory.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..checkpoints import check_headers, checkpoint_path, list_checkpoints, load_tensors, read_run_config
from ..config import DEFAULT_KIND, RunConfig
from ..errors import CheckpointError
from ..tables import read_table, table
from ..tasks import Task, task_of


@dataclass
class NativeRun:
    """A training run on disk: its config, checkpoint steps, logged metrics, and models per step (runs.Run)."""

    path: Path
    config: RunConfig
    steps: list[int]
    device: str = "cpu"
    cache_size: int = 4

    pattern = None  # checkpoint file names are fixed

    def __post_init__(self) -> None:
        self._models: OrderedDict[int, Any] = OrderedDict()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> Task:
        return task_of(self.config)

    @property
    def model_kinds(self) -> tuple[str, ...]:
        return self.task.model_kinds

    def check_step(self, step: int) -> int:
        if step not in self.steps:
            shown = ", ".join(map(str, self.steps[:40])) + (" ..." if len(self.steps) > 40 else "")
            raise CheckpointError(f"run {self.path} has no checkpoint at step {step}; available: {shown or 'none'}")
        return step

    def seqs_seen(self, step: int) -> int:
        return step * self.config.train.batch_size

    def weights_file(self, step: int) -> Path:
        return checkpoint_path(self.path, step)

    def analysis_config(self) -> dict:
        """What decides an analysis besides the weights: the task (which sequences) and the model (its shape).

        Only fields that differ from their defaults count, so that adding a field whose default keeps today's
        behaviour leaves every cached table valid (hence: a default, once released, never changes). The task's
        kind counts for every task but the exemplar one: run.json formats 1-2 had one task section whose default
        kind was "exemplar", and the cache keys written then stay valid.
        """
        task = {k: v for k, v in dataclasses.asdict(self.config.task).items()
                if v != getattr(type(self.config.task)(), k) or (k == "kind" and v != DEFAULT_KIND)}
        model = {k: v for k, v in dataclasses.asdict(self.config.model).items()
                 if v != getattr(type(self.config.model)(), k)}
        return {"task": task, "model": model}

    def damage(self, step: int) -> str | None:
        """The one-line error of a checkpoint whose safetensors header does not read (a truncated file), else None."""
        try:
            check_headers(self.path, [step])
        except CheckpointError as e:
            return str(e)
        return None

    def readable(self, step: int) -> bool:
        return self.damage(step) is None

    def source_key(self, source: str | None) -> str | None:
        return self.task.source_key(source)

    def batches(self, source: str | None, n: int, seed: int) -> dict:
        return self.task.batches(self.config.task, source, n, seed, self.device)

    def model(self, step: int):
        """The model at a checkpointed step, float32, eval mode (a few are kept cached)."""
        self.check_step(step)
        if step not in self._models:
            path = checkpoint_path(self.path, step)
            weights, _ = load_tensors(path)
            model = self.task.build_model(self.config)
            model.load_weights({k: v.float() for k, v in weights.items()}, source=str(path))
            self._models[step] = model.to(self.device).eval().requires_grad_(False)
            while len(self._models) > self.cache_size:
                self._models.popitem(last=False)
        self._models.move_to_end(step)
        return self._models[step]

    def verify(self) -> None:
        """Load every checkpoint into the model (names, shapes) and check its weights are finite."""
        for step in self.steps:
            bad = [k for k, v in self.model(step).weights().items() if not torch.isfinite(v).all()]
            if bad:
                raise CheckpointError(f"checkpoint {checkpoint_path(self.path, step)} holds non-finite values in "
                                      f"{', '.join(bad[:3])}")

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Evaluator metrics logged during training (tidy schema; empty without a metrics.parquet)."""
        path = self.path / "metrics.parquet"
        return read_table(path) if path.is_file() else table([])

    def info(self) -> dict[str, Any]:
        """What `coopinterp info` and the report show of the run: its task and its config."""
        return {"task": self.config.task.kind, "config": self.config.to_dict()}


def load_run(path: str | Path, device: str = "cpu") -> NativeRun:
    """Open a run directory; a missing or corrupt run is a one-line CheckpointError."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"not a directory: {run_dir}")
    config = read_run_config(run_dir)
    steps = list_checkpoints(run_dir)
    if not steps:
        raise CheckpointError(f"run {run_dir} has no checkpoints under checkpoints/")
    return NativeRun(run_dir, config, steps, device=device)
