"""Known-answer tests of the attention, behavior and composition analyses, analyze() and its cache, and the CLI."""
import dataclasses
import shutil

import pandas as pd
import pytest
import torch
from transformer_lens.head_detector import (compute_head_attention_similarity_score,
                                            get_previous_token_head_detection_pattern)
from typer.testing import CliRunner

import coopinterp as ci
import coopinterp.analysis as an
from coopinterp.analysis import attention, behavior, composition, executors
from coopinterp.analysis.engine import Engine
from coopinterp.cli import app
from coopinterp.tables import COLUMNS, read_table
from coopinterp.task import Batch, accuracy, loss

MINE = ["behavior", "attention", "composition"]


def set_head(model: ci.CoopModel, layer: int, head: int, name: str, W: torch.Tensor) -> None:
    """Write one head's W_Q/W_K/W_V ([d_model, d_head]) or W_O ([d_head, d_model]) in TL's convention."""
    lin = getattr(model.bridge.blocks[layer].attn, name).original_component
    dh = model.cfg.d_head
    with torch.no_grad():
        if name == "o":
            lin.weight[:, head * dh:(head + 1) * dh] = W.T
        else:
            lin.weight[head * dh:(head + 1) * dh] = W.T


@pytest.fixture
def tiny_model(tiny_config) -> ci.CoopModel:
    return ci.CoopModel(tiny_config.task, tiny_config.model, seed=0).eval().requires_grad_(False)


@pytest.fixture
def batches(tiny_config) -> dict[str, Batch]:
    return an.eval_batches(tiny_config.task, 64, seed=0)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> ci.Run:
    """A private copy of the session's tiny run, so its analysis cache starts empty."""
    shutil.copytree(tiny_run.path, tmp_path / "tiny")
    return ci.load_run(tmp_path / "tiny")


# --- attention -------------------------------------------------------------------------------------------

def test_planted_previous_token_and_self_heads(tiny_model, batches):
    """Positions alone drive layer 0: head 0 maps key position j to query position j+1, head 1 to j."""
    m, d, dh, T = tiny_model, tiny_model.cfg.d_model, tiny_model.cfg.d_head, tiny_model.task.seq_len
    with torch.no_grad():
        m.exemplar_embed.weight.zero_()
        m.exemplar_embed.bias.zero_()
        m.label_embedding.zero_()
        m.pos_embedding.copy_(10 * torch.eye(T, d))
    read = torch.eye(d, dh)  # position p -> head dim p
    shift = torch.zeros(d, dh)
    shift[torch.arange(T - 1), torch.arange(1, T)] = 1  # key position j -> head dim j + 1
    set_head(m, 0, 0, "q", read)
    set_head(m, 0, 0, "k", shift)
    set_head(m, 0, 1, "q", read)
    set_head(m, 0, 1, "k", read)
    s = attention.scores(m, batches)
    prev, self_ = s["prev_token_score", "train"][0], s["self_score", "train"][0]
    assert prev[0] > 0.999 and self_[0] < 1e-3
    assert self_[1] > 0.999 and prev[1] < 1e-3


def _pattern_hook(flip: Batch, ciwl: Batch, head: int):
    """Overwrite layer 1 `head`'s query row with a known pattern; the batch is recognised by its size."""
    def hook(pattern, hook):
        n, T = pattern.shape[0], pattern.shape[-1]
        if n not in (len(flip), len(ciwl)):
            return pattern
        batch, weights = (flip, (0.7, 0.1)) if n == len(flip) else (ciwl, (0.6, 0.3))
        chosen = attention.same_class_pairs(batch) if batch is flip else attention.true_label_pairs(batch)
        row = torch.zeros(n, T)
        label_pos = batch.label_positions()
        row[:, label_pos] = torch.where(chosen, weights[0], weights[1])
        row[:, -1] = 1 - row.sum(-1)
        pattern = pattern.clone()
        pattern[:, head, -1] = row
        return pattern
    return hook


def test_hooked_pattern_gives_known_induction_and_skip_trigram(tiny_model, tiny_config):
    task = tiny_config.task
    b = {"train": ci.make_batch(task, "train", 8), "flip": ci.make_batch(task, "flip", 12, seed=1),
         "ciwl": ci.make_batch(task, "ciwl", 16, seed=2)}
    hook = _pattern_hook(b["flip"], b["ciwl"], head=2)
    with tiny_model.bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", hook)]):
        rows = attention.rows(tiny_model, b)
    got = {(r["metric"], r["layer"], r["head"]): r["value"] for r in rows}
    assert got["induction_strength", 1, 2] == pytest.approx(0.6, abs=1e-6)
    assert got["skip_trigram_score", 1, 2] == pytest.approx(0.3, abs=1e-6)
    assert abs(got["induction_strength", 1, 1]) < 0.5  # the other heads keep their own patterns
    assert len(rows) == 4 * 2 * 4 and {r["evaluator"] for r in rows} == {"train", "flip", "ciwl"}


