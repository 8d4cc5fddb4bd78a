import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import coopinterp as ci


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_run.path, dst)
    return dst


def test_load_run_api(tiny_run):
    run = ci.load_run(tiny_run.path)
    assert run.steps == sorted(run.steps) and run.steps[0] == 0
    model = run.model(run.steps[-1])
    assert not model.training
    b = ci.make_batch(run.config.task, "train", n=16)
    assert model(b).shape == (16, run.config.task.labels)


def test_missing_run_and_unknown_step(tmp_path, tiny_run):
    with pytest.raises(ci.CheckpointError, match="run directory not found"):
        ci.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ci.CheckpointError, match="no run.json"):
        ci.load_run(tmp_path / "empty")
    with pytest.raises(ci.CheckpointError, match=r"no checkpoint at step 7; available: 0, 1, 9"):
        tiny_run.model(7)


def test_truncated_and_corrupt_checkpoints(run_copy):
    run = ci.load_run(run_copy)
    path = run_copy / "checkpoints" / f"step_{run.steps[-1]:09d}.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ci.CheckpointError, match="corrupt or truncated"):
        run.model(run.steps[-1])
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ci.CheckpointError, match="corrupt or truncated"):
        run.model(run.steps[-1])
    assert path.read_bytes() == b"\x00garbage" * 10  # nothing overwritten


def test_shape_mismatch(run_copy):
    run = ci.load_run(run_copy)
    path = run_copy / "checkpoints" / f"step_{run.steps[1]:09d}.safetensors"
    w = run.model(run.steps[1]).weights()
    w["embed.weight"] = torch.zeros(3, 32)
    save_file({k: v.contiguous() for k, v in w.items()}, str(path))
    run = ci.load_run(run_copy)
    with pytest.raises(ci.CheckpointError, match=r"embed.weight has shape \(3, 32\), the run's config needs \(16, 32\)"):
        run.model(run.steps[1])


def test_pickle_files_refused(run_copy):
    torch.save({"x": torch.zeros(1)}, run_copy / "checkpoints" / "step_5.pt")
    with pytest.raises(ci.CheckpointError, match="never unpickles"):
        ci.load_run(run_copy)


def test_corrupt_run_json(run_copy):
    (run_copy / "run.json").write_text("{not json")
    with pytest.raises(ci.CheckpointError, match="run.json is corrupt"):
        ci.load_run(run_copy)
    (run_copy / "run.json").write_text(json.dumps({"config": {"task": {"n_clases": 3}}, "format_version": 1}))
    with pytest.raises(ci.CheckpointError, match="unknown task config key"):
        ci.load_run(run_copy)


def test_format_1_runs_load_as_label_forgetting(run_copy):
    """Runs written before forget_target existed forgot the label embedding; they load meaning just that."""
    meta = json.loads((run_copy / "run.json").read_text())
    del meta["config"]["train"]["forget_target"]
    meta["config"]["train"].update(forgetting="active", forget_every=10)
    (run_copy / "run.json").write_text(json.dumps({**meta, "format_version": 1}))
    assert ci.load_run(run_copy).config.train.forget_target == "label"
    (run_copy / "run.json").write_text(json.dumps({**meta, "format_version": 4}))
    with pytest.raises(ci.CheckpointError, match="format_version 4; this coopinterp reads 1, 2, 3"):
        ci.load_run(run_copy)


def test_format_2_run_json_holds_every_task_field(run_copy):
    """Format 2 wrote one task section with the fields of every task: a Markov run's exemplar fields (and an
    exemplar run's Markov fields) are dropped on reading, a typo still stops, and the cache key is unchanged."""
    markov = ci.preset("markov-tiny")
    exemplar_fields = {k: v for k, v in ci.TaskConfig().__dict__.items() if k not in ("seed", "kind")}
    old = {**markov.to_dict(), "task": {**exemplar_fields, **markov.to_dict()["task"]}}
    assert ci.RunConfig.from_run_json({"config": old, "format_version": 2}, "run.json") == markov
    with pytest.raises(ci.ConfigError, match="unknown task config key"):
        ci.RunConfig.from_run_json({"config": {"task": {"kind": "markov", "n_chain": 3}}, "format_version": 2},
                                   "run.json")
    from coopinterp.runs import NativeRun

    key = NativeRun(run_copy, markov, [0]).analysis_config()
    assert key == {"task": {"kind": "markov", "n_chains": 4, "n_states": 3, "markov_len": 16},
                   "model": {"n_heads": 2, "d_model": 16}}


def test_config_round_trip_and_validation(tmp_path):
    cfg = ci.preset("demo")
    assert ci.RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ci.ConfigError, match="unknown train config key"):
        ci.RunConfig.from_dict({"train": {"lrr": 1}})
    with pytest.raises(ci.ConfigError, match="train.lr must be float"):
        ci.RunConfig.from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ci.ConfigError, match="n_classes .* must be a multiple of n_labels"):
        ci.RunConfig.from_dict({"task": {"n_classes": 100, "n_labels": 7}})
    with pytest.raises(ci.ConfigError, match="family_size must be >= 1 and divide n_classes"):
        ci.RunConfig.from_dict({"task": {"n_classes": 100, "family_size": 8}})
    with pytest.raises(ci.ConfigError, match="forget_target must be one of"):
        ci.RunConfig.from_dict({"train": {"forget_target": "unembed"}})
    with pytest.raises(ci.ConfigError, match="unknown preset"):
        ci.preset("huge")
