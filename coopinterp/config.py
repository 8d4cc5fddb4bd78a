"""Run configuration: task, model and training dataclasses, their JSON round-trip and presets."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


TASK_KINDS = ("exemplar", "markov")


@dataclass(frozen=True)
class TaskConfig:
    """The synthetic exemplar-label task (docs/reference.md, "The task")."""

    n_classes: int = 12_800
    n_labels: int | None = None  # None: one label per class (L = K); else k -> k mod L
    exemplars_per_class: int = 20
    dim: int = 64
    eps: float = 0.5  # within-class noise relative to the class prototype
    # Families (Omniglot's characters x rotations): F consecutive classes share a family direction and differ
    # by `family_delta`, so the full K-way map is hard to memorise while two-way choices stay easy. 1: none.
    family_size: int = 1
    family_delta: float = 0.15
    # Levers on the query's direct path (docs/direct_path_search.md); at their defaults they draw nothing.
    shared_mean: float = 0.0  # a component common to every exemplar, in units of the class part (ResNet-like mean)
    p_same_family: float = 0.0  # chance that a training sequence's distractor class is from the query's family
    p_same_family_from: int = 0  # the training step from which p_same_family applies (0 before; e.g. after ICL forms)
    context_pairs: int = 2
    holdout_classes: int = 0  # the last H classes never appear in training
    p_bursty: float = 1.0  # with N > 2: share of sequences that hold the query's class
    zipf_alpha: float = 0.0  # 0: uniform classes; > 0: class rank r drawn with p ~ r^-alpha
    match_query: bool = False  # persistent-ICL intervention on the training distribution
    seed: int = 0  # seeds the exemplar bank (the Markov task: its chains)
    # kind "markov": the Markov-chain task instead (markov.py, docs/reference.md "Markov chains"); the fields above
    # but `seed` then go unused
    kind: str = "exemplar"
    n_chains: int = 64  # K: the training mixture's chains
    n_states: int = 10  # V: states (tokens)
    markov_len: int = 512  # T: tokens per sequence
    dirichlet_alpha: float = 1.0  # every transition row ~ Dirichlet(alpha)

    @property
    def labels(self) -> int:
        return self.n_labels or self.n_classes

    @property
    def train_classes(self) -> int:
        return self.n_classes - self.holdout_classes

    @property
    def seq_len(self) -> int:
        return self.markov_len if self.kind == "markov" else 2 * self.context_pairs + 1

    def validate(self) -> None:
        _check(self.kind in TASK_KINDS, f"task kind must be one of {TASK_KINDS}, got {self.kind!r}")
        _check(self.n_chains >= 1, f"n_chains must be >= 1, got {self.n_chains}")
        _check(self.n_states >= 2, f"n_states must be >= 2, got {self.n_states}")
        _check(self.markov_len >= 2, f"markov_len must be >= 2, got {self.markov_len}")
        _check(self.dirichlet_alpha > 0 and math.isfinite(self.dirichlet_alpha),
               f"dirichlet_alpha must be finite and > 0, got {self.dirichlet_alpha}")
        L = self.labels
        _check(self.n_classes >= 3, f"n_classes must be >= 3, got {self.n_classes}")
        _check(3 <= L <= self.n_classes, f"n_labels must be in [3, n_classes], got {L}")
        _check(self.n_classes % L == 0, f"n_classes ({self.n_classes}) must be a multiple of n_labels ({L})")
        _check(self.exemplars_per_class >= 2, f"exemplars_per_class must be >= 2, got {self.exemplars_per_class}")
        _check(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        _check(self.eps >= 0 and math.isfinite(self.eps), f"eps must be finite and >= 0, got {self.eps}")
        _check(self.family_size >= 1 and self.n_classes % self.family_size == 0,
               f"family_size must be >= 1 and divide n_classes ({self.n_classes}), got {self.family_size}")
        _check(self.family_delta > 0 and math.isfinite(self.family_delta),
               f"family_delta must be finite and > 0, got {self.family_delta}")
        _check(self.shared_mean >= 0 and math.isfinite(self.shared_mean),
               f"shared_mean must be finite and >= 0, got {self.shared_mean}")
        _check(0.0 <= self.p_same_family <= 1.0, f"p_same_family must be in [0, 1], got {self.p_same_family}")
        _check(self.p_same_family_from >= 0, f"p_same_family_from must be >= 0, got {self.p_same_family_from}")
        if self.p_same_family > 0:  # family mates must be training classes with labels of their own
            _check(self.family_size > 1 and L >= self.family_size and self.holdout_classes % self.family_size == 0,
                   "p_same_family > 0 needs family_size > 1, n_labels >= family_size and holdout_classes a "
                   "multiple of family_size")
        _check(self.context_pairs >= 2, f"context_pairs must be >= 2, got {self.context_pairs}")
        _check(self.holdout_classes == 0 or 3 <= self.holdout_classes <= self.n_classes - 3,
               f"holdout_classes must be 0 or in [3, n_classes - 3], got {self.holdout_classes}")
        _check(0.0 <= self.p_bursty <= 1.0, f"p_bursty must be in [0, 1], got {self.p_bursty}")
        _check(self.zipf_alpha >= 0, f"zipf_alpha must be >= 0, got {self.zipf_alpha}")


@dataclass(frozen=True)
class ModelConfig:
    """The paper's 2-layer attention-only transformer (docs/reference.md, "The model")."""

    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    d_head: int = 8
    init: str = "paper"  # "paper": lecun-normal linears, positions ~U(+-1/sqrt(32)); "torch": torch defaults

    def validate(self) -> None:
        _check(self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}")
        _check(self.n_heads >= 1 and self.d_head >= 1, "n_heads and d_head must be >= 1")
        _check(self.n_heads * self.d_head == self.d_model,
               f"n_heads * d_head must equal d_model, got {self.n_heads}*{self.d_head} != {self.d_model}")
        _check(self.init in ("paper", "torch"), f"init must be 'paper' or 'torch', got {self.init!r}")


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
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        _check(self.n_checkpoints >= 2, f"n_checkpoints must be >= 2, got {self.n_checkpoints}")
        _check(self.checkpoint_dtype in ("float32", "float16"),
               f"checkpoint_dtype must be 'float32' or 'float16', got {self.checkpoint_dtype!r}")
        _check(self.eval_every >= 1 and self.eval_n >= 2, "eval_every must be >= 1 and eval_n >= 2")
        _check(self.forgetting in FORGETTING, f"forgetting must be one of {FORGETTING}, got {self.forgetting!r}")
        _check(self.forget_target in FORGET_TARGETS,
               f"forget_target must be one of {FORGET_TARGETS}, got {self.forget_target!r}")
        if self.forgetting != "none":
            _check(self.forget_every >= 1, f"forgetting={self.forgetting!r} needs forget_every >= 1")
        if self.forgetting == "temporary":
            _check(self.forget_until >= 1, "forgetting='temporary' needs forget_until >= 1")


