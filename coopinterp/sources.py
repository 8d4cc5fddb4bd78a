"""Evaluation data for token models: where an outside run's analyses read their sequences from.

A source is named by a short spec, and that name is the table's `evaluator` column:
- `repeated` or `repeated:L`: random tokens, each sequence a random block of L tokens followed by the same block
  again (after the model's BOS token when its config has one) — transformer-lens's convention for finding
  induction and previous-token heads. The default; L fits the model's context and vocabulary.
- `tokens:PATH`: a user's token ids, a `.npy` integer array [n, T].
- `text:PATH`: a UTF-8 text file cut into sequences by the checkpoint's own tokenizer (its folder must have one).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from .errors import ConfigError

REPEAT_MAX = 64  # tokens per repeated block at most (transformer-lens's demos use ~50)
TEXT_SEQ_MAX = 128  # tokens per text sequence at most


@dataclass(frozen=True)
class TokenBatch:
    """Token sequences with the name of the source they came from (`evaluator`)."""

    tokens: Int[Tensor, "n pos"]
    evaluator: str
    first: int = 0  # position of the first real token (1 after a BOS): earlier positions are not scored
    period: int | None = None  # repeated tokens: the block length L (the second copy starts at first + L)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: str) -> "TokenBatch":
        return replace(self, tokens=self.tokens.to(device))


@dataclass(frozen=True)
class ModelShape:
    """What a source needs to know of the model: vocabulary, context length, BOS token."""

    d_vocab: int
    n_ctx: int
    bos: int | None


def parse(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in ("repeated", "tokens", "text") or (kind != "repeated" and not arg):
        raise ConfigError(f"unknown data source {spec!r}: use repeated, repeated:L, tokens:FILE.npy or text:FILE.txt")
    return kind, arg


def source_key(spec: str) -> str:
    """What keys a source in the analysis cache: its spec, and the content of its file if it reads one."""
    kind, arg = parse(spec)
    if kind == "repeated":
        return spec
    path = Path(arg)
    if not path.is_file():
        raise ConfigError(f"data source file not found: {path}")
    return f"{kind}:{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def repeated_tokens(shape: ModelShape, n: int, seed: int, length: int | None = None) -> TokenBatch:
    """n sequences [BOS] + r + r, r uniform over the vocabulary (BOS left out of it), |r| = length."""
    first = 0 if shape.bos is None else 1
    most = (shape.n_ctx - first) // 2
    length = min(REPEAT_MAX, most) if length is None else length
    if not 2 <= length <= most:
        raise ConfigError(f"repeated:{length} does not fit: the model's context of {shape.n_ctx} tokens holds "
                          f"blocks of 2 to {most}")
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(shape.d_vocab - (shape.bos is not None), (n, length), generator=g)
    if shape.bos is not None:
        block = block + (block >= shape.bos).long()  # skip the BOS id
    tokens = torch.cat([block, block], 1)
    if shape.bos is not None:
        tokens = torch.cat([torch.full((n, 1), shape.bos), tokens], 1)
    name = "repeated_tokens" if length == min(REPEAT_MAX, most) else f"repeated:{length}"
    return TokenBatch(tokens, name, first, period=length)


def token_file(path: Path, shape: ModelShape, n: int) -> TokenBatch:
    """The first n rows of a .npy integer array [rows, T] (never unpickled)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read token file {path}: {str(e).splitlines()[0]}") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"token file {path} must hold a 2-D integer array [n, T], got {array.dtype} "
                          f"{list(array.shape)}")
    if array.shape[1] > shape.n_ctx or array.shape[1] < 2:
        raise ConfigError(f"token file {path}: sequences of {array.shape[1]} tokens; the model takes 2 to "
                          f"{shape.n_ctx}")
    if array.size and (array.min() < 0 or array.max() >= shape.d_vocab):
        raise ConfigError(f"token file {path} holds ids outside the vocabulary 0..{shape.d_vocab - 1}")
    return TokenBatch(torch.from_numpy(array[:n].astype(np.int64)), f"tokens:{path.name}")


def text_file(path: Path, tokenizer, shape: ModelShape, n: int) -> TokenBatch:
    """A text cut into up to n sequences of the same length by the checkpoint's tokenizer."""
    if tokenizer is None:
        raise ConfigError(f"text source {path} needs a tokenizer, and the checkpoint folders have none "
                          "(tokenizer.json): use repeated or tokens:FILE.npy")
    try:
        ids = tokenizer(path.read_text(encoding="utf-8"))["input_ids"]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read text source {path}: {e}") from None
    length = min(TEXT_SEQ_MAX, shape.n_ctx)
    rows = min(n, len(ids) // length)
    if rows < 1:
        raise ConfigError(f"text source {path} has {len(ids)} tokens, fewer than one sequence of {length}")
    return TokenBatch(torch.tensor(ids[: rows * length]).view(rows, length), f"text:{path.name}")


def token_batches(spec: str, shape: ModelShape, n: int, seed: int, tokenizer=None) -> dict[str, TokenBatch]:
    """The source's batch, by its evaluator name."""
    kind, arg = parse(spec)
    if kind == "repeated":
        if arg and not arg.isdigit():
            raise ConfigError(f"repeated:L takes a block length, got {arg!r}")
        batch = repeated_tokens(shape, n, seed, int(arg) if arg else None)
    elif kind == "tokens":
        batch = token_file(Path(arg), shape, n)
    else:
        batch = text_file(Path(arg), tokenizer, shape, n)
    return {batch.evaluator: batch}
