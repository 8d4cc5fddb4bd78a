"""Runs from the local Hugging Face cache (`hf:ORG/NAME`), offline, and the warning on checkpoints whose weights are
identical. The cache is built here as the hub writes it: blobs named by their content, `snapshots/<sha>/` files
linking to them, `refs/stepN` naming a snapshot; step20 serves step10's weights under another commit, as Pythia's
branches serve the final weights (its issue #205)."""
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from coopinterp.cli import app
from coopinterp.errors import CheckpointError
from coopinterp.runs import identical_checkpoints, open_run
from coopinterp.runs.identical import identical_steps

transformers = pytest.importorskip("transformers")


def tiny_neox(seed: int):
    torch.manual_seed(seed)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=23, max_position_embeddings=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))


def add_revision(repo: Path, ref: str, commit: str, folder: Path) -> Path:
    """Files of `folder` into the repo's blobs (named by content) and a snapshots/<commit>/ of links to them."""
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A cache holding org/tiny at step0, step10, step20 (= step10's weights) and main (= step20's commit)."""
    root = tmp_path_factory.mktemp("hub")
    repo, saved = root / "models--org--tiny", root / "saved"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_neox(0).save_pretrained(saved / "a", safe_serialization=True)
        tiny_neox(1).save_pretrained(saved / "b", safe_serialization=True)
    add_revision(repo, "step0", "a" * 40, saved / "a")
    add_revision(repo, "step10", "b" * 40, saved / "b")
    add_revision(repo, "step20", "c" * 40, saved / "b")
    (repo / "refs" / "main").write_text("c" * 40)
    (root / "models--org--other" / "snapshots").mkdir(parents=True)
    return root


@pytest.fixture
def cache(hub, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


def test_the_cached_revisions_open_by_step(cache):
    run = open_run("hf:org/tiny")
    assert run.steps == [0, 10, 20] and run.name == "tiny" and run.model_kinds == ("tokens",)
    assert run.folders[10] == cache / "models--org--tiny" / "snapshots" / ("b" * 40)
    assert open_run("hf:org/tiny", revisions="step0,step1\\d").steps == [0, 10]
    reopened = open_run(str(run.path), pattern=run.pattern)  # as the executors reopen a run
    assert reopened.steps == run.steps
    logits = run.model(0).bridge(torch.tensor([[1, 2, 3]]))
    want = transformers.AutoModelForCausalLM.from_pretrained(run.folders[0])(torch.tensor([[1, 2, 3]])).logits
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


def test_hf_home_names_the_cache_too(hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "hub").symlink_to(hub)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert open_run("hf:org/tiny", revisions="step20").steps == [20]


@pytest.mark.parametrize("spec, revisions, message", [
    ("hf:org/none", None, "hf:org/none is not in the Hugging Face cache at .*; it holds: org/other, org/tiny"),
    ("hf:org/tiny", "step5", "no cached revision matching 'step5'; cached: main, step0, step10, step20"),
    ("hf:org/tiny", "main", "revision main names no step"),
    ("hf:org/tiny", "step[", "bad --revisions item 'step\\['"),
    ("hf:tiny", None, "write hf:ORG/NAME"),
    ("hf:org/other", None, "no cached revision names a step"),
])
def test_missing_repos_and_revisions_are_one_line_errors(cache, spec, revisions, message):
    with pytest.raises(CheckpointError, match=message) as e:
        open_run(spec, revisions=revisions)
    assert "\n" not in str(e.value)


def test_identical_weights_are_found_by_size_then_content(cache, tmp_path):
    assert identical_checkpoints(open_run("hf:org/tiny")) == [
        "steps 10, 20 hold identical weights (one checkpoint served under 2 steps): their rows will be equal"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 1_500_000 + b"y" + b"x" * 1_499_999)  # same size and ends: only the whole hash differs
    shutil.copyfile(a, tmp_path / "c.safetensors")  # a copy, not a link: equal by its bytes
    (tmp_path / "d.safetensors").write_bytes(b"x" * 10)
    files = {step: tmp_path / f"{name}.safetensors" for step, name in zip((1, 2, 3, 4), "abcd")}
    assert identical_steps(files) == [[1, 3]]


def test_cli_info_and_analyze_of_a_cached_repo(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    info = runner.invoke(app, ["info", "hf:org/tiny"])
    assert info.exit_code == 0, info.output
    assert "checkpoints (3): 0, 10, 20" in info.output and "steps 10, 20 hold identical weights" in info.output
    out = tmp_path / "t.csv"
    result = runner.invoke(app, ["analyze", "hf:org/tiny", "--revisions", "step0,step10", "--analyses", "behavior",
                                 "--n", "2", "--no-progress", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "identical" not in result.output and out.is_file()
    assert (tmp_path / "hf:org" / "tiny" / "analysis" / "behavior").is_dir()  # the cache itself is not written
    assert not list(cache.rglob("analysis"))
    bad = runner.invoke(app, ["analyze", "hf:org/tiny", "--revisions", "step7"])
    assert bad.exit_code == 2 and "cached: main, step0, step10, step20" in bad.output
    folder = runner.invoke(app, ["info", str(tmp_path), "--revisions", "step0"])
    assert folder.exit_code == 2 and "--revisions chooses revisions of an hf:ORG/NAME run" in folder.output
