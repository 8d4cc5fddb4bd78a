"""The strategy analysis of Markov runs: mixture fits with known answers, its rows on a trained checkpoint, where it
applies, and its figure."""
import pytest
import torch

import coopinterp as ci
from coopinterp import markov, plots
from coopinterp.analysis import strategy
from coopinterp.predictors import NAMES, kl, predictors


@pytest.fixture(scope="module")
def markov_run(tmp_path_factory):
    return ci.train(ci.preset("markov-tiny"), tmp_path_factory.mktemp("strategy") / "run", progress=False,
                    device="cpu")


@pytest.fixture(scope="module")
def preds():
    task = ci.preset("markov-tiny").task
    batch = markov.make_batch(task, "markov_id", 16, 0)
    return predictors(batch.tokens, batch.chains, batch.alpha)


def test_a_known_mix_is_recovered(preds):
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    fitted, residual = strategy.fit_mixture(torch.einsum("a,antv->ntv", w, preds), preds)
    assert torch.allclose(fitted, w, atol=1e-3) and residual < 1e-8


def test_the_fit_beats_every_point_of_a_simplex_grid(preds):
    model = torch.softmax(torch.randn(preds.shape[1:], generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64), -1)
    _, residual = strategy.fit_mixture(model, preds)
    grid = torch.tensor([(a, b, c, 20 - a - b - c) for a in range(21) for b in range(21 - a)
                         for c in range(21 - a - b)], dtype=torch.float64) / 20
    on_grid = [kl(model, torch.einsum("a,antv->ntv", w, preds)).mean().item() for w in grid]
    assert residual.item() <= min(on_grid) + 1e-12


@pytest.mark.parametrize("which", range(4))
def test_a_model_that_is_one_predictor_gets_all_its_weight(preds, which):
    fitted, residual = strategy.fit_mixture(preds[which], preds)
    assert fitted[which] > 1 - 1e-6 and residual < 1e-10


def test_residual_shows_when_no_mix_explains_the_model(preds):
    V = preds.shape[-1]
    spiky = torch.nn.functional.one_hot(torch.zeros(preds.shape[1:3], dtype=torch.long), V).double() * 0.97 + 0.01
    _, residual = strategy.fit_mixture(spiky, preds)
    assert residual > 0.1


def test_rows_on_a_markov_checkpoint(markov_run):
    table = ci.analyze(markov_run, ["strategy"], steps=[markov_run.steps[-1]], n=16, progress=False)
    assert set(table.evaluator) == {"markov_id", "markov_ood"}
    for ev, g in table.groupby("evaluator"):
        w = g[g.metric == "mix_weight"]
        assert list(w.component) == list(NAMES) and w.value.sum() == pytest.approx(1.0)
        assert (g[g.metric == "kl"].value >= 0).all() and g[g.metric == "mix_residual_kl"].value.iloc[0] >= 0
        assert g[g.metric == "rel_distance"].value.between(-1, 1).all()
        assert g[g.metric == "mix_residual_kl"].value.iloc[0] <= g[g.metric == "kl"].value.min() + 1e-9
    assert "strategy" in ci.analysis.default_analyses("markov")


def test_strategy_applies_to_markov_runs_only(tiny_run):
    with pytest.raises(ci.ConfigError, match="does not apply"):
        ci.analyze(tiny_run, ["strategy"], progress=False)


def test_strategy_figure(markov_run):
    table = ci.analyze(markov_run, ["behavior", "attention", "strategy"], n=16, progress=False)
    figs, skipped = plots.figures(table)
    assert {"token_loss", "layer1_attention", "induction_heatmap"} <= set(figs)  # per-head figures read markov_id
    fig = figs["strategy_weights"]
    assert {t.name for t in fig.data} == {"unigram, retrieved", "unigram, inferred", "bigram, retrieved",
                                          "bigram, inferred", "residual KL"}
    assert "strategy_weights" not in skipped
