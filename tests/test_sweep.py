import json
import sys

import pytest

import coopinterp as ci
from coopinterp import spawning, sweep
from coopinterp.sweep import expand, run_sweep

SPEC = {"base": "tiny", "grid": {"task.eps": [0.3, 0.5], "train.seed": [0, 1], "train.forgetting": ["none", "active"]},
        "set": {"train.forget_every": 100}}


def _short(grid: dict) -> dict:
    return {"base": "tiny", "set": {"train.steps": 12, "train.eval_every": 6, "train.n_checkpoints": 3},
            "grid": grid}


def test_expand_names_and_values():
    runs = expand(SPEC)
    assert len(runs) == 8
    name, cfg = runs[-1]
    assert name == "eps=0.5_seed=1_forgetting=active"
    assert (cfg.task.eps, cfg.train.seed, cfg.train.forgetting, cfg.train.forget_every) == (0.5, 1, "active", 100)
    assert cfg.name == "tiny_eps=0.5_seed=1_forgetting=active" and cfg.train.steps == ci.preset("tiny").train.steps
    assert runs[0][0] == "eps=0.3_seed=0_forgetting=none"
    names = [n for n, _ in expand({"base": ci.preset("tiny").to_dict(), "grid": {"task.seed": [0], "train.seed": [1]}})]
    assert names == ["task.seed=0_train.seed=1"]
    assert [n for n, _ in expand({"base": "tiny"})] == ["tiny"]


@pytest.mark.parametrize("spec, message", [
    ({"grid": {}}, "needs a 'base'"),
    ({"base": "tiny", "grids": {}}, "unknown grid file key(s): grids"),
    ({"base": "huge"}, "unknown preset 'huge'"),
    ({"base": "tiny", "grid": {"eps": [0.1]}}, "grid key 'eps' must be"),
    ({"base": "tiny", "grid": {"task.nope": [1]}}, "unknown task config key(s): nope"),
    ({"base": "tiny", "grid": {"task.eps": []}}, "non-empty list"),
    ({"base": "tiny", "grid": {"task.eps": ["x"]}}, "task.eps must be float"),
    ({"base": "tiny", "grid": {"task.eps": [0.3, 0.3]}}, "repeats a value"),
    ({"base": "tiny", "set": {"train.forgetting": "active"}}, "needs forget_every >= 1"),
])
def test_bad_grids_are_one_line_errors(spec, message):
    with pytest.raises(ci.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(spec)


def test_pool_sweep_reports_failures_and_skips_finished(tmp_path):
    spec = _short({"train.seed": [0, 1, 2]})
    (tmp_path / "seed=2").mkdir(parents=True)
    (tmp_path / "seed=2" / "notes.txt").write_text("not a run")
    seen = []
    results = run_sweep(spec, tmp_path, workers=2, device="cpu", on_result=lambda r: seen.append(r.name))
    assert [r.name for r in results] == ["seed=0", "seed=1", "seed=2"]
    assert sorted(seen) == ["seed=0", "seed=1", "seed=2"]
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert "not empty and holds no coopinterp run" in results[2].error
    assert all(0 <= r.icl <= 1 and 0 <= r.ciwl <= 1 and r.seconds > 0 for r in results[:2])
    assert ci.load_run(tmp_path / "seed=1").config.train.seed == 1

    again = run_sweep(spec, tmp_path, workers=1, device="cpu")
    assert [r.status for r in again] == ["skipped", "skipped", "failed"]
    assert [r.icl for r in again[:2]] == [r.icl for r in results[:2]]


def test_sweep_workers_start_without_the_callers_main(tmp_path, monkeypatch):
    """The sweep's pool starts its workers as analyze()'s does (spawning.py), so a plain script without
    `if __name__ == "__main__":` is not run again in every worker."""
    started = []

    def pool(workers, mp_context):
        started.append(mp_context)
        raise RuntimeError("pool recorded")

    monkeypatch.setattr(sweep, "ProcessPoolExecutor", pool)
    with pytest.raises(RuntimeError, match="pool recorded"):
        run_sweep(_short({"train.seed": [0, 1]}), tmp_path, workers=2, device="cpu")
    assert type(started[0]) is type(spawning.spawn_context())


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ci.CoopError, match=r"pip install 'coopinterp\[ray\]'"):
        run_sweep(_short({"train.seed": [0]}), tmp_path, ray_address="local")


def test_ray_local(tmp_path):
    import ray  # noqa: F401  (in the dev extra: a missing Ray fails here instead of skipping)

    results = run_sweep(_short({"train.seed": [0, 1]}), tmp_path, ray_address="local", workers=1, device="cpu")
    assert [r.status for r in results] == ["done", "done"], results
    assert ci.load_run(tmp_path / "seed=1").steps[-1] == 12


def test_ray_local_markov_sweep(tmp_path):
    """A sweep over the Markov task's number of chains trains on a local Ray cluster into markov runs."""
    spec = {"base": "markov-tiny", "set": {"train.steps": 12, "train.eval_every": 6, "train.n_checkpoints": 3},
            "grid": {"task.n_chains": [2, 4]}}
    results = run_sweep(spec, tmp_path, ray_address="local", workers=1, device="cpu")
    assert [r.status for r in results] == ["done", "done"], results
    run = ci.load_run(tmp_path / "n_chains=4")
    assert run.config.task.kind == "markov" and run.config.task.n_chains == 4 and run.steps[-1] == 12
    assert [r.status for r in run_sweep(spec, tmp_path, device="cpu")] == ["skipped", "skipped"]


def test_cli_sweep(tmp_path):
    from typer.testing import CliRunner

    from coopinterp.cli import app

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(_short({"task.eps": [0.3, 0.5]})))
    r = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "eps=0.3" in r.stdout and "eps=0.5" in r.stdout and "icl acc" in r.stdout and "done" in r.stdout
    r = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0 and r.stdout.count("skipped") >= 2
    (tmp_path / "out" / "eps=0.3" / "run.json").write_text("{")
    r = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "failed" in r.stdout
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "none.json"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "grid file not found" in r.stderr
