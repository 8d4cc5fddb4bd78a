import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import coopinterp as ci
from coopinterp.checkpoints import load_tensors
from coopinterp.training import checkpoint_schedule


def test_tiny_run_learns(tiny_run):
    m = tiny_run.metrics
    train = m[(m.evaluator == "train") & (m.metric == "loss")].sort_values("step")
    assert train.value.iloc[-1] < 0.5 * train.value.iloc[0]
    assert set(m.evaluator) == set(ci.EVALUATORS)
    assert tiny_run.steps == checkpoint_schedule(tiny_run.config.train.steps, tiny_run.config.train.n_checkpoints)
    assert list(m.columns) == ["run", "step", "seqs_seen", "analysis", "metric", "evaluator", "layer", "head",
                               "src_layer", "src_head", "component", "value"]


def test_checkpoint_schedule_is_log_then_linear():
    s = checkpoint_schedule(300_000, 16)
    assert s[0] == 0 and s[-1] == 300_000 and len(s) == 16
    gaps = [b - a for a, b in zip(s, s[1:])]
    assert gaps[1] < gaps[5] < gaps[-1]


def _all_weights(run):
    out = {}
    for step in run.steps:
        w, _ = load_tensors(run.path / "checkpoints" / f"step_{step:09d}.safetensors")
        out[step] = w
    return out


@pytest.mark.parametrize("task", [{}, {"family_size": 4, "p_same_family": 0.5, "p_same_family_from": 80}],
                         ids=["plain", "family-mates-from-step-80"])
def test_extending_a_finished_run_equals_training_straight_to_its_length(tmp_path, tiny_config, task):
    short = tiny_config.replace(train={"steps": 60, "eval_every": 20, "n_checkpoints": 3,
                                       "forgetting": "active", "forget_every": 25}, task=task)
    long = short.replace(train={"steps": 100})
    straight = ci.train(long, tmp_path / "straight", progress=False, device="cpu")
    ci.train(short, tmp_path / "extended", progress=False, device="cpu")
    extended = ci.train(long, tmp_path / "extended", progress=False, device="cpu")
    assert extended.config == long and extended.steps[-1] == 100
    (a, meta_a), (b, meta_b) = (load_tensors(r.path / "state" / "last.safetensors") for r in (straight, extended))
    assert meta_a == meta_b and a.keys() == b.keys()
    for name in a:  # weights, Adam moments and the data stream's state
        assert torch.equal(a[name], b[name]), name
    pd.testing.assert_frame_equal(straight.metrics, extended.metrics)
    with pytest.raises(ci.CoopError, match="already trained to step 100; --steps 60 would shorten it"):
        ci.train(short, tmp_path / "extended", progress=False, device="cpu")


def test_training_without_a_terminal_prints_progress_lines(tmp_path):
    r = subprocess.run([sys.executable, "-m", "coopinterp", "train", "--preset", "tiny", "--steps", "60",
                        "--out", str(tmp_path / "run"), "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("train tiny: step 60/60"))
    assert "steps/s" in line and "icl" in line and "ciwl" in line


def test_train_takes_a_runs_own_run_json_and_config_exports_one(tmp_path, tiny_run):
    from typer.testing import CliRunner

    from coopinterp.cli import app

    runner = CliRunner()
    exported = tmp_path / "tiny.json"
    r = runner.invoke(app, ["config", str(tiny_run.path), "--out", str(exported)])
    assert r.exit_code == 0, r.output
    assert ci.RunConfig.from_json(exported) == tiny_run.config == ci.RunConfig.from_json(tiny_run.path / "run.json")
    r = runner.invoke(app, ["config", str(tiny_run.path), "--out", str(exported)])
    assert r.exit_code == 2 and "exists" in r.output
    r = runner.invoke(app, ["train", "--config", str(tiny_run.path / "run.json"), "--steps", "20", "--out",
                            str(tmp_path / "again"), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert ci.load_run(tmp_path / "again").config == tiny_run.config.replace(train={"steps": 20})


def test_resume_refuses_a_different_config(tmp_path, tiny_config):
    cfg = tiny_config.replace(train={"steps": 20, "eval_every": 10})
    ci.train(cfg, tmp_path / "r", progress=False, device="cpu")
    with pytest.raises(ci.CoopError, match="train.lr: saved 0.003, given 0.1"):
        ci.train(cfg.replace(train={"lr": 0.1}), tmp_path / "r", progress=False, device="cpu")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ci.CoopError, match="not empty"):
        ci.train(cfg, tmp_path / "other", progress=False, device="cpu")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("target", ["exemplar", "label"])
def test_forgetting_resets_the_chosen_embedding(tmp_path, tiny_config, target):
    cfg = tiny_config.replace(train={"steps": 30, "eval_every": 10, "n_checkpoints": 3, "forgetting": "temporary",
                                     "forget_every": 10, "forget_until": 25, "forget_target": target})
    run = ci.train(cfg, tmp_path / "f", progress=False, device="cpu")
    fresh = ci.CoopModel(cfg.task, cfg.model, seed=0)
    fresh.reset_embedding(target, torch.Generator().manual_seed(0 * 1_000_003 + 20))
    # forgetting at step 20 re-draws the embedding; after it, training moves it by only 10 steps
    trained, drawn = run.model(run.steps[-1]).weights(), fresh.weights()
    for name in ("exemplar_embed.weight", "embed.weight"):
        moved = (trained[name] - drawn[name]).abs().max()
        forgotten = name.startswith("exemplar") == (target == "exemplar")
        assert (moved < 10 * cfg.train.lr * 1.5) == forgotten, name


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from coopinterp.tables import atomic_path
    target = tmp_path / "x.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_a_run_without_resume_state_is_never_overwritten(tmp_path, tiny_config):
    cfg = tiny_config.replace(train={"steps": 20, "eval_every": 10})
    run = ci.train(cfg, tmp_path / "shipped", progress=False, device="cpu")
    (run.path / "state" / "last.safetensors").unlink()
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(ci.CoopError, match="without resume state"):
        ci.train(cfg, run.path, progress=False, device="cpu")
    assert before == {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
