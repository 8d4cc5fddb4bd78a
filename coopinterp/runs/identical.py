"""Checkpoints that hold identical weights (a hub that serves the final weights under many step names, Pythia's
issue #205): found from the weight files alone, without loading a tensor. Checkpoints are grouped by file size;
within a group, files that resolve to one path (the hub cache links revisions' files to shared blobs) are the same
without reading them, and the others are told apart by a hash of their first and last MiB, then, where that
agrees, by a hash of the whole file."""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Hashable, Iterable

SAMPLE = 1 << 20  # bytes read from each end for the quick hash


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the file itself, or the shards a sharded index names."""
    if path.suffix != ".json":
        return [path]
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return [path]  # a corrupt index: its own bytes stand for it (damage() names it)
    return [path.parent / shard for shard in shards]


def quick_hash(path: Path) -> str:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(SAMPLE)
        f.seek(max(size - SAMPLE, 0))
        return hashlib.sha256(head + f.read(SAMPLE)).hexdigest()


def full_hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def refine(groups: Iterable[list[int]], key: Callable[[int], Hashable]) -> list[list[int]]:
    """Split each group of steps by `key`, keeping the parts of two or more."""
    out = []
    for group in groups:
        parts = defaultdict(list)
        for step in group:
            parts[key(step)].append(step)
        out += [part for part in parts.values() if len(part) > 1]
    return out


def identical_steps(files: dict[int, Path]) -> list[list[int]]:
    """Groups (sorted, two or more steps each) of checkpoints whose weight files hold the same bytes; `files` maps
    each step to its weights file (`Run.weights_file`). An unreadable file is in no group."""
    shards = {step: tuple(p.resolve() for p in weight_files(path)) for step, path in files.items()}
    readable = [step for step, paths in shards.items() if all(p.is_file() for p in paths)]
    out = []
    for group in refine([readable], lambda step: tuple(p.stat().st_size for p in shards[step])):
        distinct = set(shards[step] for step in group)
        key = {d: d for d in distinct}  # one set of files under every step: identical without reading them
        if len(distinct) > 1:
            quick = {d: tuple(map(quick_hash, d)) for d in distinct}
            clash = Counter(quick.values())
            key = {d: tuple(map(full_hash, d)) if clash[quick[d]] > 1 else quick[d] for d in distinct}
        out += refine([group], lambda step: key[shards[step]])
    return sorted(sorted(g) for g in out)


def describe(groups: list[list[int]]) -> list[str]:
    """One warning line per group of identical checkpoints."""
    return [f"steps {', '.join(map(str, g))} hold identical weights (one checkpoint served under {len(g)} steps): "
            "their rows will be equal" for g in groups]
