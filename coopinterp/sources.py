"""Evaluation data for token models: where an outside run's analyses read their sequences from.

A source is named by a short spec, and that name is the table's `evaluator` column:
- `repeated` or `repeated:L`: random tokens, each sequence a random block of L tokens followed by the same block
  again (after the model's BOS token when its config has one) — transformer-lens's convention for finding
  induction and previous-token heads. The default; L fits the model's context and vocabulary.
- `tokens:PATH`: a user's token ids, a `.npy` integer array [n, T].
- `text:PATH`: a UTF-8 text file cut into sequences by the checkpoint's own tokenizer (its folder must have one).
- `induction` or `induction:L`: contrastive pairs (contrast.py) whose clean prompts are exactly `repeated`'s (same
  seed, same L) and whose corrupted prompts resample the first copy; evaluator `induction` (`induction:L` when L
  is given and not the default).
- `contrast:PATH`: contrastive pairs from a `.npz` of token ids or a `.jsonl` of texts (contrast.py); evaluator
  `contrast:NAME`, NAME the file's name.

A contrastive source gives every token analysis its clean prompts as a `TokenBatch`, with the pairs attached
(`TokenBatch.contrast`), so analyses that read sequences run on the clean prompts and circuit analyses read the
pairs (`contrast.contrasts(batches)`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from .contrast import ContrastBatch, induction_pairs, load_jsonl, load_npz
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
    contrast: ContrastBatch | None = None  # a contrastive source's pairs (`tokens` are their clean prompts)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: str) -> "TokenBatch":
        return replace(self, tokens=self.tokens.to(device),
                       contrast=None if self.contrast is None else self.contrast.to(device))


@dataclass(frozen=True)
class ModelShape:
    """What a source needs to know of the model: vocabulary, context length, BOS token."""

    d_vocab: int
    n_ctx: int
    bos: int | None


KINDS = "repeated, repeated:L, tokens:FILE.npy, text:FILE.txt, induction, induction:L or contrast:FILE.npz|.jsonl"
FILE_KINDS = ("tokens", "text", "contrast")


def parse(spec: str) -> tuple[str, str]:
    """(kind, argument) of a source spec; an unknown kind, a file kind without its file, a block length that is not
    a number or a contrast file of another suffix is a one-line ConfigError."""
    kind, _, arg = spec.partition(":")
    if kind not in ("repeated", "induction", *FILE_KINDS) or (kind in FILE_KINDS and not arg):
        raise ConfigError(f"unknown data source {spec!r}: use {KINDS}")
    if kind in ("repeated", "induction") and arg and not arg.isdigit():
        raise ConfigError(f"{kind}:L takes a block length, got {arg!r}")
    if kind == "contrast" and Path(arg).suffix not in (".npz", ".jsonl"):
        raise ConfigError(f"contrast source {arg} must be a .npz of token ids or a .jsonl of texts")
    return kind, arg


def source_key(spec: str) -> str:
    """What keys a source in the analysis cache: its spec, and the content of its file if it reads one."""
    kind, arg = parse(spec)
    if kind not in FILE_KINDS:
        return spec
    path = Path(arg)
    if not path.is_file():
        raise ConfigError(f"data source file not found: {path}")
    return f"{kind}:{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def block_length(shape: ModelShape, length: int | None, kind: str = "repeated") -> int:
    """The repeated block's length L: `length` checked against the context, or the default (as long as fits, at
    most REPEAT_MAX)."""
    most = (shape.n_ctx - (shape.bos is not None)) // 2
    length = min(REPEAT_MAX, most) if length is None else length
    if not 2 <= length <= most:
        raise ConfigError(f"{kind}:{length} does not fit: the model's context of {shape.n_ctx} tokens holds "
                          f"blocks of 2 to {most}")
    return length


def random_block(shape: ModelShape, n: int, length: int, g: torch.Generator) -> Int[Tensor, "n length"]:
    """n blocks of `length` tokens uniform over the vocabulary, the BOS id left out."""
    block = torch.randint(shape.d_vocab - (shape.bos is not None), (n, length), generator=g)
    return block if shape.bos is None else block + (block >= shape.bos).long()


def repeated_tokens(shape: ModelShape, n: int, seed: int, length: int | None = None) -> TokenBatch:
    """n sequences [BOS] + r + r, r uniform over the vocabulary (BOS left out of it), |r| = length."""
    return _repeated(shape, n, torch.Generator().manual_seed(seed), block_length(shape, length), "repeated_tokens",
                     "repeated")


def _repeated(shape: ModelShape, n: int, g: torch.Generator, length: int, default_name: str,
              kind: str) -> TokenBatch:
    block = random_block(shape, n, length, g)
    tokens = torch.cat([block, block], 1)
    if shape.bos is not None:
        tokens = torch.cat([torch.full((n, 1), shape.bos), tokens], 1)
    name = default_name if length == block_length(shape, None) else f"{kind}:{length}"
    return TokenBatch(tokens, name, int(shape.bos is not None), period=length)


def induction_tokens(shape: ModelShape, n: int, seed: int, length: int | None = None) -> TokenBatch:
    """`repeated_tokens` (the same sequences for the same seed) carrying induction pairs: the corrupted prompts
    resample the first copy with fresh tokens whose last one differs from the clean block's (contrast.py)."""
    if shape.d_vocab - (shape.bos is not None) < 2:
        raise ConfigError("induction pairs need a vocabulary of at least two tokens besides BOS")
    g = torch.Generator().manual_seed(seed)
    clean = _repeated(shape, n, g, block_length(shape, length, "induction"), "induction", "induction")
    fresh = random_block(shape, n, clean.period, g)
    while (clash := fresh[:, -1] == clean.tokens[:, -1]).any():  # redraw a wrong answer equal to the answer
        fresh[clash, -1] = random_block(shape, int(clash.sum()), 1, g)[:, 0]
    pairs = induction_pairs(clean.tokens, fresh, clean.first, clean.evaluator)
    return replace(clean, contrast=pairs)


def contrast_tokens(path: Path, shape: ModelShape, n: int, tokenizer=None) -> TokenBatch:
    """A contrast file's pairs, their clean prompts as the batch's tokens."""
    if not path.is_file():
        raise ConfigError(f"data source file not found: {path}")
    pairs = (load_npz(path, shape.d_vocab, shape.n_ctx, n) if path.suffix == ".npz"
             else load_jsonl(path, tokenizer, shape.n_ctx, n))
    return TokenBatch(pairs.clean, pairs.evaluator, contrast=pairs)


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
        batch = repeated_tokens(shape, n, seed, int(arg) if arg else None)
    elif kind == "induction":
        batch = induction_tokens(shape, n, seed, int(arg) if arg else None)
    elif kind == "tokens":
        batch = token_file(Path(arg), shape, n)
    elif kind == "contrast":
        batch = contrast_tokens(Path(arg), shape, n, tokenizer)
    else:
        batch = text_file(Path(arg), tokenizer, shape, n)
    return {batch.evaluator: batch}
