"""Ray, for work that outgrows one machine: sweeps (sweep.py) and analyses (`analyze --ray`).

`ray_session("local", n)` starts a Ray instance on this machine with n CPUs; "auto" joins the cluster this machine
belongs to (`ray start` ran here); any other address is passed to `ray.init`. Workers read and write the run's
directory, so on a real cluster it must sit on storage every node sees (the same path everywhere).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .errors import CoopError


@contextmanager
def ray_session(address: str, workers: int = 1) -> Iterator[object]:
    """The `ray` module, connected for the block (one-line error without the optional package)."""
    try:
        import ray
    except ImportError:
        raise CoopError("--ray needs the optional Ray package: pip install 'coopinterp[ray]'") from None
    if address == "local":
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise CoopError(f"cannot join the Ray cluster at {address!r}: {(str(e).splitlines() or [''])[0]}") \
                from None
    try:
        yield ray
    finally:
        ray.shutdown()
