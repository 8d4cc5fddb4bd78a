"""Contrastive tasks: the data that names a behaviour for circuit discovery.

A contrast holds pairs of prompts, a clean one and a corrupted one, with the answer the clean prompt should give and
a wrong answer, read at one position per pair. The behaviour's metric is the logit difference answer - wrong at that
position (or the probability difference); a circuit is the part of the model that carries the clean-minus-corrupted
difference of that metric.

Three sources build one (sources.py names and dispatches them):
- `contrast:FILE.npz`: token ids, arrays `clean` [n, T], `corrupted` [n, T], `answer` [n], `wrong` [n] and an
  optional `position` [n] (default T - 1, the last position);
- `contrast:FILE.jsonl`: one object per line, `{"clean": text, "corrupted": text, "answer": str, "wrong": str}`,
  tokenised by the checkpoint's tokenizer; the answer is read after the clean prompt's last token. All pairs of a
  file tokenise to one length (a line that differs is an error naming it: right-padding would put pad tokens
  into the clean prompts the other token analyses score);
- `induction`: repeated random tokens, the first copy resampled in the corrupted prompt (`induction_pairs`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import ConfigError


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


def contrasts(batches: dict) -> dict[str, ContrastBatch]:
    """The contrastive pairs among a run's evaluation batches (`TokenBatch.contrast`), by evaluator name."""
    return {name: b.contrast for name, b in batches.items() if getattr(b, "contrast", None) is not None}


def answer_logits(logits: Float[Tensor, "n pos vocab"] | Float[Tensor, "n vocab"],
                  batch: ContrastBatch) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """(answer, wrong) columns of the logits at each pair's position (logits [n, vocab] are read as already there)."""
    rows = torch.arange(len(batch), device=logits.device)
    at = logits[rows, batch.position] if logits.ndim == 3 else logits
    return at[rows, batch.answer], at[rows, batch.wrong]


def logit_diff(logits: Float[Tensor, "n pos vocab"] | Float[Tensor, "n vocab"],
               batch: ContrastBatch) -> Float[Tensor, " n"]:
    """logit[answer] - logit[wrong] at each pair's position."""
    answer, wrong = answer_logits(logits, batch)
    return answer - wrong


def prob_diff(logits: Float[Tensor, "n pos vocab"] | Float[Tensor, "n vocab"],
              batch: ContrastBatch) -> Float[Tensor, " n"]:
    """p(answer) - p(wrong) at each pair's position (softmax over the whole vocabulary)."""
    rows = torch.arange(len(batch), device=logits.device)
    at = logits[rows, batch.position] if logits.ndim == 3 else logits
    probs = at.softmax(-1)
    return probs[rows, batch.answer] - probs[rows, batch.wrong]


def induction_pairs(clean: Int[Tensor, "n pos"], fresh: Int[Tensor, "n period"], first: int,
                    evaluator: str) -> ContrastBatch:
    """Induction pairs from repeated tokens `clean` = [BOS] r r (the first copy starts at `first`) and a fresh block
    r' of r's length: corrupted = [BOS] r' r. The metric is read at the second-to-last position, which holds r[L-2]:
    the answer is the clean next token r[L-1], the wrong one r'[L-1], what induction predicts from the corrupted
    first copy. Only a path that reads the first copy tells them apart (callers draw r'[L-1] != r[L-1])."""
    n, T = clean.shape
    period = fresh.shape[1]
    corrupted = clean.clone()
    corrupted[:, first:first + period] = fresh
    return ContrastBatch(clean, corrupted, answer=clean[:, -1], wrong=fresh[:, -1],
                         position=torch.full((n,), T - 2), evaluator=evaluator)


