"""Hugging Face runs from the local hub cache: `hf:ORG/NAME` opens the revisions of a model repository that the
cache holds, Pythia-style (`refs/step1000` naming a `snapshots/<sha>/` folder), offline: the cache is read through
huggingface_hub's `scan_cache_dir`, never the network, and each snapshot folder then opens as a checkpoint folder
(huggingface.py: safetensors only, never remote code).

Revisions are the cache's refs whose names carry a step (`step1000`, `step_1000`, `checkpoint-1000`). `revisions`
chooses among them: comma-separated regular expressions, each matched against whole revision names (a plain name
such as `step1000` matches itself), e.g. `step1000,step2000` or `step\\d000`; each must match at least one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError
from .huggingface import STEP_PATTERNS, HuggingFaceRun, folder_run

PREFIX = "hf:"


def is_hub_spec(path: str | Path) -> bool:
    return str(path).startswith(PREFIX)


def cache_dir() -> Path:
    """The hub cache, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's
    default), so that a cache named after import is the one read."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def revision_step(name: str) -> int | None:
    for pattern in STEP_PATTERNS:
        if m := re.fullmatch(pattern, name):
            return int(m.group(1))
    return None


def cached_revisions(repo_id: str) -> dict[str, Path]:
    """Revision name -> snapshot folder of every ref the cache holds for the model repository `repo_id`; a repo not
    in the cache is a one-line error naming the models it holds."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    root = cache_dir()
    try:
        repos = [r for r in scan_cache_dir(root).repos if r.repo_type == "model"]
    except CacheNotFound:
        raise CheckpointError(f"{PREFIX}{repo_id}: no Hugging Face cache at {root} (set HF_HUB_CACHE or HF_HOME)") \
            from None
    repo = next((r for r in repos if r.repo_id == repo_id), None)
    if repo is None:
        held = ", ".join(sorted(r.repo_id for r in repos)) or "no models"
        raise CheckpointError(f"{PREFIX}{repo_id} is not in the Hugging Face cache at {root}; it holds: {held}")
    return {name: Path(rev.snapshot_path) for name, rev in sorted(repo.refs.items())}


def hub_folders(repo_id: str, revisions: str | None = None) -> dict[int, Path]:
    """step -> snapshot folder of the chosen revisions (default: every cached one whose name carries a step)."""
    cached = cached_revisions(repo_id)
    held = ", ".join(cached) or "none"
    if revisions is None:
        chosen = [name for name in cached if revision_step(name) is not None]
        if not chosen:
            raise CheckpointError(f"{PREFIX}{repo_id}: no cached revision names a step (stepN); cached: {held}")
    else:
        chosen = []
        for item in (i.strip() for i in revisions.split(",") if i.strip()):
            try:
                regex = re.compile(item)
            except re.error as e:
                raise CheckpointError(f"bad --revisions item {item!r}: {e}") from None
            hits = [name for name in cached if regex.fullmatch(name)]
            if not hits:
                raise CheckpointError(f"{PREFIX}{repo_id} has no cached revision matching {item!r}; cached: {held}")
            chosen += [h for h in hits if h not in chosen]
        if not chosen:
            raise CheckpointError(f"--revisions {revisions!r} names no revision; cached: {held}")
    folders: dict[int, Path] = {}
    names: dict[int, str] = {}
    for name in chosen:
        step = revision_step(name)
        if step is None:
            raise CheckpointError(f"{PREFIX}{repo_id} revision {name} names no step (stepN or checkpoint-N)")
        if step in folders:
            raise CheckpointError(f"{PREFIX}{repo_id}: revisions {names[step]} and {name} are both step {step}")
        folders[step], names[step] = cached[name], name
    return dict(sorted(folders.items()))


def load_hub_run(spec: str, device: str = "cpu", revisions: str | None = None) -> HuggingFaceRun:
    """The run `hf:ORG/NAME` of the cached revisions (all with a step, or those `revisions` names). Its path is the
    spec itself, so its analysis tables go to ./hf:ORG/NAME/analysis/ (the hub cache is never written)."""
    repo_id = spec[len(PREFIX):].strip("/")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{spec!r}: write hf:ORG/NAME, e.g. hf:EleutherAI/pythia-70m")
    return folder_run(Path(PREFIX + repo_id), hub_folders(repo_id, revisions), device, revisions)
