"""coopinterp: watch in-context learning and in-weights circuits form, compete and cooperate across training.

The public names below load on first use (PEP 562), so that `import coopinterp` and the command line start fast:
torch and transformer-lens are imported only by the code that needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

_PUBLIC = {
    "Run": "runs", "open_run": "runs", "load_run": "runs",
    "RunConfig": "config", "TaskConfig": "task", "ModelConfig": "config", "TrainConfig": "config",
    "preset": "tasks", "PRESETS": "tasks", "TASKS": "tasks",
    "CoopError": "errors", "ConfigError": "errors", "CheckpointError": "errors",
    "CoopModel": "model",
    "EVALUATORS": "task", "Batch": "task", "make_batch": "task",
    "train": "training", "analyze": "analysis", "import_tl_checkpoints": "legacy",
    "run_minimal": "minimal", "summarize_minimal": "minimal", "train_seeds": "training",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'coopinterp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
