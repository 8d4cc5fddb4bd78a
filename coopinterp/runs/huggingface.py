"""Hugging Face runs: a directory of checkpoints, one `save_pretrained` folder per step.

Each folder (`step1000/`, `checkpoint-1000/`, or named by a `pattern` whose first group is the step) holds a
`config.json` and safetensors weights; the step comes from the folder's name. Every checkpoint boots offline
through transformer-lens 4.x's `TransformerBridge.boot_transformers` (any architecture its bridge supports), with
Hugging Face's own loader underneath: local files only, safetensors only (a pickle checkpoint is refused, never
read), never `trust_remote_code`. The folders of one run must share one architecture and shape.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from ..sources import ModelShape, TokenBatch, source_key, token_batches
from ..tables import table
from ..token_model import TokenModel

STEP_PATTERNS = (r"step[_-]?(\d+)", r"checkpoint[_-](\d+)")
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# config.json entries that say how a folder was saved, not what the model is
VOLATILE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "use_cache")


def step_folders(run_dir: Path, pattern: str | None = None) -> dict[int, Path]:
    """step -> folder, from folder names matching `pattern` (a regex whose first group is the step) or the defaults."""
    try:
        regexes = [re.compile(pattern)] if pattern else [re.compile(p) for p in STEP_PATTERNS]
    except re.error as e:
        raise CheckpointError(f"bad --pattern {pattern!r}: {e}") from None
    found: dict[int, Path] = {}
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        for regex in regexes:
            m = regex.fullmatch(folder.name)
            if m and m.groups() and m.group(1).isdigit():
                step = int(m.group(1))
                if step in found:
                    raise CheckpointError(f"two checkpoint folders for step {step}: {found[step].name} and "
                                          f"{folder.name}")
                found[step] = folder
                break
    if not found:
        names = pattern or " or ".join(STEP_PATTERNS)
        raise CheckpointError(f"{run_dir} holds no checkpoint folders: neither run.json (a coopinterp run) nor "
                              f"folders named {names} (Hugging Face checkpoints); name them with --pattern")
    return dict(sorted(found.items()))


def weights_file(folder: Path) -> Path:
    """The folder's safetensors weights (the index of a sharded checkpoint); a pickle-only folder is refused."""
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return folder / name
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLES)
    if pickled:
        raise CheckpointError(f"{folder / pickled[0]} is a pickle checkpoint; coopinterp reads safetensors only "
                              "(save with save_pretrained(..., safe_serialization=True))")
    raise CheckpointError(f"{folder} has no model.safetensors")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def check_weights(folder: Path) -> None:
    """Every safetensors file's header reads (a truncated file's does not); no tensor is loaded."""
    path = weights_file(folder)
    files = [path]
    if path.suffix == ".json":
        try:
            files = [folder / f for f in sorted(set(json.loads(path.read_text())["weight_map"].values()))]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.metadata()
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {file} is corrupt or truncated ({str(e).splitlines()[0]})") from None


def model_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE}


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(folder: Path):
    """The folder's own tokenizer, or None."""
    if not has_tokenizer(folder):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


def ids_tokenizer(d_vocab: int):
    """A stand-in for folders without a tokenizer: token ids are the words "0" .. "d_vocab-1". The bridge wants a
    tokenizer at boot; the analyses feed it token ids and never text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {str(i): i for i in range(d_vocab)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="0")


def boot(folder: Path, device: str = "cpu") -> TokenModel:
    """One checkpoint folder as a TokenModel: Hugging Face loads the weights (offline, safetensors only, no remote
    code), the bridge wraps them with transformer-lens's hooks."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: every file is local
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    from transformer_lens.model_bridge import TransformerBridge

    hf_logging.disable_progress_bar()  # a bar per checkpoint would bury coopinterp's own progress
    check_weights(folder)
    tokenizer = load_tokenizer(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hf = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False,
                dtype=torch.float32, attn_implementation="eager")
            bridge = TransformerBridge.boot_transformers(
                str(folder), hf_model=hf, tokenizer=tokenizer or ids_tokenizer(hf.config.vocab_size),
                device=device, trust_remote_code=False)
        except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"cannot load {folder} with transformer-lens: {first[:300]}") from None
    bridge.eval().requires_grad_(False)
    return TokenModel(bridge, tokenizer)


