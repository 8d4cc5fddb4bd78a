"""Thread policy of coopinterp's own processes: the command line, and the worker processes it starts.

A library does not change its host's threads: `import coopinterp` leaves torch as it is; the CLI applies the policy
when it starts, and coopinterp's worker processes (`analyze(workers=N)`, sweeps) apply it in each worker.

torch's default (one OpenMP thread per core, spinning while it waits) is the worst choice on a shared machine:
with one of two cores busy with another process, a 32 x 64 x 12,800 matmul took 16 ms with 2 threads against
0.8 ms with 1, and a tiny training run 161 s against 1.4 s. coopinterp's work comes in small pieces (a training
step, one checkpoint's batched interventions), where a second thread gains little even on an idle machine
(docs/speed.md), so every coopinterp process uses ONE thread and a passive OpenMP wait policy by default; to
use more cores, run several processes (`train --seeds`, `sweep --workers`).

Overrides, in order: COOPINTERP_THREADS=N; else the user's own OMP_NUM_THREADS; else 1. OMP_WAIT_POLICY is
set to PASSIVE unless the user set it.
"""
from __future__ import annotations

import os
import sys

ENV = "COOPINTERP_THREADS"
WORKERS_ENV = "COOPINTERP_WORKERS"


def _env_count(name: str) -> int | None:
    """A positive integer from the environment variable `name` (None if unset); anything else stops with a line."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise SystemExit(f"error: {name} must be a positive integer, got {value!r}") from None


def policy_threads() -> int:
    """The number of threads coopinterp runs torch with."""
    for name in (ENV, "OMP_NUM_THREADS"):
        count = _env_count(name)
        if count is not None:
            return count
    return 1


def default_workers() -> int:
    """Processes `analyze` runs at once when not told: COOPINTERP_WORKERS, else the cores this process may use."""
    count = _env_count(WORKERS_ENV)
    if count is not None:
        return count
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)


def apply() -> int:
    """Set the policy: through the environment before torch loads, or through torch if it already has."""
    threads = policy_threads()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
