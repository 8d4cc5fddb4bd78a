"""The built-in tasks, one module each behind the `Task` protocol, and their registry.

A task brings its config section (a frozen dataclass whose `kind` field names the task: run.json's `task.kind`
picks it), its presets, its model, its evaluation batches, its training (the `Learner` that holds the model, its
optimiser and its loss) and the kinds of model the analyses read it as. Everything else in coopinterp reaches a task
only through this registry, so a new task is one new module plus its name in `KINDS`. A task's module is imported
the first time its kind is asked for: a command that reads an exemplar run never imports another task's model (the
linreg and parity models import transformer-lens, 1.4 s of `coopinterp info`).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from ..config import RunConfig, check


@runtime_checkable
class Task(Protocol):
    """What coopinterp needs of a task (see the module docstring)."""

    kind: str  # the section's tag in run.json
    section: type  # its config section, a frozen dataclass with `kind`, `seed`, `seq_len` and `validate()`
    evaluators: tuple[str, ...]  # the batches `batches` draws when no other source is named
    model_kinds: tuple[str, ...]  # the analyses' row functions its model takes, most specific first
    presets: dict[str, RunConfig]

    def build_model(self, config: RunConfig) -> Any:
        """A freshly initialised model of `config` (its `train.seed`), with `weights()` and `load_weights()`."""

    def batches(self, section: Any, source: str | None, n: int, seed: int, device: str) -> dict[str, Any]:
        """Evaluation batches by name: the task's own evaluators (source None) or a named source where it takes one."""

    def source_key(self, source: str | None) -> str | None:
        """The cache key of a data source (None: the task's own evaluators); a source it cannot read is an error."""

    def learner(self, config: RunConfig, seeds: list[int] | None, device: str) -> Any:
        """A training.Learner: the config's own seed (seeds None), or several seeds trained at once."""

    def training_batches(self, config: RunConfig, device: str) -> dict[str, Any]:
        """The fixed batches whose metrics are logged to metrics.parquet during training."""

    def progress(self, results: list[dict[str, dict[str, float]]]) -> str:
        """One short line of logged metrics (mean over seeds) for the training progress bar and its summary."""


KINDS = ("exemplar", "linreg", "markov", "parity")  # each task's kind, which is also the name of its module


class _Registry(Mapping):
    """kind -> Task, each task's module imported when its kind is first asked for."""

    def __getitem__(self, kind: str) -> Task:
        if kind not in KINDS:
            raise KeyError(kind)
        return importlib.import_module(f"{__name__}.{kind}").TASK

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


TASKS: Mapping[str, Task] = _Registry()


def presets() -> dict[str, RunConfig]:
    """Every task's presets by name (imports every task)."""
    return {name: config for task in TASKS.values() for name, config in task.presets.items()}


def __getattr__(name: str) -> Any:
    if name == "PRESETS":  # PEP 562: computed when asked for, so that importing the registry imports no task
        return presets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_of(config: RunConfig) -> Task:
    """The task of a run config (its task section's kind)."""
    return TASKS[config.task.kind]


def preset(name: str) -> RunConfig:
    known = presets()
    check(name in known, f"unknown preset {name!r}; choose from {', '.join(known)}")
    return known[name]


__all__ = ["KINDS", "PRESETS", "TASKS", "Task", "preset", "presets", "task_of"]