def load_npz(path: Path, d_vocab: int, n_ctx: int, n: int) -> ContrastBatch:
    """The first n pairs of a .npz of token ids (never unpickled), every shape, id and position checked."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"cannot read contrast file {path}: {str(e).splitlines()[0]}") from None
    missing = [k for k in ("clean", "corrupted", "answer", "wrong") if k not in arrays]
    if missing:
        raise ConfigError(f"contrast file {path} lacks array(s) {', '.join(missing)} (has {', '.join(arrays)})")
    for name, a in arrays.items():
        if name in ("clean", "corrupted", "answer", "wrong", "position") and not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"contrast file {path}: {name} must hold integers, got {a.dtype}")
    clean = arrays["clean"]
    if clean.ndim != 2 or clean.shape[0] < 1:
        raise ConfigError(f"contrast file {path}: clean must be [n, T] with n >= 1, got {list(clean.shape)}")
    rows, T = clean.shape
    if not 1 <= T <= n_ctx:
        raise ConfigError(f"contrast file {path}: prompts of {T} tokens; the model takes 1 to {n_ctx}")
    position = arrays.get("position", np.full(rows, T - 1))
    want = {"corrupted": (rows, T), "answer": (rows,), "wrong": (rows,), "position": (rows,)}
    got = {**arrays, "position": position}
    for name, shape in want.items():
        if got[name].shape != shape:
            raise ConfigError(f"contrast file {path}: {name} is {list(got[name].shape)}, clean {list(clean.shape)} "
                              f"wants {list(shape)}")
    for name in ("clean", "corrupted", "answer", "wrong"):
        a = arrays[name]
        if a.min() < 0 or a.max() >= d_vocab:
            raise ConfigError(f"contrast file {path}: {name} holds ids outside the vocabulary 0..{d_vocab - 1}")
    if position.min() < 0 or position.max() >= T:
        raise ConfigError(f"contrast file {path}: position outside the prompts' 0..{T - 1}")
    t = {k: torch.from_numpy(np.asarray(v[:n]).astype(np.int64)) for k, v in got.items()}
    return ContrastBatch(t["clean"], t["corrupted"], t["answer"], t["wrong"], t["position"], f"contrast:{path.name}")


def load_jsonl(path: Path, tokenizer, n_ctx: int, n: int) -> ContrastBatch:
    """The first n pairs of a JSON-lines file of texts, tokenised by the checkpoint's tokenizer; the answer and the
    wrong answer must be one token each (written as they follow the prompt, e.g. " Mary" with its space)."""
    if tokenizer is None:
        raise ConfigError(f"contrast file {path} holds texts and needs a tokenizer; the checkpoint folders have none "
                          "(tokenizer.json): give token ids in a .npz instead")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read contrast file {path}: {e}") from None
    pairs: list[tuple[list[int], list[int], int, int]] = []
    for number, line in enumerate(lines, 1):
        if len(pairs) == n:
            break
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} is not JSON: {e.msg}") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str)
                                                   for k in ("clean", "corrupted", "answer", "wrong")):
            raise ConfigError(f"{where} must be an object with string clean, corrupted, answer and wrong")
        clean, corrupted = (tokenizer(record[k])["input_ids"] for k in ("clean", "corrupted"))
        if len(clean) != len(corrupted):
            raise ConfigError(f"{where}: clean and corrupted tokenise to {len(clean)} and {len(corrupted)} tokens; "
                              "they must match")
        if not 1 <= len(clean) <= n_ctx:
            raise ConfigError(f"{where}: a prompt of {len(clean)} tokens; the model takes 1 to {n_ctx}")
        if pairs and len(clean) != len(pairs[0][0]):
            raise ConfigError(f"{where}: {len(clean)} tokens, the file's first pair {len(pairs[0][0])}; every pair "
                              "of a file must tokenise to one length (split the file by length)")
        answers = []
        for key in ("answer", "wrong"):
            ids = tokenizer(record[key], add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ConfigError(f"{where}: {key} {record[key]!r} is {len(ids)} tokens, not one")
            answers.append(ids[0])
        pairs.append((clean, corrupted, *answers))
    if not pairs:
        raise ConfigError(f"contrast file {path} holds no pairs")
    clean, corrupted, answer, wrong = (torch.tensor(column) for column in zip(*pairs))
    return ContrastBatch(clean, corrupted, answer, wrong, torch.full((len(pairs),), clean.shape[1] - 1),
                         f"contrast:{path.name}")
