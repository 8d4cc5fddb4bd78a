"""What every analysis of one checkpoint shares: the evaluation batches and one clean hooked forward per batch.

Inside `shared_forwards()`, `clean_run` (the exemplar model: query logits and every attention pattern) and
`token_run` (a token model: the next-token loss at every position and each head's attention mass on the token
relations of `relations`) run each (model, batch) forward once and hand the same result to every analysis that
asks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch
from .engine import full_rows

LOGITS_BUDGET = 1 << 22  # logits per forward chunk of a token model's clean run (16 MB: 1.4x faster than 256 MB)
TOKENS_PER_CALL = 1 << 13  # sequences x positions per intervened forward of a token model (its activations' memory)


class CleanRun(NamedTuple):
    """What one clean (unintervened) forward of a batch gives every analysis."""

    hidden: Float[Tensor, "n d_model"]  # the unembedding's input at the query (`Engine.score` reads what it needs)
    patterns: Float[Tensor, "layer n head q_pos k_pos"]


class TokenRun(NamedTuple):
    """What one clean forward of a token batch gives every analysis."""

    loss: Float[Tensor, "n scored"]  # next-token loss at each position from batch.first on (the last predicts none)
    mass: dict[str, Float[Tensor, "layer head"]]  # relation -> mean attention mass on it (rows where it exists)


_memo: dict[tuple[int, int], tuple[object, object, CleanRun | TokenRun]] | None = None


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


@torch.no_grad()
def clean_run(model: CoopModel, batch: Batch) -> CleanRun:
    """The query's unembedding input and every layer's attention pattern from one hooked forward, stopped before
    the unembedding (which the bridge would run on every position, 12,800 labels each) and memoised in
    `shared_forwards`."""
    key = (id(model), id(batch))
    if _memo is not None and key in _memo:
        return _memo[key][2]
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    patterns = {}

    def record(pattern: Tensor, hook) -> None:
        patterns[hook.name] = pattern

    hidden = final_stream(model, model.residual(batch), [(name, record) for name in names], start_at_layer=0)
    out = CleanRun(hidden[:, -1], torch.stack([patterns[name] for name in names]))
    if _memo is not None:
        _memo[key] = (model, batch, out)  # holding model and batch keeps their ids from being reused
    return out


def relations(tokens: Int[Tensor, "n pos"], first: int,
              period: int | None = None) -> dict[str, Bool[Tensor, "n q_pos k_pos"]]:
    """Where each kind of head looks, for every query position p and key position k (both >= first):
    previous token (k = p - 1), self (k = p), duplicate token (an earlier k with the same token) and induction.
    With a known period L (repeated tokens: the second copy starts at first + L), induction is exactly
    k = p - L + 1 for p in the second copy; without one, k = j + 1 for every earlier j holding p's token (prefix
    matching, transformer-lens's induction pattern), chance repeats included."""
    n, T = tokens.shape
    pos = torch.arange(T, device=tokens.device)
    real = pos >= first
    valid = real[:, None] & real[None, :] & (pos[None, :] <= pos[:, None])
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & (pos[None, :] < pos[:, None]) & valid
    if period is None:
        induction = torch.zeros_like(earlier)
        induction[:, :, 1:] = earlier[:, :, :-1]
        induction = induction & valid
    else:
        second = pos >= first + period
        induction = ((pos[None, :] == pos[:, None] - period + 1) & second[:, None] & valid).expand(n, T, T)
    return {"prev_token": ((pos[None, :] == pos[:, None] - 1) & valid).expand(n, T, T),
            "self": ((pos[None, :] == pos[:, None]) & valid).expand(n, T, T),
            "duplicate_token": earlier, "induction": induction}


@torch.no_grad()
def token_run(model: TokenModel, batch: TokenBatch) -> TokenRun:
    """Next-token loss and attention masses from hooked forwards in chunks of sequences (the logits of a 50k
    vocabulary do not fit at once), memoised in `shared_forwards`."""
    key = (id(model), id(batch))
    if _memo is not None and key in _memo:
        return _memo[key][2]
    n, T = batch.tokens.shape
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    losses, sums, rows = [], {}, {}
    for chunk in batch.tokens.split(max(1, LOGITS_BUDGET // (T * model.cfg.d_vocab))):
        logits, cache = model.bridge.run_with_cache(chunk, names_filter=names)
        losses.append(next_token_loss(logits, chunk, batch.first))
        patterns = torch.stack([cache[name] for name in names])  # layer n head q k
        for rel, mask in relations(chunk, batch.first, batch.period).items():
            m = mask.to(patterns.dtype)
            sums[rel] = sums.get(rel, 0) + torch.einsum("lnhqk,nqk->lh", patterns, m)
            rows[rel] = rows.get(rel, 0) + m.amax(-1).sum()
    mass = {rel: sums[rel] / rows[rel].clamp(min=1) for rel in sums}
    out = TokenRun(torch.cat(losses), mass)
    if _memo is not None:
        _memo[key] = (model, batch, out)
    return out


class _Stop(Exception):
    """Raised by `final_stream`'s hook: nothing after the final LayerNorm is needed."""


@torch.no_grad()
def final_stream(model: TokenModel | CoopModel, inputs: Tensor, fwd_hooks: Sequence[tuple[str, Callable]] = (),
                 **kwargs) -> Float[Tensor, "n pos d_model"]:
    """The unembedding's input (`unembed.hook_in`, after the final LayerNorm) of a hooked forward of the bridge on
    `inputs` (tokens, or a residual stream with `start_at_layer=0`) that stops there, so that a metric unembeds only
    the rows it reads (`engine.full_rows`), a block at a time."""
    store = {}

    def grab(x: Tensor, hook) -> None:
        store["x"] = x
        raise _Stop

    try:
        model.bridge.run_with_hooks(inputs, fwd_hooks=[*fwd_hooks, ("unembed.hook_in", grab)], **kwargs)
    except _Stop:
        pass
    return store["x"]


def stream_loss(model: TokenModel, hidden: Float[Tensor, "n pos d_model"], tokens: Int[Tensor, "n pos"],
                first: int) -> Float[Tensor, "n scored"]:
    """`next_token_loss` from the unembedding's input, unembedding a block of rows at a time (no full logits)."""
    ce, _ = full_rows(hidden[:, first:-1], model.bridge.W_U, model.bridge.b_U, tokens[:, first + 1:], top=False)
    return ce


def next_token_loss(logits: Float[Tensor, "n pos vocab"], tokens: Int[Tensor, "n pos"],
                    first: int) -> Float[Tensor, "n scored"]:
    """Cross-entropy of predicting token p + 1 at every position p >= first."""
    return torch.nn.functional.cross_entropy(logits[:, first:-1].transpose(1, 2), tokens[:, first + 1:],
                                             reduction="none")
