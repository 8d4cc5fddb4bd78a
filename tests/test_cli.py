import os
import subprocess
import sys

import pytest


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "coopinterp", *args], capture_output=True, text=True, **kw)


def test_help():
    r = cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "info" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("info", "/no/such/run"), "run directory not found: /no/such/run"),
    (("train", "--out", "x", "--preset", "huge"), "unknown preset 'huge'"),
    (("train", "--out", "x", "--bogus"), "No such option: --bogus"),
    (("train", "--out", "x", "--preset", "tiny", "--device", "tpu"), "--device must be cpu or cuda"),
    (("info",), "Missing argument"),
    (("analyze", "x", "--option", "llc.draws=5"), "--option llc.* applies to the llc analysis: add --analyses llc"),
    (("analyze", "x", "--option", "draws=5"), "bad --option 'draws=5': write NAME.KEY=VALUE"),
])
def test_errors_are_one_line(args, message, tmp_path):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_then_info(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--preset", "tiny", "--out", str(out), "--steps", "40", "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("info", str(out), "--check")
    assert r.returncode == 0 and "evaluators at step 40" in r.stdout and "ciwl" in r.stdout
    assert "verified: all" in r.stdout
    last = sorted((out / "checkpoints").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:-100])  # truncated: `info` must notice without --check, and go on
    r = cli("info", str(out))
    assert r.returncode == 0 and f"warning: checkpoint {last} is corrupt or truncated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "evaluators at step 40" in r.stdout


def test_help_and_info_do_not_import_transformer_lens(tmp_path):
    code = ("import sys, coopinterp.cli as c; sys.argv = ['coopinterp', '--help']\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
            "print('TL', 'transformer_lens' in sys.modules, 'torch', 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TL False torch False" in r.stdout, r.stdout[-300:]


@pytest.mark.parametrize("env, threads", [({}, 1), ({"COOPINTERP_THREADS": "2"}, 2), ({"OMP_NUM_THREADS": "2"}, 2),
                                          ({"COOPINTERP_THREADS": "1", "OMP_NUM_THREADS": "2"}, 1)])
def test_thread_policy(env, threads):
    """The CLI runs with one thread and passive OpenMP waits by default (threads.py), whether torch loads before or
    after it; the library alone leaves torch's threads as they are."""
    base = {k: v for k, v in os.environ.items() if k not in ("COOPINTERP_THREADS", "OMP_NUM_THREADS",
                                                              "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", "import torch; n = torch.get_num_threads(); import coopinterp as ci; "
                        "ci.load_run; print(torch.get_num_threads() == n)"], capture_output=True, text=True,
                       env={**base, **env})
    assert r.stdout.split() == ["True"], r.stderr[-300:]
    for order in ("import coopinterp.cli, torch", "import torch, coopinterp.cli"):
        r = subprocess.run([sys.executable, "-c", f"{order}, os; print(torch.get_num_threads(), "
                            "os.environ['OMP_WAIT_POLICY'])"], capture_output=True, text=True, env={**base, **env})
        assert r.stdout.split() == [str(threads), "PASSIVE"], (order, r.stdout, r.stderr[-300:])


def test_analyze_spreads_checkpoints_over_the_cores_by_default(monkeypatch):
    """analyze() and `coopinterp analyze` default to one worker per core this process may use;
    COOPINTERP_WORKERS overrides (the test session sets it to 1, conftest.py)."""
    from coopinterp.threads import default_workers

    monkeypatch.delenv("COOPINTERP_WORKERS")
    assert default_workers() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("COOPINTERP_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("COOPINTERP_WORKERS", "many")
    with pytest.raises(SystemExit, match="COOPINTERP_WORKERS must be a positive integer"):
        default_workers()
