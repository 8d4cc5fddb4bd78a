"""Contrastive tasks: the data that names a behaviour for circuit discovery.

A contrast holds pairs of prompts, a clean one and a corrupted one, with the answer the clean prompt should give and
a wrong answer, read at one position per pair. The behaviour's metric is the logit difference answer - wrong at that
position (or the probability difference); a circuit is the part of the model that carries the clean-minus-corrupted
difference of that metric.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from jaxtyping import Int
from torch import Tensor


@dataclass(frozen=True)
class ContrastBatch:
    """n contrastive pairs; `evaluator` names the source (the table's `evaluator` column)."""

    clean: Int[Tensor, "n pos"]
    corrupted: Int[Tensor, "n pos"]
    answer: Int[Tensor, " n"]
    wrong: Int[Tensor, " n"]
    position: Int[Tensor, " n"]  # where the metric is read (default: the last position)
    evaluator: str

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device: str) -> "ContrastBatch":
        return replace(self, **{name: getattr(self, name).to(device)
                                for name in ("clean", "corrupted", "answer", "wrong", "position")})
