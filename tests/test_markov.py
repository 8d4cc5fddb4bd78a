"""The Markov-chain task: chains, sampling, the model's two forwards, training (run format, resume, seeds) and the
token analyses on its checkpoints."""
import pytest
import torch

import coopinterp as ci
from coopinterp.runs import NativeRun
from coopinterp.tasks import markov
from coopinterp.tasks.markov import MarkovModel, MarkovSeeds
from coopinterp.training import TrainingInterrupted, train_seeds
from test_interrupt import assert_same_run, sigint_on_call



@pytest.fixture(scope="module")
def task():
    return ci.preset("markov-tiny").task


@pytest.fixture(scope="module")
def markov_run(tmp_path_factory):
    return ci.train(ci.preset("markov-tiny"), tmp_path_factory.mktemp("markov") / "run", progress=False, device="cpu")


def test_chains_are_fixed_by_the_seed_and_stochastic(task):
    S = markov.chains(task)
    assert S.shape == (task.n_chains, task.n_states, task.n_states)
    assert torch.allclose(S.sum(-1), torch.ones(()).double())
    assert torch.equal(S, markov.chains(task))
    assert not torch.equal(S, markov.chains(task.__class__(**{**task.__dict__, "seed": 1})))


def test_stationary_distribution_of_a_known_chain():
    P = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]], dtype=torch.float64)
    assert torch.allclose(markov.stationary(P), torch.tensor([[5 / 6, 1 / 6]], dtype=torch.float64))


def test_a_cyclic_chain_is_sampled_exactly():
    V = 4
    P = torch.roll(torch.eye(V, dtype=torch.float64), 1, dims=1)[None]  # state i -> i + 1 mod V
    P = 0.999999 * P + 1e-6 / V  # ergodic, so its stationary distribution is unique (uniform)
    tokens = markov.sample_sequences(P, torch.zeros(50, dtype=torch.long), 12, torch.Generator().manual_seed(0))
    assert torch.equal(tokens[:, 1:], (tokens[:, :-1] + 1) % V)
    assert len(set(tokens[:, 0].tolist())) == V  # the start is drawn from the (uniform) stationary distribution


def test_transition_frequencies_match_the_chain():
    P = markov.dirichlet_chains(1, 3, 1.0, 7)
    x = markov.sample_sequences(P, torch.zeros(4000, dtype=torch.long), 40, torch.Generator().manual_seed(1))
    counts = torch.bincount(x[:, :-1].flatten() * 3 + x[:, 1:].flatten(), minlength=9).view(3, 3).double()
    assert torch.allclose(counts / counts.sum(1, keepdim=True), P[0], atol=0.01)


def test_evaluation_batches_in_and_out_of_distribution(task):
    ev = markov.eval_batches(task, 8, seed=0)
    assert list(ev) == ["markov_id", "markov_ood"]
    for b in ev.values():
        assert b.tokens.shape == (8, task.markov_len) and b.tokens.max() < task.n_states
        assert torch.equal(b.chains, markov.chains(task))
    assert torch.equal(markov.make_batch(task, "markov_ood", 8, 1).tokens, ev["markov_ood"].tokens)


def test_fast_forward_equals_the_bridge(task):
    model = MarkovModel(task, ci.preset("markov-tiny").model, seed=3)
    batch = markov.make_batch(task, "markov_id", 6, 0)
    assert torch.allclose(model(batch), model.fast_logits(batch.tokens), atol=1e-5)


def test_markov_run_format_and_analyses(markov_run):
    assert isinstance(markov_run, NativeRun) and markov_run.model_kinds == ("markov", "tokens")
    assert (markov_run.path / "run.json").is_file() and markov_run.steps[0] == 0
    m = markov_run.metrics
    assert set(m.evaluator) == {"markov_id", "markov_ood"} and set(m.metric) == {"loss"}
    first, last = (m[m.step == s].set_index("evaluator").value for s in (0, m.step.max()))
    assert last["markov_id"] < first["markov_id"]  # it learns
    table = ci.analyze(markov_run, ["behavior", "attention", "ablation"], steps=[markov_run.steps[-1]], n=8,
                       progress=False)
    assert set(table.evaluator.dropna()) == {"markov_id", "markov_ood"}
    assert table[table.metric == "induction_score"].layer.nunique() == 2


def test_interrupted_markov_training_resumes_bit_identically(markov_run, tmp_path, monkeypatch):
    cfg = ci.preset("markov-tiny")
    monkeypatch.setattr(MarkovSeeds, "train_step", sigint_on_call(MarkovSeeds, "train_step", 27))
    with pytest.raises(TrainingInterrupted, match="interrupted at step 27"):
        ci.train(cfg, tmp_path / "split", progress=False, device="cpu")
    monkeypatch.undo()
    ci.train(cfg, tmp_path / "split", progress=False, device="cpu")
    assert_same_run(markov_run.path, tmp_path / "split")


def test_seeds_train_as_single_runs(markov_run, tmp_path):
    cfg = ci.preset("markov-tiny")
    runs = train_seeds(cfg, [0, 1], tmp_path / "seeds", progress=False, device="cpu")
    assert_same_run(markov_run.path, runs[0].path)
    assert not torch.equal(runs[1].model(runs[1].steps[-1]).weights()["embed.weight"],
                           markov_run.model(markov_run.steps[-1]).weights()["embed.weight"])


@pytest.mark.parametrize("change, message", [
    ({"task": {"kind": "tokens"}}, "unknown task kind .tokens.; choose from exemplar, linreg, markov, parity"),
    ({"task": {"n_states": 1}}, "n_states must be >= 2"),
    ({"task": {"dirichlet_alpha": 0.0}}, "dirichlet_alpha must be finite and > 0"),
])
def test_bad_markov_configs_are_one_line_errors(change, message):
    with pytest.raises(ci.ConfigError, match=message):
        ci.preset("markov-tiny").replace(**change)


def test_forgetting_is_refused_on_the_markov_task(tmp_path):
    cfg = ci.preset("markov-tiny").replace(train={"forgetting": "active", "forget_every": 5})
    with pytest.raises(ci.ConfigError, match="Markov task has none"):
        ci.train(cfg, tmp_path / "r", progress=False, device="cpu")
