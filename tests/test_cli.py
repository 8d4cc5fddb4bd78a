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
    (("train", "--out", "x", "--device", "tpu"), "--device must be cpu or cuda"),
    (("info",), "Missing argument"),
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
    r = cli("info", str(out))
    assert r.returncode == 0 and "evaluators at step 40" in r.stdout and "ciwl" in r.stdout