def test_query_contrast_averages_each_side_for_longer_contexts():
    """Four pairs, two chosen: the score is mean(chosen labels) - mean(other labels), per sequence."""
    T = 9
    patterns = torch.zeros(1, 2, 1, T, T)
    patterns[0, 0, 0, -1, [1, 3, 5, 7]] = torch.tensor([0.4, 0.2, 0.1, 0.1])
    patterns[0, 1, 0, -1, [1, 3, 5, 7]] = torch.tensor([0.0, 0.5, 0.3, 0.0])
    labels = torch.tensor([[3, 3, 1, 1], [2, 4, 4, 2]])
    batch = Batch(torch.zeros(2, 5, 4), labels, torch.tensor([3, 4]), torch.tensor([3, 4]), torch.tensor([0, 1]),
                  torch.tensor([0, 1]), "flip")
    expected = ((0.3 - 0.1) + (0.4 - 0.0)) / 2
    assert attention.query_contrast(patterns, batch, attention.same_class_pairs(batch)).item() == pytest.approx(expected)
    assert attention.query_contrast(patterns, batch, attention.true_label_pairs(batch)).item() == pytest.approx(expected)


def test_prev_and_self_scores_match_transformer_lens_head_detector(tiny_run):
    """TL's "mul" similarity of the batch-mean pattern, kept only on label rows, is the mean over those rows."""
    model = tiny_run.model(tiny_run.steps[-1])
    batch = ci.make_batch(tiny_run.config.task, "train", 128)
    s = attention.scores(model, {"train": batch, "flip": batch, "ciwl": batch})
    A = an.clean_run(model, batch).patterns.mean(1)  # layer head q k
    rows = torch.zeros(A.shape[-1], 1)
    rows[batch.label_positions()] = 1
    T = A.shape[-1]
    detectors = {"prev_token_score": get_previous_token_head_detection_pattern(torch.zeros(1, T)),
                 "self_score": torch.eye(T)}
    for metric, detection in detectors.items():
        tl = torch.tensor([[compute_head_attention_similarity_score(A[layer, head] * rows, detection,
                                                                    exclude_bos=False, exclude_current_token=False,
                                                                    error_measure="mul")
                            for head in range(A.shape[1])] for layer in range(A.shape[0])])
        torch.testing.assert_close(s[metric, "train"], tl, atol=1e-5, rtol=0)
    assert s["prev_token_score", "train"].max() > 0.1  # a trained model, not a flat pattern


def test_clean_run_equals_plain_forward_and_cache(tiny_run, batches):
    model = tiny_run.model(tiny_run.steps[-1])
    batch = batches["flip"]
    out = an.clean_run(model, batch)
    logits, cache = model.run_with_cache(batch)
    torch.testing.assert_close(Engine(model).logits(out.hidden), logits)
    torch.testing.assert_close(out.patterns[1], cache["blocks.1.attn.hook_pattern"])
    with an.shared_forwards():
        assert an.clean_run(model, batch) is an.clean_run(model, batch)
    assert an.clean_run(model, batch) is not an.clean_run(model, batch)


# --- behavior --------------------------------------------------------------------------------------------

def test_behavior_rows_are_task_accuracy_and_loss(tiny_run, batches):
    model = tiny_run.model(tiny_run.steps[-1])
    got = {(r["evaluator"], r["metric"]): r["value"] for r in behavior.rows(model, batches)}
    assert len(got) == 2 * len(ci.EVALUATORS)
    for ev, batch in batches.items():
        logits = model(batch)
        assert got[ev, "acc"] == pytest.approx(accuracy(logits, batch).item())
        assert got[ev, "loss"] == pytest.approx(loss(logits, batch).item(), rel=1e-5)
    assert got["train", "acc"] > 0.6  # the tiny run learned something


# --- composition -----------------------------------------------------------------------------------------

