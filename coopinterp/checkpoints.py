"""The run directory format: run.json, safetensors checkpoints, resume state (runs/native.py opens one).

Only safetensors and JSON are ever read, so loading never unpickles anything.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .config import FORMAT_VERSION, RunConfig
from .errors import CheckpointError, ConfigError, CoopError
from .tables import atomic_path

CHECKPOINT_RE = re.compile(r"^step_(\d{9})\.safetensors$")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


@runtime_checkable
class Saved(Protocol):
    """A model whose weights a checkpoint holds (every task's model: CoopModel, tasks.markov.MarkovModel, ...)."""

    def weights(self) -> dict[str, torch.Tensor]: ...
    def load_weights(self, weights: dict[str, torch.Tensor], source: str = "checkpoint") -> None: ...


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
        config = RunConfig.from_run_json(json.loads(path.read_text()), path)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None
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


def save_checkpoint(run_dir: Path, model: Saved, step: int, seqs_seen: int, dtype: str) -> Path:
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


def check_headers(run_dir: Path, steps: list[int]) -> None:
    """Every checkpoint's safetensors header is whole (cheap: no tensor is read, torch is not needed); a truncated
    or damaged file is a one-line CheckpointError naming it."""
    for step in steps:
        path = checkpoint_path(run_dir, step)
        try:
            with safe_open(str(path), framework="numpy") as f:
                f.metadata()
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None


class ResumeState:
    """RUN/state/last.safetensors: weights, Adam state and data RNG of the newest step (no pickle)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state" / "last.safetensors"

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, step: int, model: Saved, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
        tensors = {f"model.{k}": v.float().cpu() for k, v in model.weights().items()}
        for i, p in enumerate(opt.param_groups[0]["params"]):
            for key, value in opt.state.get(p, {}).items():
                tensors[f"opt.{i}.{key}"] = value.detach().cpu().reshape(value.shape)
        tensors["rng"] = gen.get_state().cpu()
        save_tensors(self.path, tensors, {"step": str(step)})

    def load(self, model: Saved, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
        tensors, meta = load_tensors(self.path)
        model.load_weights({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source=str(self.path))
        for i, p in enumerate(opt.param_groups[0]["params"]):
            state = {k.split(".", 2)[2]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
            if state:
                opt.state[p] = state
        gen.set_state(tensors["rng"])
        return int(meta["step"])

    def step(self) -> int:
        """The saved step (0 when there is no state), read from the file's metadata only."""
        if not self.path.exists():
            return 0
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return int((f.metadata() or {})["step"])
        except Exception as e:  # any damage: one line naming the file
            first = (str(e).splitlines() or [""])[0]
            raise CheckpointError(f"resume state {self.path} is corrupt ({type(e).__name__}: {first})") from None


def prepare_run_dir(config: RunConfig, out: Path) -> None:
    """Make `out` a run directory for `config`, or check that the run there can go on under it.

    A run goes on only under the same config, except `train.steps`, which may grow (the run is extended; its
    checkpoint schedule is the one of the new length from the saved step on). Never overwrites a shipped run
    (checkpoints or metrics but no resume state) nor a directory that holds something else.
    """
    if out.exists() and not out.is_dir():
        raise CoopError(f"--out {out} exists and is not a directory")
    if (out / "run.json").exists():
        existing = read_run_config(out)
        saved = ResumeState(out).step()
        if existing.replace(train={"steps": config.train.steps}).to_dict() != config.to_dict():
            diff = _first_difference(existing.to_dict(), config.to_dict())
            raise CoopError(f"{out} holds a run with a different config ({diff}); resume it with the same config "
                            "or choose another output directory")
        if config.train.steps < saved:
            raise CoopError(f"{out} is already trained to step {saved}; --steps {config.train.steps} would shorten "
                            "it: use a number of steps >= the saved one")
        if not ResumeState(out).exists() and (list_checkpoints(out) or (out / "metrics.parquet").exists()):
            raise CoopError(f"{out} holds a run without resume state (state/last.safetensors), e.g. a shipped run; "
                            "training there would overwrite it: choose another output directory")
    elif out.is_dir() and any(out.iterdir()):
        raise CoopError(f"{out} is not empty and holds no coopinterp run; choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, config)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}: saved {va!r}, given {vb!r}"
    return ""
