"""What every analysis of one checkpoint shares: the evaluation batches and one clean hooked forward per batch.

Inside `shared_forwards()`, `clean_run` (the exemplar model: query logits and every attention pattern) and
`token_run` (a token model: the next-token loss at every position and each head's attention mass on the token
relations of `relations`) run each (model, batch) forward once and hand the same result to every analysis that
asks.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
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
    """Raised by `stopped_at`'s hook: nothing after that hook is needed."""


def stopped_at(model: TokenModel | CoopModel, inputs: Tensor, name: str,
               fwd_hooks: Sequence[tuple[str, Callable]] = (), **kwargs) -> Tensor:
    """The activation at hook `name` of a hooked forward of the bridge on `inputs` that stops there (with gradients
    where the caller enables them)."""
    store = {}

    def grab(x: Tensor, hook) -> None:
        store["x"] = x
        raise _Stop

    try:
        model.bridge.run_with_hooks(inputs, fwd_hooks=[*fwd_hooks, (name, grab)], **kwargs)
    except _Stop:
        pass
    return store["x"]


@torch.no_grad()
def final_stream(model: TokenModel | CoopModel, inputs: Tensor, fwd_hooks: Sequence[tuple[str, Callable]] = (),
                 **kwargs) -> Float[Tensor, "n pos d_model"]:
    """The unembedding's input (`unembed.hook_in`, after the final LayerNorm) of a hooked forward of the bridge on
    `inputs` (tokens, or a residual stream with `start_at_layer=0`) that stops there, so that a metric unembeds only
    the rows it reads (`engine.full_rows`), a block at a time."""
    return stopped_at(model, inputs, "unembed.hook_in", fwd_hooks, **kwargs)


@torch.no_grad()
def recorded(model: TokenModel, tokens: Int[Tensor, "n pos"], names: Sequence[str]) -> dict[str, Tensor]:
    """The activations at hooks `names` of one clean forward, stopped before the unembedding."""
    store = {}

    def record(x: Tensor, hook, name: str) -> None:
        store[name] = x

    final_stream(model, tokens, [(name, partial(record, name=name)) for name in names])
    return store


@contextmanager
def blocks_from(model: TokenModel, layer: int) -> Iterator[None]:
    """Inside the block the bridge's forward runs only blocks `layer` on: the earlier ones leave its block list (the
    Hugging Face model's own, which its forward iterates) until the block ends."""
    blocks = model.bridge.blocks._modules
    below = {key: blocks.pop(key) for key in list(blocks)[:layer]}
    try:
        yield
    finally:
        rest = dict(blocks)
        blocks.clear()
        blocks.update(below)
        blocks.update(rest)


@torch.no_grad()
def resumed(model: TokenModel, resid: Float[Tensor, "n pos d_model"], tokens: Int[Tensor, "n pos"], layer: int,
            fwd_hooks: Sequence[tuple[str, Callable]] = (), stop: str = "unembed.hook_in") -> Tensor:
    """The activation at hook `stop` of a forward that starts at block `layer` from `resid` (the stream entering it,
    e.g. the clean one from `recorded`) without running the blocks below; `tokens` (same shape) only feed the
    embedding, whose output block `layer` replaces."""
    enter = (get_act_name("resid_pre", layer), lambda x, hook: resid)
    with blocks_from(model, layer):
        return stopped_at(model, tokens, stop, [enter, *fwd_hooks])


def stream_loss(model: TokenModel, hidden: Float[Tensor, "n pos d_model"], tokens: Int[Tensor, "n pos"],
                first: int) -> Float[Tensor, "n scored"]:
    """`next_token_loss` from the unembedding's input, unembedding a block of rows at a time (no full logits)."""
    ce, _ = full_rows(hidden[:, first:-1], model.bridge.W_U, model.bridge.b_U, tokens[:, first + 1:], top=False)
    return ce


def stream_loss_grad(model: TokenModel, hidden: Float[Tensor, "n pos d_model"], tokens: Int[Tensor, "n pos"],
                     first: int) -> tuple[Float[Tensor, ""], Float[Tensor, "n pos d_model"]]:
    """The mean next-token loss from the unembedding's input and its gradient with respect to that input, a block
    of rows at a time (no full logits, no graph through the unembedding)."""
    W_U, b_U = model.bridge.W_U.detach(), model.bridge.b_U.detach()
    rows, targets = hidden.detach()[:, first:-1].reshape(-1, hidden.shape[-1]), tokens[:, first + 1:].reshape(-1)
    grad, total = torch.zeros_like(rows), rows.new_zeros(())
    for block in torch.arange(len(rows), device=rows.device).split(max(1, LOGITS_BUDGET // W_U.shape[-1])):
        with torch.enable_grad():
            x = rows[block].requires_grad_()
            loss = torch.nn.functional.cross_entropy(x @ W_U + b_U, targets[block], reduction="sum")
            grad[block] = torch.autograd.grad(loss, x)[0]
        total += loss.detach()
    full = torch.zeros_like(hidden)
    full[:, first:-1] = grad.view(hidden.shape[0], -1, hidden.shape[-1]) / len(rows)
    return total / len(rows), full


def next_token_loss(logits: Float[Tensor, "n pos vocab"], tokens: Int[Tensor, "n pos"],
                    first: int) -> Float[Tensor, "n scored"]:
    """Cross-entropy of predicting token p + 1 at every position p >= first."""
    return torch.nn.functional.cross_entropy(logits[:, first:-1].transpose(1, 2), tokens[:, first + 1:],
                                             reduction="none")