def _dense_scores(m: ci.CoopModel, mode: str) -> torch.Tensor:
    """The composition formula on dense per-head matrices, layer 0 -> layer 1: [src_head, dst_head]."""
    ov = m.W_V[0] @ m.W_O[0]
    dst = {"q": m.W_Q[1] @ m.W_K[1].transpose(-1, -2), "k": m.W_K[1] @ m.W_Q[1].transpose(-1, -2),
           "v": m.W_V[1] @ m.W_O[1]}[mode]
    fro = torch.linalg.matrix_norm
    return fro(ov[:, None] @ dst[None]) / (fro(ov)[:, None] * fro(dst)[None])


def test_composition_equals_dense_formula(tiny_run):
    model = tiny_run.model(tiny_run.steps[-1])
    rows = composition.rows(model, {})
    H = model.cfg.n_heads
    for mode in composition.MODES:
        got = torch.zeros(H, H)
        for r in rows:
            if r["metric"] == f"{mode}_composition":
                assert (r["src_layer"], r["layer"]) == (0, 1)
                got[r["src_head"], r["head"]] = r["value"]
        torch.testing.assert_close(got, _dense_scores(model, mode).detach(), atol=1e-5, rtol=1e-4)


def test_planted_composition(tiny_model):
    """Source OV = projection E E^T; destination reads E on one side and F (orthogonal) on the other."""
    d, dh = tiny_model.cfg.d_model, tiny_model.cfg.d_head
    E, F = torch.eye(d)[:, :dh], torch.eye(d)[:, dh:2 * dh]
    set_head(tiny_model, 0, 0, "v", E)
    set_head(tiny_model, 0, 0, "o", E.T)
    set_head(tiny_model, 1, 1, "q", E)  # query reads what head 0.0 writes, key does not
    set_head(tiny_model, 1, 1, "k", F)
    set_head(tiny_model, 1, 2, "q", F)  # key reads it, query does not
    set_head(tiny_model, 1, 2, "k", E)
    set_head(tiny_model, 1, 3, "v", F)  # value reads elsewhere
    q, k, v = (composition.scores(tiny_model, mode)[0, 0, 1] for mode in "qkv")
    assert q[1].item() == pytest.approx(dh ** -0.5) and k[1].item() == pytest.approx(0, abs=1e-7)
    assert k[2].item() == pytest.approx(dh ** -0.5) and q[2].item() == pytest.approx(0, abs=1e-7)
    assert v[3].item() == pytest.approx(0, abs=1e-7)


def test_random_baseline_is_one_over_sqrt_d_model():
    for mode in composition.MODES:
        assert composition.random_baseline(32, 8, mode) == pytest.approx(32 ** -0.5, rel=0.03)


def test_factored_score_equals_transformer_lens_composition_scores():
    """The baseline's score, computed through r x r matrices, is TL's score of the full products."""
    from transformer_lens import FactoredMatrix
    from transformer_lens.utilities import composition_scores

    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(shape, generator=g) for shape in [(5, 24, 4), (5, 4, 24), (5, 24, 4), (5, 4, 24)])
    b[0] = a[0].T  # a low-rank, non-random pair too
    expected = composition_scores(FactoredMatrix(a, b), FactoredMatrix(c, d), broadcast_dims=False)
    torch.testing.assert_close(composition.factored_score(a, b, c, d), expected, rtol=1e-5, atol=1e-6)


# --- analyze() and its cache -----------------------------------------------------------------------------

def _counting(monkeypatch) -> list:
    calls = []
    compute = executors.compute

    def counted(run, step, analysis, batches, options):
        calls.append((step, analysis))
        return compute(run, step, analysis, batches, options)
    monkeypatch.setattr(executors, "compute", counted)
    return calls


def test_analyze_rows_complete_and_cached(run_copy, monkeypatch):
    calls = _counting(monkeypatch)
    cfg, steps = run_copy.config.model, run_copy.steps
    df = ci.analyze(run_copy, MINE, n=64, progress=False)
    assert list(df.columns) == list(COLUMNS)
    assert len(calls) == len(steps) * 3 and not df.value.isna().any()
    assert set(df.run) == {run_copy.name}
    assert (df.seqs_seen == df.step * run_copy.config.train.batch_size).all()
    att = df[df.analysis == "attention"]
    assert len(att) == len(steps) * 4 * cfg.n_layers * cfg.n_heads
    assert att.groupby(["step", "metric", "layer", "head"]).size().eq(1).all()
    assert len(df[df.analysis == "behavior"]) == len(steps) * 2 * len(ci.EVALUATORS)
    comp = df[df.analysis == "composition"]
    assert len(comp) == len(steps) * 3 * (cfg.n_heads ** 2 + 1)

    again = ci.analyze(run_copy, MINE, n=64, progress=False)
    assert len(calls) == len(steps) * 3  # nothing recomputed
    pd.testing.assert_frame_equal(again, df)


