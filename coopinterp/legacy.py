"""Import legacy transformer-lens `HookedTransformer` checkpoints of a compatible model as a coopinterp run.

A legacy checkpoint is a torch.save'd state dict with TL 2.x/3.x names (`blocks.0.attn.W_Q`
[heads, d_model, d_head], `unembed.W_U` [d_model, d_vocab], ...). TL 4.x's `convert_tl_checkpoint`
maps those names and per-head shapes onto the bridge's (`blocks.0.attn.q.weight`, ...). Exemplars are
continuous inputs with no TL counterpart, so each file must also carry the exemplar embedding.

Files are read with `torch.load(weights_only=True)`, which refuses to build arbitrary objects.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

from .checkpoints import checkpoint_path, save_tensors, write_run_json
from .config import RunConfig
from .errors import CheckpointError, CoopError
from .model import CoopModel
from .runs import NativeRun, load_run

LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
EXEMPLAR_KEYS = ("exemplar_embed.weight", "exemplar_embed.bias")


def checkpoint_files(src_dir: Path, pattern: str | None = None) -> dict[int, Path]:
    """Legacy checkpoint files by step.

    Without `pattern`: every .pt/.pth/.ckpt/.bin file, its step the last integer in its name.
    With `pattern`: files whose name matches the regex; its first group (or group `step`) is the step.
    """
    if not src_dir.is_dir():
        raise CheckpointError(f"legacy checkpoint directory not found: {src_dir}")
    try:
        regex = re.compile(pattern) if pattern else None
    except re.error as e:
        raise CoopError(f"--pattern {pattern!r} is not a valid regex ({e})") from None
    if regex is not None and regex.groups < 1:
        raise CoopError(f"--pattern {pattern!r} needs a group capturing the step, e.g. r'step(\\d+)\\.pt'")
    found: dict[int, Path] = {}
    for path in sorted(p for p in src_dir.iterdir() if p.is_file()):
        if regex is not None:
            m = regex.search(path.name)
            if m is None:
                continue
            text = m.group("step") if "step" in regex.groupindex else m.group(1)
        elif path.suffix in LEGACY_SUFFIXES:
            numbers = re.findall(r"\d+", path.stem)
            if not numbers:
                raise CheckpointError(f"cannot tell the step of {path.name}: no integer in its name (use --pattern)")
            text = numbers[-1]
        else:
            continue
        if not text or not text.isdigit():
            raise CheckpointError(f"--pattern captured {text!r} from {path.name}, not a step number")
        step = int(text)
        if step in found:
            raise CheckpointError(f"{found[step].name} and {path.name} both give step {step}")
        found[step] = path
    if not found:
        what = f"matching {pattern!r}" if pattern else f"ending in {', '.join(LEGACY_SUFFIXES)}"
        raise CheckpointError(f"no legacy checkpoint files {what} in {src_dir}")
    return dict(sorted(found.items()))


def read_legacy(path: Path) -> dict[str, Tensor]:
    """A flat {name: tensor} dict from a torch.save'd file, never unpickling anything but tensors."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = (f"it holds a {unsafe.group(1)} object, and coopinterp never unpickles anything but tensors"
                  if unsafe else "the file is corrupt, truncated or not written by torch.save")
        raise CheckpointError(f"cannot read legacy checkpoint {path}: {reason}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"legacy checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"legacy checkpoint {path} has non-tensor entries: {', '.join(map(str, bad[:4]))}")
    return obj


def convert_legacy(state: dict[str, Tensor], model: CoopModel, source: str,
                   exemplar_keys: tuple[str, str] = EXEMPLAR_KEYS) -> dict[str, Tensor]:
    """Legacy TL names and shapes -> `CoopModel.weights()` format, validated by loading into `model`."""
    missing = [k for k in exemplar_keys if k not in state]
    if missing:
        raise CheckpointError(f"{source} has no exemplar embedding (missing {', '.join(missing)}); a compatible "
                              "checkpoint must carry it (name its keys with --exemplar-keys)")
    tl_state = {k: v for k, v in state.items() if k not in exemplar_keys}
    # TL's own legacy loader zero-fills a missing unembedding bias; every other gap is an error.
    tl_state.setdefault("unembed.b_U", torch.zeros(model.task.labels))
    try:
        weights = convert_tl_checkpoint(tl_state, model.bridge.cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {str(e).removeprefix('convert_tl_checkpoint: ')}") from None
    weights["exemplar_embed.weight"] = state[exemplar_keys[0]]
    weights["exemplar_embed.bias"] = state[exemplar_keys[1]]
    weights = {k: v.float() for k, v in weights.items()}
    model.load_weights(weights, source=source)
    return weights


def import_tl_checkpoints(src_dir: str | Path, out_dir: str | Path, config: RunConfig | str | Path,
                          pattern: str | None = None, exemplar_keys: tuple[str, str] = EXEMPLAR_KEYS) -> NativeRun:
    """Convert a directory of legacy TL checkpoints into a new run directory, all or nothing."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    config = config if isinstance(config, RunConfig) else RunConfig.from_json(config)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CoopError(f"refusing to overwrite {out_dir}: it exists and is not an empty directory")
    files = checkpoint_files(src_dir, pattern)
    model = CoopModel(config.task, config.model, seed=config.train.seed)
    dtype = getattr(torch, config.train.checkpoint_dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build the run beside its destination and rename it into place: an error leaves nothing behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for step, path in files.items():
            weights = convert_legacy(read_legacy(path), model, str(path), exemplar_keys)
            save_tensors(checkpoint_path(tmp, step), {k: v.to(dtype) for k, v in weights.items()},
                         {"step": str(step), "seqs_seen": str(step * config.train.batch_size),
                          "format": "coopinterp", "source": path.name})
        write_run_json(tmp, config)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return load_run(out_dir)