@dataclass
class HuggingFaceRun:
    """A directory of Hugging Face checkpoint folders, one per step (runs.Run)."""

    path: Path
    folders: dict[int, Path]
    config: dict  # the first folder's config.json
    device: str = "cpu"
    pattern: str | None = None  # the --pattern the folders were found with (an hf: run: its --revisions)
    cache_size: int = 2
    _models: OrderedDict = field(default_factory=OrderedDict, repr=False)

    model_kinds = TokenModel.model_kinds

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> list[int]:
        return list(self.folders)

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or [self.config.get("model_type", "?")])[0]

    def check_step(self, step: int) -> int:
        if step not in self.folders:
            raise CheckpointError(f"run {self.path} has no checkpoint at step {step}; available: "
                                  f"{', '.join(map(str, self.steps[:40]))}")
        return step

    def seqs_seen(self, step: int) -> int:
        """Sequences trained on, where a Trainer's trainer_state.json says (batch size x step); else the step."""
        state = self.folders[step] / "trainer_state.json"
        try:
            batch = json.loads(state.read_text()).get("train_batch_size") if state.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            batch = None
        return step * int(batch) if batch else step

    def weights_file(self, step: int) -> Path:
        return weights_file(self.folders[step])

    def analysis_config(self) -> dict:
        return model_config(self.config)

    def damage(self, step: int) -> str | None:
        """The one-line error of a checkpoint whose weights do not read (a truncated file), else None."""
        try:
            check_weights(self.folders[step])
        except CheckpointError as e:
            return str(e)
        return None

    def readable(self, step: int) -> bool:
        return self.damage(step) is None

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.folders[self.steps[0]])

    @property
    def shape(self) -> ModelShape:
        c = self.config
        n_ctx = c.get("n_positions") or c.get("max_position_embeddings") or c.get("n_ctx")
        bos = c.get("bos_token_id")
        bos = bos if isinstance(bos, int) and 0 <= bos < c["vocab_size"] else None  # a default outside a small vocab
        return ModelShape(d_vocab=c["vocab_size"], n_ctx=int(n_ctx), bos=bos)

    def source_key(self, source: str | None) -> str:
        return source_key(source or "repeated")

    def batches(self, source: str | None, n: int, seed: int) -> dict[str, TokenBatch]:
        batches = token_batches(source or "repeated", self.shape, n, seed, self.tokenizer)
        return {name: b.to(self.device) for name, b in batches.items()}

    def model(self, step: int) -> TokenModel:
        self.check_step(step)
        if step not in self._models:
            self._models[step] = boot(self.folders[step], self.device)
            while len(self._models) > self.cache_size:
                self._models.popitem(last=False)
        self._models.move_to_end(step)
        return self._models[step]

    @property
    def metrics(self) -> pd.DataFrame:
        """Empty: a Hugging Face run logs no metrics coopinterp reads."""
        return table([])

    def info(self) -> dict:
        """What `coopinterp info` and the report show of the run: its architecture and first config.json."""
        return {"task": f"Hugging Face {self.architecture}", "config": {"config.json (first checkpoint)": self.config}}


def load_huggingface_run(run_dir: Path, device: str = "cpu", pattern: str | None = None) -> HuggingFaceRun:
    """Open a directory of Hugging Face checkpoint folders (`folder_run`)."""
    return folder_run(run_dir, step_folders(run_dir, pattern), device, pattern)


def folder_run(path: Path, folders: dict[int, Path], device: str = "cpu", pattern: str | None = None) -> HuggingFaceRun:
    """A run of checkpoint folders by step: every folder has a config.json of one architecture and shape, and
    safetensors weights (headers are checked when a checkpoint is used)."""
    configs = {step: read_config(folder) for step, folder in folders.items()}
    for folder in folders.values():
        weights_file(folder)
    first_step = next(iter(configs))
    first = model_config(configs[first_step])
    for step, config in configs.items():
        if model_config(config) != first:
            diff = sorted(k for k in set(first) | set(model_config(config)) if first.get(k) != config.get(k))
            raise CheckpointError(f"checkpoint folders differ in architecture or shape: {folders[step].name} vs "
                                  f"{folders[first_step].name} ({', '.join(diff[:4])})")
    if "vocab_size" not in first:
        raise CheckpointError(f"{folders[first_step] / 'config.json'} has no vocab_size: not a language model config")
    return HuggingFaceRun(path, folders, configs[first_step], device=device, pattern=pattern)