def test_analyze_with_workers_equals_one_process(run_copy, tmp_path):
    serial = ci.analyze(run_copy, ["behavior", "clamping"], n=32, progress=False)
    shutil.rmtree(run_copy.path / "analysis")
    parallel = ci.analyze(run_copy, ["behavior", "clamping"], n=32, progress=False, workers=2)
    pd.testing.assert_frame_equal(parallel, serial)
    assert (run_copy.path / "analysis" / "clamping").is_dir()  # the workers filled the cache
    with pytest.raises(ci.ConfigError, match="workers must be >= 1"):
        ci.analyze(run_copy, ["behavior"], progress=False, workers=0)


def test_cache_dir_reads_the_runs_cache_and_writes_elsewhere(run_copy, tmp_path, monkeypatch):
    step = run_copy.steps[-1]
    ci.analyze(run_copy, ["behavior"], steps=[step], n=32, progress=False)  # the run's own cache
    shipped = sorted(p for p in (run_copy.path / "analysis").rglob("*") if p.is_file())
    calls = _counting(monkeypatch)
    elsewhere = tmp_path / "cache"
    ci.analyze(run_copy, ["behavior", "attention"], steps=[step], n=32, progress=False, cache_dir=elsewhere)
    assert calls == [(step, "attention")]  # behavior came from the run's cache
    assert sorted(p for p in (run_copy.path / "analysis").rglob("*") if p.is_file()) == shipped
    assert (elsewhere / "attention").is_dir() and not (elsewhere / "behavior").exists()


def test_analyze_computes_only_new_steps_and_analyses(run_copy, monkeypatch):
    calls = _counting(monkeypatch)
    ci.analyze(run_copy, ["behavior"], steps=run_copy.steps[:2], n=32, progress=False)
    ci.analyze(run_copy, ["behavior", "attention"], n=32, progress=False)
    n_steps = len(run_copy.steps)
    assert len(calls) == 2 + (n_steps - 2) + n_steps


def test_stale_or_corrupt_cache_is_recomputed(run_copy, monkeypatch):
    step = run_copy.steps[-1]
    first = ci.analyze(run_copy, ["behavior"], steps=[step], n=32, progress=False)
    calls = _counting(monkeypatch)
    other_n = ci.analyze(run_copy, ["behavior"], steps=[step], n=48, progress=False)
    assert len(calls) == 1 and not other_n.value.equals(first.value)
    bumped = dataclasses.replace(an.registry()["behavior"], version=an.registry()["behavior"].version + 1)
    monkeypatch.setitem(an.registry(), "behavior", bumped)  # the analysis declares a new version
    ci.analyze(run_copy, ["behavior"], steps=[step], n=32, progress=False)
    assert len(calls) == 2
    ci.analyze(run_copy, ["behavior"], steps=[step], n=32, progress=False, recompute=True)
    assert len(calls) == 3
    path = an.Cache(run_copy, 32, 0, None).path(step, "behavior")
    path.write_bytes(b"not parquet")
    again = ci.analyze(run_copy, ["behavior"], steps=[step], n=32, progress=False)
    assert len(calls) == 4
    pd.testing.assert_frame_equal(again, first)


def test_cache_key_follows_task_and_model_not_training_settings(run_copy):
    key = an.Cache(run_copy, 32, 0, None).config_hash
    extended = dataclasses.replace(run_copy, config=run_copy.config.replace(train={"steps": 10 * run_copy.steps[-1]}))
    assert an.Cache(extended, 32, 0, None).config_hash == key  # extending a run keeps its cache
    other = dataclasses.replace(run_copy, config=run_copy.config.replace(task={"eps": 0.9}))
    assert an.Cache(other, 32, 0, None).config_hash != key
    # Only non-default fields count: a new task field whose default keeps today's behaviour keeps every cache.
    assert "zipf_alpha" not in run_copy.analysis_config()["task"]
    assert run_copy.analysis_config()["task"]["n_classes"] == run_copy.config.task.n_classes