@dataclass(frozen=True)
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"

    def validate(self) -> "RunConfig":
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
        _check(isinstance(d, dict), "run config must be a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        _check(not unknown, f"unknown run config key(s): {', '.join(sorted(unknown))}")
        parts = {name: _from_dict(sub, d.get(name, {}), name)
                 for name, sub in (("task", TaskConfig), ("model", ModelConfig), ("train", TrainConfig))}
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
        _check(version in READABLE_FORMATS,
               f"{path} has format_version {version!r}; this coopinterp reads {', '.join(map(str, READABLE_FORMATS))}")
        return cls.from_dict(upgrade(meta["config"], version))

    def replace(self, name: str | None = None, **sections: dict[str, Any]) -> "RunConfig":
        """Copy with some fields of `task`, `model`, `train` changed, e.g. replace(train={"lr": 1e-3})."""
        d = self.to_dict()
        if name is not None:
            d["name"] = name
        for section, changes in sections.items():
            _check(section in ("task", "model", "train"), f"unknown config section {section!r}")
            d[section] = {**d[section], **changes}
        return RunConfig.from_dict(d)


FORMAT_VERSION = 2  # of run.json; 2 added train.forget_target (format-1 runs forgot the label embedding)
READABLE_FORMATS = (1, 2)


def upgrade(config: dict[str, Any], version: int) -> dict[str, Any]:
    """A run.json config of an older format as this version reads it."""
    if version == 1 and isinstance(config, dict):
        config = {**config, "train": {"forget_target": "label", **config.get("train", {})}}
    return config


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed one is a one-line ConfigError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None


def _from_dict(cls: type, d: Any, section: str) -> Any:
    _check(isinstance(d, dict), f"config section {section!r} must be a JSON object")
    types = {f.name: f.type for f in fields(cls)}
    unknown = set(d) - set(types)
    _check(not unknown, f"unknown {section} config key(s): {', '.join(sorted(unknown))}")
    for key, value in d.items():
        expected = types[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }[expected]
        _check(ok, f"{section}.{key} must be {expected}, got {value!r}")
    return cls(**d)


PRESETS: dict[str, RunConfig] = {
    # The paper's configuration: 20M sequences at lr 1e-5, on the family task (Omniglot-like). Meant for a GPU.
    "paper": RunConfig(
        task=TaskConfig(n_classes=12_800, eps=0.5, family_size=8, family_delta=0.15),
        train=TrainConfig(steps=625_000, batch_size=32, lr=1e-5, n_checkpoints=64, eval_every=5_000),
        name="paper",
    ),
    # The shipped demo (checkpoints/demo): classes in families of 8, so the query's own embedding cannot memorise
    # all 12,800 classes; ICL first, then CIWL takes over. ~45 min on one idle CPU core (README, "Results").
    "demo": RunConfig(
        task=TaskConfig(n_classes=12_800, eps=0.7, family_size=8, family_delta=0.15),
        train=TrainConfig(steps=400_000, batch_size=32, lr=3e-4, n_checkpoints=16,
                          checkpoint_dtype="float16", eval_every=1_000, eval_n=1_024),
        name="demo",
    ),
    # The phenomenon in under 3 minutes on one CPU core: the demo's task at half the classes (a cheaper
    # unembedding) and in 16 dimensions (in 64, CIWL formed first in 2 of seeds 0-2 at this class count). ICL
    # passes 0.8 by 4,000-5,000 steps in seeds 0-2; then CIWL rises from ~0.65 to ~0.85 and flip falls from ~0.8
    # towards the memorised answer (README, "Your first hour").
    "quick": RunConfig(
        task=TaskConfig(n_classes=6_400, dim=16, eps=0.7, family_size=8, family_delta=0.15),
        train=TrainConfig(steps=24_000, batch_size=32, lr=3e-4, n_checkpoints=8,
                          checkpoint_dtype="float16", eval_every=1_000, eval_n=512),
        name="quick",
    ),
    # Trains in seconds; for tests and CI (it learns too little to show ICL: use quick for that).
    "tiny": RunConfig(
        task=TaskConfig(n_classes=64, n_labels=16, exemplars_per_class=8, dim=16, eps=0.3),
        model=ModelConfig(n_layers=2, n_heads=4, d_model=32, d_head=8),
        train=TrainConfig(steps=300, batch_size=32, lr=3e-3, n_checkpoints=6, eval_every=50, eval_n=256),
        name="tiny",
    ),
    # The Markov-chain task (Park et al. 2024, scaled to a CPU; docs/reference.md "Markov chains"): K chains of S
    # over V states, the four algorithms' competition (analysis `strategy`) in minutes on one core.
    "markov": RunConfig(
        task=TaskConfig(kind="markov", n_chains=16, n_states=5, markov_len=64),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=32, d_head=16),
        train=TrainConfig(steps=4_000, batch_size=32, lr=3e-3, n_checkpoints=12, eval_every=100, eval_n=256),
        name="markov",
    ),
    # The Markov task in seconds; for tests and CI.
    "markov-tiny": RunConfig(
        task=TaskConfig(kind="markov", n_chains=4, n_states=3, markov_len=16),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8),
        train=TrainConfig(steps=60, batch_size=16, lr=3e-3, n_checkpoints=4, eval_every=20, eval_n=32),
        name="markov-tiny",
    ),
}


def preset(name: str) -> RunConfig:
    _check(name in PRESETS, f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
