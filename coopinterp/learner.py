"""What the training loop drives: the `Learner` protocol every task's trainer satisfies, and the pieces they share.

training.run_loop trains any `Learner` (one seed or many, any task); a task builds its own (coopinterp.tasks), so the
loop never learns the task: the loss, the batches and the model live in the learner.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

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
