"""What every analysis of one checkpoint shares: the evaluation batches and one clean hooked forward per batch.

Inside `shared_forwards()`, `clean_run` runs each (model, batch) forward once (query logits and every attention
pattern) and hands the same result to every analysis that asks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..config import TaskConfig
from ..model import CoopModel
from ..task import EVALUATORS, Batch, make_batch


def eval_batches(task: TaskConfig, n: int, seed: int, device: str = "cpu") -> dict[str, Batch]:
    """One batch per evaluator, each analysis reads the ones it needs; drawn on the CPU, so that every device
    sees the same sequences."""
    return {ev: make_batch(task, ev, n, seed=seed + i).to(device) for i, ev in enumerate(EVALUATORS)}


class CleanRun(NamedTuple):
    """What one clean (unintervened) forward of a batch gives every analysis."""

    logits: Float[Tensor, "n labels"]
    patterns: Float[Tensor, "layer n head q_pos k_pos"]


_memo: dict[tuple[int, int], tuple[CoopModel, Batch, CleanRun]] | None = None


@contextmanager
def shared_forwards() -> Iterator[None]:
    """Inside the block, `clean_run` runs each (model, batch) forward once; analyses must not edit weights."""
    global _memo
    outer = _memo
    _memo = {} if outer is None else outer
    try:
        yield
    finally:
        _memo = outer


def _query_only(resid: Float[Tensor, "n pos d_model"], hook) -> Float[Tensor, "n 1 d_model"]:
    # Only the query's logits are read; unembedding one position instead of all (12,800 labels) is ~2.5x faster.
    return resid[:, -1:]


@torch.no_grad()
def clean_run(model: CoopModel, batch: Batch) -> CleanRun:
    """Query logits and every layer's attention pattern from one hooked forward (memoised in `shared_forwards`)."""
    key = (id(model), id(batch))
    if _memo is not None and key in _memo:
        return _memo[key][2]
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with model.bridge.hooks(fwd_hooks=[("unembed.hook_in", _query_only)]):
        logits, cache = model.run_with_cache(batch, names_filter=names)
    out = CleanRun(logits, torch.stack([cache[name] for name in names]))
    if _memo is not None:
        _memo[key] = (model, batch, out)  # holding model and batch keeps their ids from being reused
    return out
