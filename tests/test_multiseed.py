import json
import pandas as pd
import pytest
import torch

import coopinterp as ci
from coopinterp.checkpoints import load_tensors
from coopinterp.multiseed import SeedStack, stacked_logits
from coopinterp.training import parse_seeds, seed_dir, train_seeds


@pytest.fixture(scope="module")
def short(tiny_config):
    # active forgetting every 20 steps: seeds must forget independently, as single runs do
    return tiny_config.replace(train={"steps": 50, "eval_every": 25, "n_checkpoints": 4, "forgetting": "active",
                                      "forget_every": 20}, name="short")


@pytest.fixture(scope="module")
def multi(short, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi")
    return out, train_seeds(short, [0, 3], out, progress=False, device="cpu")


def _state(run):
    return load_tensors(run.path / "state" / "last.safetensors")


def test_parse_seeds():
    assert parse_seeds("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    for bad in ("3-1", "a", "0,0-2", "", "-1"):
        with pytest.raises(ci.ConfigError, match="seed list"):
            parse_seeds(bad)


def test_stacked_forward_matches_the_hooked_model(tiny_config):
    stack = SeedStack(tiny_config, [0, 1], "cpu")
    batch = ci.make_batch(tiny_config.task, "flip", 64, seed=5)
    emb = stack.w["embed.weight"][torch.arange(2)[:, None, None], batch.labels[None]]
    ex = batch.exemplars[None].expand(2, *batch.exemplars.shape)
    with torch.no_grad():
        got = stacked_logits(stack.w, tiny_config.model.n_heads, stack.eps, ex, emb)
        want = torch.stack([ci.CoopModel(tiny_config.task, tiny_config.model, seed=s)(batch) for s in (0, 1)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(want[0], want[1])


def test_each_seed_matches_its_single_seed_run(multi, short, tmp_path):
    """After 50 steps (with two forgettings) weights, Adam moments and logits agree with single-seed runs up to
    float rounding: measured max |diff| 1.2e-7 on weights, 6e-8 on Adam moments, 2.4e-6 on logits; asserted
    1e-5 / 1e-4 (after 300 steps at lr 3e-3 the runs drift apart chaotically: 3.5e-5 on weights, 2.7e-3 on logits)."""
    out, runs = multi
    batch = ci.make_batch(short.task, "train", 256, seed=1)
    for s, run in zip((0, 3), runs):
        assert run.path == seed_dir(out, s)
        meta = json.loads((run.path / "run.json").read_text())
        assert meta["seed"] == s and run.config.train.seed == s and run.config.name == "short"
        single = ci.train(short.replace(train={"seed": s}), tmp_path / f"single{s}", progress=False, device="cpu")
        assert run.steps == single.steps
        (a, meta_a), (b, meta_b) = _state(run), _state(single)
        assert a.keys() == b.keys() and meta_a == meta_b
        assert torch.equal(a["rng"], b["rng"])  # the same data stream, drawn to the same point
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(run.model(50)(batch), single.model(50)(batch), atol=1e-4, rtol=0)
        ma, mb = run.metrics, single.metrics
        assert list(ma.columns) == list(mb.columns)
        pd.testing.assert_frame_equal(ma.drop(columns="value"), mb.drop(columns="value"))
        assert (ma.value - mb.value).abs().max() < 1e-2  # acc may flip on a near-tie: 1/256 per flipped sequence
    w0, w3 = (r.model(50).weights()["embed.weight"] for r in runs)
    assert not torch.allclose(w0, w3)


def test_extending_the_seed_list_trains_only_new_seeds(short, tmp_path):
    cfg = short.replace(train={"steps": 10, "eval_every": 5, "n_checkpoints": 3})
    train_seeds(cfg, [1], tmp_path, progress=False, device="cpu")
    before = (seed_dir(tmp_path, 1) / "state" / "last.safetensors").read_bytes()
    runs = train_seeds(cfg, [1, 2], tmp_path, progress=False, device="cpu")
    assert [r.steps[-1] for r in runs] == [10, 10]
    assert (seed_dir(tmp_path, 1) / "state" / "last.safetensors").read_bytes() == before
    with pytest.raises(ci.CoopError, match="train.lr: saved 0.003, given 0.1"):
        train_seeds(cfg.replace(train={"lr": 0.1}), [1], tmp_path, progress=False, device="cpu")
    with pytest.raises(ci.ConfigError, match="distinct"):
        train_seeds(cfg, [2, 2], tmp_path, progress=False, device="cpu")
    (seed_dir(tmp_path, 2) / "state" / "last.safetensors").write_bytes(b"junk")
    with pytest.raises(ci.CheckpointError, match="seed_2/state/last.safetensors is corrupt"):
        train_seeds(cfg, [1, 2], tmp_path, progress=False, device="cpu")


def test_cli_train_seeds(tmp_path):
    from typer.testing import CliRunner

    from coopinterp.cli import app

    def cli(*args):
        return CliRunner().invoke(app, ["train", "--preset", "tiny", "--steps", "20", "--device", "cpu",
                                        "--no-progress", *args])

    r = cli("--seeds", "0,2", "--out", str(tmp_path / "s"))
    assert r.exit_code == 0, r.output
    assert "seed_0" in r.stdout and "seed_2" in r.stdout and "2 seeds trained together" in r.stdout
    assert ci.load_run(tmp_path / "s" / "seed_2").config.train.seed == 2
    r = cli("--seeds", "0", "--seed", "1", "--out", str(tmp_path / "t"))
    assert r.exit_code == 2 and "give --seed or --seeds" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("--seeds", "4-2", "--out", str(tmp_path / "t"))
    assert r.exit_code == 2 and "bad seed list '4-2'" in r.stderr


def test_stacked_forward_equals_the_bridge_in_logits_and_gradients(tiny_config):
    """On models whose every weight is random (LayerNorm and biases included), per seed."""
    from test_model import bridge_and_fast, randomised

    models = [randomised(tiny_config.task, tiny_config.model, s) for s in (1, 2)]
    ptr = {p.data_ptr() for p in models[0].parameters() if p.requires_grad}
    trainable = [k for k, v in models[0].weights().items() if v.data_ptr() in ptr]
    w = {k: torch.stack([m.weights()[k] for m in models]).requires_grad_(k in trainable) for k in models[0].weights()}
    batch = ci.make_batch(tiny_config.task, "train", 64, seed=7)
    emb = w["embed.weight"][torch.arange(2)[:, None, None], batch.labels[None]]
    logits = stacked_logits(w, tiny_config.model.n_heads, models[0].bridge.ln_final.original_component.eps,
                            batch.exemplars[None].expand(2, *batch.exemplars.shape), emb)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target.repeat(2), reduction="sum").backward()
    assert len(trainable) >= 12
    for j, m in enumerate(models):
        (lb, gb), _ = bridge_and_fast(m, batch)
        torch.testing.assert_close(logits[j].detach(), lb, atol=1e-4, rtol=1e-5)
        assert gb.keys() == set(trainable)
        for k in trainable:  # the bridge's loss is a mean over 64 sequences, the stacked one a sum
            torch.testing.assert_close(w[k].grad[j] / 64, gb[k], atol=1e-5, rtol=1e-4, msg=k)
