"""Shared by the benchmarks: a busy neighbour, the machine's load, and a wall-clock timer."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Iterator

from coopinterp import threads

threads.apply()  # benchmarks measure coopinterp under its own thread policy (one thread per process)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


@contextlib.contextmanager
def busy_neighbour(enabled: bool = True) -> Iterator[None]:
    """Another process keeping one core busy for the duration (a pure-Python spin loop), as on a shared machine."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # let it get scheduled
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
