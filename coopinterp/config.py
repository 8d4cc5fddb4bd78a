"""Run configuration: the model and training sections, the run config around a task's section, its JSON round-trip.

The task section is a tagged union: each built-in task (coopinterp.tasks) declares its own frozen dataclass with a
`kind` field naming the task, and run.json's `task.kind` picks the class. This module knows no task: it asks the task
registry for the section class of a kind (`section_class`), which imports it by name, so that this low floor never
imports the tasks that build on it.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def check(cond: bool, message: str) -> None:
    """A ConfigError with `message` unless `cond`."""
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The paper's 2-layer attention-only transformer (docs/reference.md, "The model")."""

    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    d_head: int = 8
    init: str = "paper"  # "paper": lecun-normal linears, positions ~U(+-1/sqrt(32)); "torch": torch defaults

    def validate(self) -> None:
        check(self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}")
        check(self.n_heads >= 1 and self.d_head >= 1, "n_heads and d_head must be >= 1")
        check(self.n_heads * self.d_head == self.d_model,
               f"n_heads * d_head must equal d_model, got {self.n_heads}*{self.d_head} != {self.d_model}")
        check(self.init in ("paper", "torch"), f"init must be 'paper' or 'torch', got {self.init!r}")


FORGETTING = ("none", "active", "temporary")
FORGET_TARGETS = ("exemplar", "label")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpoint schedule, logging and interventions."""

    steps: int = 10_000
    batch_size: int = 32
    lr: float = 1e-5
    seed: int = 0  # seeds the weights and the training stream
    n_checkpoints: int = 32  # checkpoints on a log-then-linear schedule (step 0 and the last included)
    checkpoint_dtype: str = "float32"  # "float16" halves the size; analyses upcast
    eval_every: int = 1_000  # evaluator metrics logged to metrics.parquet
    eval_n: int = 1_024
    # "active": re-initialise an embedding and its Adam state every forget_every steps; "temporary": only before
    # forget_until. forget_target "exemplar" resets the content (exemplar) embedding, as Anand et al. reset the
    # content tokens; "label" resets the label embedding instead.
    forgetting: str = "none"
    forget_every: int = 0
    forget_until: int = 0
    forget_target: str = "exemplar"

    def validate(self) -> None:
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        check(self.n_checkpoints >= 2, f"n_checkpoints must be >= 2, got {self.n_checkpoints}")
        check(self.checkpoint_dtype in ("float32", "float16"),
               f"checkpoint_dtype must be 'float32' or 'float16', got {self.checkpoint_dtype!r}")
        check(self.eval_every >= 1 and self.eval_n >= 2, "eval_every must be >= 1 and eval_n >= 2")
        check(self.forgetting in FORGETTING, f"forgetting must be one of {FORGETTING}, got {self.forgetting!r}")
        check(self.forget_target in FORGET_TARGETS,
               f"forget_target must be one of {FORGET_TARGETS}, got {self.forget_target!r}")
        if self.forgetting != "none":
            check(self.forget_every >= 1, f"forgetting={self.forgetting!r} needs forget_every >= 1")
        if self.forgetting == "temporary":
            check(self.forget_until >= 1, "forgetting='temporary' needs forget_until >= 1")


def section_class(kind: Any) -> type:
    """The task section class of a task kind (the registry in coopinterp.tasks, imported by name: see above)."""
    tasks = importlib.import_module("coopinterp.tasks").TASKS
    check(kind in tasks, f"unknown task kind {kind!r}; choose from {', '.join(tasks)}")
    return tasks[kind].section


def _default_task():
    return section_class(DEFAULT_KIND)()


DEFAULT_KIND = "exemplar"  # a task section without `kind` (every run.json before format 3 that was not Markov)
FORMAT_2_KINDS = ("exemplar", "markov")  # the tasks whose fields a run.json of format 1 or 2 holds, all together


@dataclass(frozen=True)
class RunConfig:
    task: Any = field(default_factory=_default_task)  # one task's section (coopinterp.tasks)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"

    def validate(self) -> "RunConfig":
        check(type(self.task) is section_class(self.task.kind),
              f"task section {type(self.task).__name__} does not hold task kind {self.task.kind!r}")
        self.task.validate()
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        check(isinstance(d, dict), "run config must be a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        check(not unknown, f"unknown run config key(s): {', '.join(sorted(unknown))}")
        task = d.get("task", {})
        check(isinstance(task, dict), "config section 'task' must be a JSON object")
        parts = {name: parse_section(sub, d.get(name, {}), name)
                 for name, sub in (("task", section_class(task.get("kind", DEFAULT_KIND))), ("model", ModelConfig),
                                   ("train", TrainConfig))}
        return cls(**parts, name=str(d.get("name", "run"))).validate()

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        """A bare RunConfig JSON, or a run's own run.json (its `config`, read as its format version says)."""
        d = read_json(path, "config")
        if isinstance(d, dict) and "config" in d and "format_version" in d:
            return cls.from_run_json(d, path)
        return cls.from_dict(d)

    @classmethod
    def from_run_json(cls, meta: dict[str, Any], path: str | Path) -> "RunConfig":
        """The config of a run.json's contents, read as its format version says."""
        version = meta.get("format_version")
        check(version in READABLE_FORMATS,
              f"{path} has format_version {version!r}; this coopinterp reads {', '.join(map(str, READABLE_FORMATS))}")
        return cls.from_dict(upgrade(meta["config"], version))

    def replace(self, name: str | None = None, **sections: dict[str, Any]) -> "RunConfig":
        """Copy with some fields of `task`, `model`, `train` changed, e.g. replace(train={"lr": 1e-3})."""
        d = self.to_dict()
        if name is not None:
            d["name"] = name
        for section, changes in sections.items():
            check(section in ("task", "model", "train"), f"unknown config section {section!r}")
            d[section] = {**d[section], **changes}
        return RunConfig.from_dict(d)


# of run.json; 2 added train.forget_target (format-1 runs forgot the label embedding); 3 writes only the task's own
# section (formats 1-2 held one task section with the fields of every task)
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)


def upgrade(config: dict[str, Any], version: int) -> dict[str, Any]:
    """A run.json config of an older format as this version reads it."""
    if not isinstance(config, dict):
        return config
    if version == 1:
        config = {**config, "train": {"forget_target": "label", **config.get("train", {})}}
    if version in (1, 2) and isinstance(config.get("task"), dict):  # drop the fields of the other tasks
        task = config["task"]
        own = {f.name for f in fields(section_class(task.get("kind", DEFAULT_KIND)))}
        others = {f.name for kind in FORMAT_2_KINDS for f in fields(section_class(kind))} - own
        config = {**config, "task": {k: v for k, v in task.items() if k not in others}}
    return config


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed one is a one-line ConfigError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None


def parse_section(cls: type, d: Any, section: str) -> Any:
    """A config section from a JSON object: unknown keys and wrongly typed values are one-line ConfigErrors."""
    check(isinstance(d, dict), f"config section {section!r} must be a JSON object")
    types = {f.name: f.type for f in fields(cls)}
    unknown = set(d) - set(types)
    check(not unknown, f"unknown {section} config key(s): {', '.join(sorted(unknown))}")
    for key, value in d.items():
        expected = types[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }[expected]
        check(ok, f"{section}.{key} must be {expected}, got {value!r}")
    return cls(**d)