def test_every_analysis_module_declares_one_record():
    records = an.registry()
    assert list(records) == ["behavior", "attention", "composition", "ablation", "path_patching", "clamping",
                             "paper_checks", "llc", "automaton", "circuit", "edges", "linreg", "strategy", "trajectory"]
    assert all(r.version >= 1 and r.summary for r in records.values())
    assert [n for n, r in records.items() if r.opt_in is True] == ["llc", "circuit", "edges", "trajectory"]
    assert [n for n, r in records.items() if r.opt_in_on(("tokens",))] == ["path_patching", "llc", "circuit", "edges",
                                                                           "trajectory"]
    other_models = ("automaton", "linreg", "strategy")  # the parity, linreg and Markov tasks' own analyses
    assert an.default_analyses() == [n for n in records if n not in ("llc", "circuit", "edges", "trajectory")
                                     + other_models]


def test_options_are_typed_and_checked():
    from dataclasses import dataclass
    from typing import Literal

    from coopinterp.analysis.record import Analysis

    @dataclass(frozen=True)
    class Opts:
        mode: Literal["zero", "mean"] = "zero"
        lr: float = 1e-3
        draws: int = 10
        heads: bool = True
        nbeta: float | None = None

    rec = Analysis("mine", 1, {"exemplar": lambda model, batches, options: []}, "test", options=Opts)
    assert rec.parse(None) == {"mode": "zero", "lr": 1e-3, "draws": 10, "heads": True, "nbeta": None}
    assert rec.parse({"mode": "mean", "lr": "3e-4", "draws": "5", "heads": "false", "nbeta": "none"}) == \
        {"mode": "mean", "lr": 3e-4, "draws": 5, "heads": False, "nbeta": None}
    assert rec.parse({"lr": 1})["lr"] == 1.0
    for bad, match in [({"mode": "one"}, "mine option mode must be 'zero' or 'mean', got 'one'"),
                       ({"draws": "2.5"}, "draws must be int"), ({"heads": "maybe"}, "heads must be bool"),
                       ({"nbeta": "x"}, "nbeta must be float or None"), ({"moed": 1}, "unknown mine option moed")]:
        with pytest.raises(ci.ConfigError, match=match):
            rec.parse(bad)
    with pytest.raises(ci.ConfigError, match="takes no options"):
        an.registry()["behavior"].parse({"x": 1})


# --- CLI -------------------------------------------------------------------------------------------------

def test_cli_analyze_writes_table(run_copy, tmp_path):
    out = tmp_path / "t.csv"
    steps = ",".join(map(str, run_copy.steps[-2:]))
    r = CliRunner().invoke(app, ["analyze", str(run_copy.path), "--analyses", "behavior,attention",
                                 "--steps", steps, "--n", "32", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    df = read_table(out)
    assert set(df.analysis) == {"behavior", "attention"} and df.step.nunique() == 2
    assert "acc train" in r.output
    cached = an.Cache(run_copy, 32, 0, None).path(run_copy.steps[-1], "behavior")
    before = cached.stat().st_mtime_ns
    r = CliRunner().invoke(app, ["analyze", str(run_copy.path), "--analyses", "behavior", "--steps", steps, "--n", "32",
                                 "--out", str(out), "--no-progress", "--recompute"])
    assert r.exit_code == 0, r.output
    assert cached.stat().st_mtime_ns > before


@pytest.mark.parametrize("args, message", [
    (["--analyses", "behavior,bogus"], "unknown analysis 'bogus'"),
    (["--steps", "0,7"], "no checkpoint at step 7"),
    (["--steps", "x"], "--steps must be comma-separated integers"),
])
def test_cli_analyze_errors_are_one_line(run_copy, args, message):
    r = CliRunner().invoke(app, ["analyze", str(run_copy.path), *args, "--no-progress"])
    assert r.exit_code == 2
    assert message in r.output and len(r.output.strip().splitlines()) == 1


def test_analyze_on_a_local_ray_cluster_equals_one_process(run_copy, tmp_path):
    """Checkpoints fanned out as Ray tasks fill the same cache with the same rows (Ray is in the dev extra: this
    runs in CI)."""
    import ray  # noqa: F401  (a missing dev extra must fail here, not skip)

    serial = ci.analyze(run_copy, ["behavior", "attention"], n=32, progress=False, cache_dir=tmp_path / "one")
    fanned = ci.analyze(run_copy, ["behavior", "attention"], n=32, progress=False, cache_dir=tmp_path / "ray",
                        ray="local", workers=2)
    pd.testing.assert_frame_equal(fanned, serial)
    assert len(list((tmp_path / "ray" / "attention").iterdir())) == len(run_copy.steps)
