"""The strategy analysis of Markov runs: mixture fits with known answers, its rows on a trained checkpoint, where it
applies, and its figure."""
from types import SimpleNamespace

import pytest
import torch

import coopinterp as ci
from coopinterp import plots
from coopinterp.tasks import markov
from coopinterp.analysis import strategy
from coopinterp.plots.strategy import PREDICTORS
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


class ExactlyOnePredictor:
    """A stand-in bridge whose next-token distribution is exactly predictor `which`'s (its logits are that
    predictor's log-probabilities), computed on whatever chunk of sequences it is given."""

    def __init__(self, which: int, chains: torch.Tensor, alpha: float):
        self.which, self.chains, self.alpha = which, chains, alpha
        self.cfg = SimpleNamespace(d_vocab=chains.shape[-1])

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return predictors(tokens, self.chains, self.alpha)[self.which].log()


def reference_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over sequences and positions of KL(p || q), by torch's own kl_div (not predictors.kl)."""
    return torch.nn.functional.kl_div(q.log(), p, reduction="none").sum(-1).mean().item()


def by_metric(rows: list[dict], ev: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        if r["evaluator"] == ev:
            out.setdefault(r["metric"], {})[r.get("component")] = r["value"]
    return out


@pytest.mark.parametrize("which", range(4))
def test_rows_of_a_model_that_is_exactly_one_predictor(which):
    """A model whose output is predictor `which`: KL 0 to it and, to each other predictor, the KL computed here
    independently; its family's relative distance at the extreme (-1 retrieved, +1 inferred), the other family's
    from the independent KLs; all the mix weight on it and no residual. In and out of distribution."""
    task = ci.preset("markov-tiny").task
    batches = {ev: markov.make_batch(task, ev, 8, 3) for ev in ("markov_id", "markov_ood")}
    chains, alpha = batches["markov_id"].chains, batches["markov_id"].alpha
    model = strategy.TokenModel(ExactlyOnePredictor(which, chains, alpha), None)
    rows = strategy.rows(model, batches)
    assert {r["evaluator"] for r in rows} == set(batches)
    for ev, batch in batches.items():
        got = by_metric(rows, ev)
        p = predictors(batch.tokens, chains, alpha)
        want = {name: reference_kl(p[which], p[a]) for a, name in enumerate(NAMES)}
        assert list(got["kl"]) == list(NAMES)
        assert got["kl"][NAMES[which]] < 1e-12
        assert all(want[a] > 1e-4 for a in NAMES if a != NAMES[which])  # the four predictors differ here
        assert got["kl"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        for family, short in (("unigram", "uni"), ("bigram", "bi")):
            ret, inf = want[f"{short}_ret"], want[f"{short}_inf"]
            assert got["rel_distance"][family] == pytest.approx((ret - inf) / (ret + inf), abs=1e-9)
        family, side = ("unigram", "bigram")[which // 2], ("ret", "inf")[which % 2]
        assert got["rel_distance"][family] == pytest.approx(-1.0 if side == "ret" else 1.0, abs=1e-9)
        assert list(got["mix_weight"]) == list(NAMES) and sum(got["mix_weight"].values()) == pytest.approx(1.0)
        assert got["mix_weight"][NAMES[which]] > 1 - 1e-6
        assert got["mix_residual_kl"][None] < 1e-10


def test_rows_on_a_markov_checkpoint(markov_run):
    """analyze's strategy rows on a trained checkpoint equal the KLs computed here from the checkpoint's own
    next-token distribution and the exact predictors, and the mix's residual is the KL of the mix it reports."""
    step = markov_run.steps[-1]
    table = ci.analyze(markov_run, ["strategy"], steps=[step], n=16, seed=0, progress=False)
    assert set(table.evaluator) == {"markov_id", "markov_ood"}
    model = markov_run.model(step)
    for ev, batch in markov_run.batches(None, 16, 0).items():
        g = table[table.evaluator == ev]
        with torch.no_grad():
            probs = model.bridge(batch.tokens).double().softmax(-1)
        p = predictors(batch.tokens, batch.chains, batch.alpha)
        kls = g[g.metric == "kl"].set_index("component").value
        want = {name: reference_kl(probs, p[a]) for a, name in enumerate(NAMES)}
        assert list(kls.index) == list(NAMES) and kls.to_dict() == pytest.approx(want, rel=1e-6, abs=1e-9)
        rel = g[g.metric == "rel_distance"].set_index("component").value
        for family, short in (("unigram", "uni"), ("bigram", "bi")):
            ret, inf = want[f"{short}_ret"], want[f"{short}_inf"]
            assert rel[family] == pytest.approx((ret - inf) / (ret + inf), abs=1e-6)
        w = g[g.metric == "mix_weight"].set_index("component").value
        assert list(w.index) == list(NAMES) and w.sum() == pytest.approx(1.0) and (w >= 0).all()
        mix = torch.einsum("a,antv->ntv", torch.tensor(w.to_numpy(), dtype=torch.float64), p)
        residual = g[g.metric == "mix_residual_kl"].value.item()
        assert residual == pytest.approx(reference_kl(probs, mix), rel=1e-6, abs=1e-9)
        assert residual <= min(want.values()) + 1e-9  # each predictor alone is a mix
    assert "strategy" in ci.analysis.default_analyses(("markov", "tokens"))


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
    # each line is its table rows: x the checkpoints after step 0 (log axis), y their values, one panel per evaluator
    rows = table[(table.analysis == "strategy") & (table.step > 0)].sort_values("step")
    label = {name: PREDICTORS[name][0] for name in NAMES}
    for panel, ev in (("x", "markov_id"), ("x2", "markov_ood")):
        g = rows[rows.evaluator == ev]
        want = {label[name]: g[(g.metric == "mix_weight") & (g.component == name)] for name in NAMES}
        want["residual KL"] = g[g.metric == "mix_residual_kl"]
        drawn = {t.name: t for t in fig.data if t.xaxis == panel}
        assert set(drawn) == set(want)
        for name, w in want.items():
            assert len(w) == len(markov_run.steps) - 1, name
            assert list(drawn[name].x) == list(w.step) and list(drawn[name].y) == pytest.approx(list(w.value)), name
    assert "strategy_weights" not in skipped
