"""Run directories: run.json, safetensors checkpoints, resume state, and `load_run`.

Only safetensors and JSON are ever read, so loading never unpickles anything.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .config import RunConfig
from .errors import CheckpointError, ConfigError
from .model import CoopModel
from .tables import atomic_path, read_table

FORMAT_VERSION = 2  # 2 added train.forget_target; format-1 runs forgot the label embedding
READABLE_FORMATS = (1, 2)
CHECKPOINT_RE = re.compile(r"^step_(\d{9})\.safetensors$")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:09d}.safetensors"


def write_run_json(run_dir: Path, config: RunConfig) -> None:
    meta = {"config": config.to_dict(), "seed": config.train.seed, "coopinterp_version": __version__,
            "format_version": FORMAT_VERSION}
    with atomic_path(run_dir / "run.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def read_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a coopinterp run: no run.json")
    try:
        meta = json.loads(path.read_text())
        version = meta.get("format_version")
        if version not in READABLE_FORMATS:
            raise CheckpointError(f"{path} has format_version {version!r}; this coopinterp reads "
                                  f"{', '.join(map(str, READABLE_FORMATS))}")
        config = RunConfig.from_dict(_upgrade(meta["config"], version))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None
    return config


def _upgrade(config: dict, version: int) -> dict:
    """A config as this version reads it: format-1 runs that forgot did so on the label embedding."""
    if version == 1:
        train = config.get("train", {})
        config = {**config, "train": {"forget_target": "label", **train}}
    return config


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors file, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; any damage becomes a one-line CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None


def save_checkpoint(run_dir: Path, model: CoopModel, step: int, seqs_seen: int, dtype: str) -> Path:
    path = checkpoint_path(run_dir, step)
    weights = {k: v.to(getattr(torch, dtype)).cpu() for k, v in model.weights().items()}
    save_tensors(path, weights, {"step": str(step), "seqs_seen": str(seqs_seen), "format": "coopinterp"})
    return path


def list_checkpoints(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(f"{folder} holds pickle file(s) {', '.join(pickled[:3])}; coopinterp never unpickles "
                              "checkpoints: convert legacy ones with `coopinterp import-tl`")
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)))


@dataclass
class Run:
    """A training run on disk: its config, checkpoint steps, logged metrics, and models per step."""

    path: Path
    config: RunConfig
    steps: list[int]
    device: str = "cpu"
    cache_size: int = 4

    def __post_init__(self) -> None:
        self._models: OrderedDict[int, CoopModel] = OrderedDict()

    @property
    def name(self) -> str:
        return self.path.name

    def check_step(self, step: int) -> int:
        if step not in self.steps:
            shown = ", ".join(map(str, self.steps[:40])) + (" ..." if len(self.steps) > 40 else "")
            raise CheckpointError(f"run {self.path} has no checkpoint at step {step}; available: {shown or 'none'}")
        return step

    def seqs_seen(self, step: int) -> int:
        return step * self.config.train.batch_size

    def model(self, step: int) -> CoopModel:
        """The model at a checkpointed step, float32, eval mode (a few are kept cached)."""
        self.check_step(step)
        if step in self._models:
            self._models.move_to_end(step)
            return self._models[step]
        weights, _ = load_tensors(checkpoint_path(self.path, step))
        model = CoopModel(self.config.task, self.config.model, seed=self.config.train.seed)
        model.load_weights({k: v.float() for k, v in weights.items()}, source=str(checkpoint_path(self.path, step)))
        model.to(self.device).eval().requires_grad_(False)
        self._models[step] = model
        while len(self._models) > self.cache_size:
            self._models.popitem(last=False)
        return model

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Evaluator metrics logged during training (tidy schema)."""
        path = self.path / "metrics.parquet"
        if not path.is_file():
            raise CheckpointError(f"run {self.path} has no metrics.parquet")
        return read_table(path)


def load_run(path: str | Path, device: str = "cpu") -> Run:
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
    return Run(run_dir, config, steps, device=device)
