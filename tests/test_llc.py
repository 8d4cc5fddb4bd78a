"""The LLC analysis: known answers on linear regression, the per-head restriction, and the analysis on a tiny run."""
import math
import sys

import pytest
import torch
import torch.nn as nn

import coopinterp as ci
from coopinterp.analysis import llc

pytest.importorskip("devinterp", reason="the llc analysis needs the devinterp extra")

D = 10  # regression weights


def _regression_batches(n_batches: int, batch: int, informative: int, seed: int = 0):
    """x ~ N(0, I) on the first `informative` coordinates (the rest 0), y = w* . x + N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(D, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, D, generator=g)
        x[:, informative:] = 0
        out.append((x, x @ w_star + torch.randn(batch, generator=g)))
    return w_star, out


def _nll(model: nn.Module, batch) -> torch.Tensor:
    """Gaussian negative log-likelihood with unit noise, constant dropped: the loss the LLC is defined on."""
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()


def _regression_llc(informative: int, mask: torch.Tensor | None = None) -> float:
    # nbeta >> localization, and lr * nbeta small, so the tempered posterior is the Gaussian the answer assumes
    options = llc.Options(lr=1e-5, localization=1.0, nbeta=1000.0, chains=4, draws=3000, burnin=500, batch_size=256)
    w_star, batches = _regression_batches(options.burnin + options.draws, options.batch_size, informative)
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star[None])
    excess = llc.sample_losses(model, _nll, batches, {model.weight: mask}, options)
    assert torch.equal(model.weight.detach(), w_star[None]), "the model must be left at w*"
    return float(llc.estimate(excess, options).mean())


def test_regular_linear_regression_has_llc_half_its_dimension():
    assert _regression_llc(informative=D) == pytest.approx(D / 2, rel=0.1)


def test_weights_the_loss_ignores_add_nothing():
    """A singular model: 6 of the 10 weights never reach the loss, so the LLC is rank / 2 = 2, not d / 2."""
    assert _regression_llc(informative=4) == pytest.approx(2.0, rel=0.1)


def test_a_restriction_counts_only_the_sampled_weights():
    """The refined LLC of 3 weights of a regular 10-weight model is 3 / 2."""
    mask = torch.zeros(1, D)
    mask[0, :3] = 1
    assert _regression_llc(informative=D, mask=mask) == pytest.approx(1.5, rel=0.1)


@pytest.fixture(scope="module")
def tiny_model(tiny_run) -> ci.CoopModel:
    return llc.trainable(tiny_run.model(tiny_run.steps[-1]))


def test_head_restriction_moves_exactly_that_heads_weights(tiny_model):
    cfg = tiny_model.cfg
    layer, head = 1, 2
    restriction = llc.head_restriction(tiny_model, layer, head)
    assert sum(int(m.sum()) for m in restriction.values()) == 4 * cfg.d_model * cfg.d_head
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    moved = {}

    def loss(model, batch):
        for name, p in model.named_parameters():
            moved[name] = moved.get(name, torch.zeros_like(p, dtype=torch.bool)) | (p.detach() != before[name])
        return llc.train_loss(model, batch)

    options = llc.Options(lr=1e-3, chains=2, draws=5, batch_size=8)
    llc.sample_losses(tiny_model, loss, llc.sampling_batches(tiny_model, options), restriction, options)
    attn = tiny_model.bridge.blocks[layer].attn
    rows = slice(head * cfg.d_head, (head + 1) * cfg.d_head)
    for name, p in tiny_model.named_parameters():
        expect = torch.zeros_like(p, dtype=torch.bool)
        for proj in ("q", "k", "v", "o"):
            if p is getattr(attn, proj).original_component.weight:
                if proj == "o":
                    expect[:, rows] = True
                else:
                    expect[rows] = True
        assert torch.equal(moved[name], expect), name
        assert torch.equal(p.detach(), before[name]), f"{name} not restored"


def test_options_are_checked():
    with pytest.raises(ci.ConfigError, match="unknown llc option draw"):
        llc.ANALYSIS.parse({"draw": 10})
    with pytest.raises(ci.ConfigError, match="lr must be > 0"):
        llc.Options(lr=0.0)
    assert llc.Options(batch_size=64).inverse_temperature == pytest.approx(64 / math.log(64))


def test_a_diverging_chain_is_a_one_line_error(tiny_model):
    options = llc.Options(lr=1e3, localization=0.0, chains=2, draws=50, batch_size=8)
    with pytest.raises(ci.CoopError, match="diverged.*lower the llc step size"):
        llc.sample_losses(tiny_model, llc.train_loss, llc.sampling_batches(tiny_model, options),
                          llc.full_restriction(tiny_model), options)


def test_without_devinterp_the_analysis_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "devinterp.optim", None)  # import of it fails, as when not installed
    with pytest.raises(ci.CoopError, match=r"needs devinterp: pip install 'coopinterp\[devinterp\]'"):
        llc.sgld_optimizer()


def test_llc_analysis_on_a_tiny_run(tiny_run, tmp_path, monkeypatch):
    """The analysis end to end: rows per checkpoint, chains' spread, options in the cache key, cached-only reads."""
    from coopinterp.analysis import executors

    calls = []
    compute = executors.compute
    monkeypatch.setattr(executors, "compute", lambda *a: calls.append(a[1]) or compute(*a))
    steps, cfg = tiny_run.steps[-2:], tiny_run.config.model
    options = {"llc": {"chains": 3, "draws": 8, "batch_size": 16}}
    df = ci.analyze(tiny_run, "llc", steps=steps, progress=False, cache_dir=tmp_path, options=options)
    heads = cfg.n_layers * cfg.n_heads
    per_step = df.groupby("step").metric.value_counts().unstack()
    assert (per_step[["llc", "llc_std", "init_loss"]] == 1).all().all()
    assert (per_step.rllc == heads).all() and (per_step.rllc_chain == 3 * heads).all()
    assert (per_step.llc_chain == 3).all() and df.value.notna().all()
    last = df[df.step == steps[-1]]
    chains = last[last.metric == "llc_chain"].value
    assert last[last.metric == "llc"].value.item() == pytest.approx(chains.mean())
    assert last[last.metric == "llc_std"].value.item() == pytest.approx(chains.std())
    assert calls == steps
    ci.analyze(tiny_run, "llc", steps=steps, progress=False, cache_dir=tmp_path, options=options)
    assert calls == steps, "same options: served from the cache"
    cached = ci.analyze(tiny_run, "llc", steps=steps, n=64, seed=3, progress=False, cache_dir=tmp_path,
                        cached_only=True)
    assert cached.equals(df), "its own batches: the evaluation batches' n and seed do not key its cache"
    fewer = {"llc": {**options["llc"], "heads": False}}
    again = ci.analyze(tiny_run, "llc", steps=steps[-1:], progress=False, cache_dir=tmp_path, options=fewer)
    assert calls == steps + steps[-1:] and set(again.metric) == {"llc", "llc_std", "llc_chain", "init_loss"}
    with pytest.raises(ci.ConfigError, match="analysis 'behavior' takes no options"):
        ci.analyze(tiny_run, "behavior", progress=False, cache_dir=tmp_path, options={"behavior": {}})
    with pytest.raises(ci.ConfigError, match="options given for llc, which is not among the analyses"):
        ci.analyze(tiny_run, "behavior", progress=False, cache_dir=tmp_path, options=options)


def test_calibration_script_writes_its_figures(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "analyses" / "llc_calibration.py"
    r = subprocess.run([sys.executable, str(script), "--fast", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ICL peak" in r.stdout and "whole model" in r.stdout
    written = {p.name for p in tmp_path.iterdir()}
    assert {f"llc_calibration_{t}.html" for t in ("whole_model", "L0H5", "L1H2")} <= written
