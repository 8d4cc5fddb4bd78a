"""What the training loop drives: the `Learner` protocol every task's trainer satisfies, and the pieces they share.

training.run_loop trains any `Learner` (one seed or many, any task); a task builds its own (coopinterp.tasks), so the
loop never learns the task: the loss, the batches and the model live in the learner.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .checkpoints import ResumeState, save_checkpoint

EVAL_SEED = 10_000  # the fixed evaluation batches logged to metrics.parquet during training

Results = dict[str, dict[str, float]]  # evaluator -> {"acc": ..., "loss": ...}


@runtime_checkable
class Learner(Protocol):
    """What the loop needs of the models it trains: seed j of len(self) writes the run directory dirs[j]."""

    device: str

    def __len__(self) -> int: ...
    def load_state(self, j: int, run_dir: Path) -> int: ...
    def save_state(self, j: int, run_dir: Path, step: int) -> None: ...
    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None: ...
    def evaluate(self, batches: dict[str, Any]) -> list[Results]: ...
    def forget(self, step: int) -> None: ...
    def train_step(self, step: int | None = None) -> None: ...


def forget_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of the forgetting re-init at `step`: a function of (seed, step), so resume is exact. It lives on
    the parameters' device (a CPU generator serves cpu and meta, which has none of its own)."""
    device = torch.device(device)
    where = "cpu" if device.type in ("cpu", "meta") else device
    return torch.Generator(device=where).manual_seed(seed * 1_000_003 + step)


class SeedModels:
    """The Learner's bookkeeping for tasks that train each seed as its own model: `models`, `opts` (optimisers) and
    `gens` (data generators), one per seed of `seeds`, resumed and checkpointed per seed. A task's learner subclasses
    it and adds `evaluate`, `forget` and `train_step`."""

    config: Any  # a RunConfig
    seeds: list[int]
    models: list[torch.nn.Module]
    opts: list[torch.optim.Optimizer]
    gens: list[torch.Generator]

    def __len__(self) -> int:
        return len(self.seeds)

    def load_state(self, j: int, run_dir: Path) -> int:
        return ResumeState(run_dir).load(self.models[j], self.opts[j], self.gens[j])

    def save_state(self, j: int, run_dir: Path, step: int) -> None:
        ResumeState(run_dir).save(step, self.models[j], self.opts[j], self.gens[j])

    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None:
        t = self.config.train
        save_checkpoint(run_dir, self.models[j], step, step * t.batch_size, t.checkpoint_dtype)
