import argparse
import io

import einops
import pytest
import torch
from typer.testing import CliRunner

import coopinterp as ci
from coopinterp.cli import app
from coopinterp.legacy import import_tl_checkpoints


def to_legacy(weights: dict[str, torch.Tensor], cfg: ci.ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of the import: CoopModel.weights() -> HookedTransformer (TL 2.x/3.x) state dict."""
    H = cfg.n_heads
    out = {"embed.W_E": weights["embed.weight"], "pos_embed.W_pos": weights["pos_embed.weight"],
           "ln_final.w": weights["ln_final.weight"], "ln_final.b": weights["ln_final.bias"],
           "unembed.W_U": weights["unembed.weight"].T, "unembed.b_U": weights["unembed.bias"],
           "exemplar_embed.weight": weights["exemplar_embed.weight"],
           "exemplar_embed.bias": weights["exemplar_embed.bias"]}
    for l in range(cfg.n_layers):
        p = f"blocks.{l}"
        out[f"{p}.ln1.w"], out[f"{p}.ln1.b"] = weights[f"{p}.ln1.weight"], weights[f"{p}.ln1.bias"]
        for name in "QKV":
            w = weights[f"{p}.attn.{name.lower()}.weight"]
            out[f"{p}.attn.W_{name}"] = einops.rearrange(w, "(h dh) d -> h d dh", h=H)
            b = weights[f"{p}.attn.{name.lower()}.bias"]
            out[f"{p}.attn.b_{name}"] = einops.rearrange(b, "(h dh) -> h dh", h=H)
        out[f"{p}.attn.W_O"] = einops.rearrange(weights[f"{p}.attn.o.weight"], "d (h dh) -> h dh d", h=H)
        out[f"{p}.attn.b_O"] = weights[f"{p}.attn.o.bias"]
        out[f"{p}.attn.mask"] = torch.tril(torch.ones(5, 5, dtype=torch.bool))  # buffers HookedTransformer saves
        out[f"{p}.attn.IGNORE"] = torch.tensor(-1e5)
    return {k: v.clone() for k, v in out.items()}


def random_model(config: ci.RunConfig, seed: int) -> ci.CoopModel:
    """A model with every weight random (biases and LayerNorms too), so any mis-mapping shows in the logits."""
    model = ci.CoopModel(config.task, config.model)
    g = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in model.weights().items()}
    model.load_weights(weights)
    return model.eval()


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory, tiny_config):
    src = tmp_path_factory.mktemp("legacy")
    models = {}
    for step, name in ((0, "ckpt_0.pth"), (100, "ckpt_100.pth"), (2500, "model_2500.pt")):
        models[step] = random_model(tiny_config, seed=step)
        torch.save(to_legacy(models[step].weights(), tiny_config.model), src / name)
    (src / "notes.txt").write_text("not a checkpoint")
    return src, models


def test_import_roundtrip_logits(legacy_dir, tiny_config, tmp_path):
    src, models = legacy_dir
    run = import_tl_checkpoints(src, tmp_path / "run", tiny_config)
    assert run.steps == [0, 100, 2500] and run.config == tiny_config
    reloaded = ci.load_run(tmp_path / "run")
    batch = ci.make_batch(tiny_config.task, "flip", n=64, seed=0)
    for step, model in models.items():
        with torch.no_grad():
            torch.testing.assert_close(reloaded.model(step)(batch), model(batch), atol=1e-5, rtol=1e-5)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cli_import_with_pattern(legacy_dir, tiny_config, tmp_path):
    src, _ = legacy_dir
    (tmp_path / "run.json").write_text(tiny_config.to_json())
    res = CliRunner().invoke(app, ["import-tl", str(src), "--out", str(tmp_path / "run"), "--config",
                                   str(tmp_path / "run.json"), "--pattern", r"ckpt_(\d+)\.pth$"])
    assert res.exit_code == 0, res.output
    assert ci.load_run(tmp_path / "run").steps == [0, 100]
    again = CliRunner().invoke(app, ["import-tl", str(src), "--out", str(tmp_path / "run"), "--config",
                                     str(tmp_path / "run.json")])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


class Opaque:
    pass


def _legacy(tiny_config) -> dict[str, torch.Tensor]:
    return to_legacy(random_model(tiny_config, seed=1).weights(), tiny_config.model)


def _truncated(tiny_config) -> bytes:
    buf = io.BytesIO()
    torch.save(_legacy(tiny_config), buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _bad_files(tiny_config):
    missing_ln = _legacy(tiny_config)
    del missing_ln["blocks.1.ln1.w"]
    no_exemplar = _legacy(tiny_config)
    del no_exemplar["exemplar_embed.weight"]
    wrong_head_shape = _legacy(tiny_config)
    wrong_head_shape["blocks.0.attn.W_Q"] = torch.zeros(4, 32, 7)
    wrong_vocab = _legacy(tiny_config)
    wrong_vocab["embed.W_E"] = torch.zeros(17, 32)
    return {
        "corrupt": (b"\x80\x04garbage that is no torch file", "corrupt, truncated or not written by torch.save"),
        "truncated": (_truncated(tiny_config), "corrupt, truncated or not written by torch.save"),
        "opaque": ({"embed.W_E": torch.zeros(3), "obj": Opaque()}, "test_legacy.Opaque object"),
        "namespace": (argparse.Namespace(w=torch.zeros(2)), "argparse.Namespace object"),
        "string entry": ({**_legacy(tiny_config), "note": "hello"}, "non-tensor entries: note"),
        "missing key": (missing_ln, "blocks.1.ln1.weight"),
        "no exemplar": (no_exemplar, "no exemplar embedding"),
        "head shape": (wrong_head_shape, "blocks.0.attn.W_Q"),
        "vocab shape": (wrong_vocab, "embed.weight has shape (17, 32)"),
    }


@pytest.mark.parametrize("case", ["corrupt", "truncated", "opaque", "namespace", "string entry", "missing key",
                                  "no exemplar", "head shape", "vocab shape"])
def test_bad_checkpoints_give_clear_errors(case, tiny_config, tmp_path):
    content, message = _bad_files(tiny_config)[case]
    src = tmp_path / "src"
    src.mkdir()
    torch.save(_legacy(tiny_config), src / "step_0.pt")
    if isinstance(content, bytes):
        (src / "step_5.pt").write_bytes(content)
    else:
        torch.save(content, src / "step_5.pt")
    with pytest.raises(ci.CheckpointError, match="step_5.pt") as err:
        import_tl_checkpoints(src, tmp_path / "run", tiny_config)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # all or nothing: no partial run left


def test_file_names_and_output_dir_are_checked(legacy_dir, tiny_config, tmp_path):
    src, _ = legacy_dir
    with pytest.raises(ci.CoopError, match="needs a group"):
        import_tl_checkpoints(src, tmp_path / "a", tiny_config, pattern=r"ckpt_\d+")
    with pytest.raises(ci.CheckpointError, match="no legacy checkpoint files matching"):
        import_tl_checkpoints(src, tmp_path / "a", tiny_config, pattern=r"nothing_(\d+)")
    odd = tmp_path / "odd"
    odd.mkdir()
    torch.save(_legacy(tiny_config), odd / "final.pt")
    with pytest.raises(ci.CheckpointError, match="no integer in its name"):
        import_tl_checkpoints(odd, tmp_path / "a", tiny_config)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ci.CoopError, match="refusing to overwrite"):
        import_tl_checkpoints(src, tmp_path / "full", tiny_config)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_tl_checkpoints(src, empty, tiny_config, pattern=r"model_(?P<step>\d+)").steps == [2500]
