"""`open_run`: any training run on disk, whichever format it was saved in.

- a coopinterp run directory (run.json, checkpoints/step_*.safetensors): the built-in exemplar model;
- a directory of Hugging Face checkpoints, one `save_pretrained` folder per step (`step1000/`, `checkpoint-1000/`,
  or folders matching a `pattern`): any architecture transformer-lens's bridge boots (outside.py).

Both give a run with `name`, `path`, `kind` ("exemplar" or "tokens"), `steps`, `model(step)`, `seqs_seen(step)`
and what analyze() needs to key its cache and draw its data.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError


def open_run(path: str | Path, device: str = "cpu", pattern: str | None = None):
    """The run at `path`; a missing, empty or damaged run is a one-line CheckpointError."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"not a directory: {run_dir}")
    if (run_dir / "run.json").exists() and pattern is None:
        from .checkpoints import load_run

        return load_run(run_dir, device=device)
    from .outside import load_outside_run

    return load_outside_run(run_dir, device=device, pattern=pattern)
