"""Ctrl-C at any point of training resumes to exactly the straight run: weights, Adam state, RNG and metrics.

In-process tests send a real SIGINT from inside the loop at chosen points (mid-step, mid-evaluation,
mid-checkpoint write, mid-forgetting); subprocess tests send it to `coopinterp train` from outside at a few times.
"""
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import coopinterp as ci
from coopinterp.checkpoints import load_tensors, list_checkpoints
from coopinterp.training import train_seeds
from coopinterp.training import TrainingInterrupted

training = importlib.import_module("coopinterp.training")
exemplar = importlib.import_module("coopinterp.tasks.exemplar")
multiseed = importlib.import_module("coopinterp.multiseed")


def assert_same_run(a: Path, b: Path) -> None:
    """Every checkpoint, the resume state (weights, Adam moments, RNG) and the metrics are equal, bit for bit."""
    assert list_checkpoints(a) == list_checkpoints(b)
    files = [Path("checkpoints") / f"step_{s:09d}.safetensors" for s in list_checkpoints(a)]
    for rel in [*files, Path("state/last.safetensors")]:
        (ta, ma), (tb, mb) = load_tensors(a / rel), load_tensors(b / rel)
        assert ta.keys() == tb.keys() and ma == mb, rel
        for name in ta:
            assert torch.equal(ta[name], tb[name]), (rel, name)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet"))


def sigint_on_call(obj, name: str, call: int, before: bool = False):
    """Wrap obj.name so that its `call`-th call sends this process a SIGINT (before or after doing its work)."""
    real, count = getattr(obj, name), {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        hit = count["n"] == call
        if hit and before:
            os.kill(os.getpid(), signal.SIGINT)
        out = real(*args, **kwargs)
        if hit and not before:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    return wrapped


@pytest.fixture(scope="module")
def cfg(tiny_config):
    return tiny_config.replace(train={"steps": 120, "eval_every": 40, "n_checkpoints": 4, "forgetting": "active",
                                      "forget_every": 30},
                               task={"holdout_classes": 16}, name="r")


@pytest.fixture(scope="module")
def straight(cfg, tmp_path_factory):
    return ci.train(cfg, tmp_path_factory.mktemp("straight") / "run", progress=False, device="cpu").path


# (object, attribute, call that sends SIGINT, before the call's work?): the points the old handler broke at
POINTS = {
    "after a weight update": (exemplar.SingleSeed, "train_step", 57, False),
    "inside data sampling": (exemplar, "sample_train", 58, True),
    "mid-evaluation": (exemplar, "evaluate", 2, True),
    "mid-checkpoint write": (exemplar, "save_checkpoint", 3, True),
    "mid-forgetting": (exemplar.SingleSeed, "forget", 2, False),
}


@pytest.mark.parametrize("point", POINTS)
def test_sigint_anywhere_resumes_to_the_straight_run(point, cfg, straight, tmp_path, monkeypatch):
    obj, name, call, before = POINTS[point]
    monkeypatch.setattr(obj, name, sigint_on_call(obj, name, call, before))
    with pytest.raises(TrainingInterrupted, match="interrupted at step"):
        ci.train(cfg, tmp_path / "split", progress=False, device="cpu")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    ci.train(cfg, tmp_path / "split", progress=False, device="cpu")
    assert_same_run(straight, tmp_path / "split")


def test_a_second_sigint_stops_at_once_and_the_run_still_resumes(cfg, straight, tmp_path, monkeypatch):
    real = exemplar.SingleSeed.train_step

    def twice(self, step=None):
        if self.opt.state and int(next(iter(self.opt.state.values()))["step"]) == 70:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real(self, step)
    monkeypatch.setattr(exemplar.SingleSeed, "train_step", twice)
    with pytest.raises(KeyboardInterrupt):
        ci.train(cfg, tmp_path / "split", progress=False, device="cpu")
    monkeypatch.undo()
    ci.train(cfg, tmp_path / "split", progress=False, device="cpu")  # from the evaluation at step 40
    assert_same_run(straight, tmp_path / "split")


def test_sigint_mid_step_resumes_every_seed(cfg, tmp_path, monkeypatch):
    seeds = [0, 3]
    whole = train_seeds(cfg, seeds, tmp_path / "whole", progress=False, device="cpu")
    monkeypatch.setattr(multiseed.SeedStack, "train_step",
                        sigint_on_call(multiseed.SeedStack, "train_step", 45, before=False))
    with pytest.raises(TrainingInterrupted, match="interrupted at step 45"):
        train_seeds(cfg, seeds, tmp_path / "split", progress=False, device="cpu")
    monkeypatch.undo()
    split = train_seeds(cfg, seeds, tmp_path / "split", progress=False, device="cpu")
    for a, b in zip(whole, split):
        assert_same_run(a.path, b.path)


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "coopinterp", "train", "--preset", "tiny", "--steps", "2500", "--out", str(out),
            "--no-progress", *extra]


def _interrupt_after(cmd: list[str], delay: float) -> subprocess.CompletedProcess:
    """Start `cmd`, wait until it has written its first metrics (training is under way), then `delay` seconds
    more, and send it a SIGINT as a terminal's Ctrl-C would."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = Path(cmd[cmd.index("--out") + 1])
    deadline = time.monotonic() + 120
    while not list(out.rglob("metrics.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("seeds, delays", [((), (0.3, 1.5)), (("--seeds", "0,1"), (0.8,))],
                         ids=["one seed", "two seeds"])
def test_real_sigint_to_train_resumes_bit_identically(seeds, delays, tmp_path):
    """SIGINT to a `coopinterp train` process at the given times; each resumed run equals the straight one."""
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, *seeds), check=True, capture_output=True)
    runs = [straight / "seed_0", straight / "seed_1"] if seeds else [straight]
    for delay in delays:
        out = tmp_path / f"split{delay}"
        stopped = _interrupt_after(_train_cmd(out, *seeds), delay)
        assert stopped.returncode == 130 and "interrupted at step" in stopped.stderr, stopped.stderr
        subprocess.run(_train_cmd(out, *seeds), check=True, capture_output=True)
        for run in runs:
            assert_same_run(run, out / run.relative_to(straight))
