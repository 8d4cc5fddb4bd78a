"""Worker processes that never import the caller's main script: the spawn start method without `__main__`.

analyze()'s pool (analysis/executors.py) and sweep's pool (sweep.py) start their workers from this context, so a plain
script that calls either without `if __name__ == "__main__":` runs its body once, in its own process.
"""
from __future__ import annotations

import multiprocessing.context
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager

# Spawned workers must not import the caller's __main__. The spawn start method runs the parent's main script
# (or module) again in every child, as `__mp_main__`, so that functions pickled from __main__ resolve there: a
# plain script that calls analyze() without `if __name__ == "__main__":` then calls analyze() again in each
# worker, which either computes the whole analysis a second time or, with enough checkpoints left to compute,
# starts a pool of its own while bootstrapping, and dies (the parent's pool: BrokenProcessPool). Nothing a worker
# receives lives in __main__ (analyze's `Job`s and `run_job`, sweep's `run_one`: all in this package), so the
# pools' processes are started while sys.modules["__main__"] is a fresh empty module (no __file__, no __spec__):
# the parent reads it when it starts a child (multiprocessing.spawn.get_preparation_data, at Popen), and a child
# told of no main imports none. Guarded scripts, unguarded ones, `python -m` modules and notebooks all work the same. The swap
# lasts only while a child is launched, under a lock, so concurrent pools in other threads restore it in order.
_main_swap = threading.Lock()


@contextmanager
def _main_hidden() -> Iterator[None]:
    with _main_swap:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is None:
                del sys.modules["__main__"]
            else:
                sys.modules["__main__"] = main


class _MainlessSpawnProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _main_hidden():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _MainlessSpawnContext(multiprocessing.context.SpawnContext):
    """The spawn start method, whose children do not import the parent's __main__ (the comment above)."""

    Process = _MainlessSpawnProcess


def spawn_context() -> multiprocessing.context.BaseContext:
    """spawn, not fork: a forked child of a process that has run OpenMP code can hang; without the main module."""
    return _MainlessSpawnContext()
