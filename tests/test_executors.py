"""analyze()'s executors (coopinterp/analysis/executors.py): the same frames from each, and worker processes that
never import the caller's __main__ (a plain script without `if __name__ == "__main__":` works)."""
import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import coopinterp as ci
from coopinterp import spawning
from coopinterp.analysis import Cache, Job, executors, registry
from coopinterp.tables import concat


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> ci.Run:
    """A private copy of the session's tiny run without its analysis cache."""
    shutil.copytree(tiny_run.path, tmp_path / "tiny", ignore=shutil.ignore_patterns("analysis"))
    return ci.load_run(tmp_path / "tiny")


def _jobs(run: ci.Run, cache_dir: Path, analyses=("behavior", "attention")) -> list[Job]:
    options = {name: registry()[name].parse(None) for name in analyses}
    return [Job(path=str(run.path), device=run.device, pattern=run.pattern, step=step, options=options, n=32, seed=0,
                source=None, recompute=False, cache_dir=str(cache_dir)) for step in run.steps]


def _frames(executor: executors.Executor, jobs: list[Job]) -> pd.DataFrame:
    seen: dict[int, list[pd.DataFrame]] = {}
    executor.run(jobs, lambda step, frames: seen.__setitem__(step, frames))
    assert sorted(seen) == sorted(job.step for job in jobs)  # every job reported once
    return concat([df for job in jobs for df in seen[job.step]])


def test_job_is_a_frozen_record(run_copy, tmp_path):
    job = _jobs(run_copy, tmp_path)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.step = 1
    assert dataclasses.replace(job, step=1).step == 1


def test_serial_pool_and_ray_give_the_same_frames(run_copy, tmp_path):
    """One set of jobs through each executor, each into its own empty cache: the same tables, in full."""
    here = lambda cache_dir: executors.Here(run_copy, Cache(run_copy, 32, 0, None, cache_dir))  # noqa: E731
    serial = _frames(executors.Serial(here(tmp_path / "serial")), _jobs(run_copy, tmp_path / "serial"))
    assert set(serial.step) == set(run_copy.steps) and set(serial.analysis) == {"behavior", "attention"}

    pooled = _frames(executors.Pool(2, here(tmp_path / "pool")), _jobs(run_copy, tmp_path / "pool"))
    pd.testing.assert_frame_equal(pooled, serial)
    assert len(list((tmp_path / "pool" / "attention").iterdir())) == len(run_copy.steps)

    pytest.importorskip("ray")
    fanned = _frames(executors.RayCluster("local", 2), _jobs(run_copy, tmp_path / "ray"))
    pd.testing.assert_frame_equal(fanned, serial)
    assert len(list((tmp_path / "ray" / "attention").iterdir())) == len(run_copy.steps)


def test_choose_keeps_analyzes_rules(run_copy, tmp_path):
    jobs, here = _jobs(run_copy, tmp_path), lambda job: []
    assert isinstance(executors.choose(jobs, 1, None, here), executors.Serial)
    assert isinstance(executors.choose(jobs[:3], 2, None, here), executors.Serial)  # < two checkpoints per worker
    assert isinstance(executors.choose(jobs[:4], 2, None, here), executors.Pool)
    assert isinstance(executors.choose(jobs, 1, "local", here), executors.RayCluster)
    assert isinstance(executors.choose([], 2, "local", here), executors.Serial)  # nothing to compute: no Ray


def test_the_main_module_is_hidden_only_while_a_worker_starts():
    main = sys.modules["__main__"]
    with spawning._main_hidden():
        hidden = sys.modules["__main__"]
        assert hidden is not main and hidden.__spec__ is None and not hasattr(hidden, "__file__")
    assert sys.modules["__main__"] is main
    assert spawning.spawn_context().get_start_method() == "spawn"


# The body runs at import, with no `if __name__ == "__main__":`; it says each time it runs.
PLAIN_SCRIPT = """
import coopinterp as ci

print("script body ran", flush=True)
run = ci.load_run({path!r})
df = ci.analyze(run, ["behavior"], n=32, workers=2, progress=False)
print("rows", len(df), "steps", df.step.nunique(), flush=True)
"""


def test_an_unguarded_plain_script_analyzes_with_workers(run_copy, tmp_path):
    """A spawned worker used to run the caller's script again (spawn imports __main__ in every child): the script
    analysed the run once more in each worker, or, with enough checkpoints left to compute, died of
    BrokenProcessPool. Workers now start without the caller's main module: the body runs once, in this process."""
    assert len(run_copy.steps) >= 4  # enough uncached checkpoints for a pool with 2 workers
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(PLAIN_SCRIPT.format(path=str(run_copy.path))))
    package = str(Path(ci.__file__).parents[1])  # the coopinterp under test, whichever way it was installed
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = len(run_copy.steps) * 2 * len(ci.EVALUATORS)  # behavior: loss and accuracy per evaluator
    assert done.stdout.splitlines() == ["script body ran", f"rows {rows} steps {len(run_copy.steps)}"], done.stdout
    assert len(list((run_copy.path / "analysis" / "behavior").iterdir())) == len(run_copy.steps)
