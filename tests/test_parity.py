"""The streaming-parity task and the automaton analysis: data, hand-built RNNs whose automata are known (one that
computes parity, one that memorises every prefix), minimisation, and a tiny run trained, resumed, analysed and
plotted."""
import numpy as np
import pytest
import torch

import coopinterp as ci
from coopinterp.analysis import automaton as A
from coopinterp.errors import ConfigError
from coopinterp.plots.catalogue import figures
from coopinterp.tasks import parity as P


def test_training_set_is_every_sequence_of_length_1_to_10_with_its_parity():
    task = P.ParityTaskConfig()
    batches = P.make_batches(task, 100, 0)
    train, prefixes = batches["train"], batches["prefixes"]
    assert train.scored.sum() == prefixes.scored.sum() == 2046
    rows, cols = prefixes.scored.nonzero().unbind(1)
    seqs = {tuple(prefixes.bits[r, : c + 1].tolist()) for r, c in zip(rows.tolist(), cols.tolist())}
    assert len(seqs) == 2046 and {len(s) for s in seqs} == set(range(1, 11))
    assert torch.equal(prefixes.targets, torch.tensor([sum(s) % 2 for s in
                       [tuple(prefixes.bits[r, : c + 1].tolist()) for r, c in zip(rows.tolist(), cols.tolist())]]))
    assert batches["len_10000"].bits.shape == (20, 10_000)  # LONG_TOKENS / 10,000 sequences
    assert batches["len_50"].scored.sum() == 100 and batches["len_50"].scored[:, -1].all()


def test_kept_fraction_and_an_epoch_visits_every_kept_sequence_once_shortest_first():
    task = P.ParityTaskConfig(max_train_len=6, data_fraction=0.5)
    kept = P.kept(task)
    assert kept.sum() == round(0.5 * 126)
    plan = P.epoch_batches(task, 8)
    epoch = [tuple(s) for step in range(len(plan)) for s in P.training_batch(task, 8, 0, step).tolist()]
    rows, cols = kept.nonzero().unbind(1)
    full = P.all_sequences(6)
    assert sorted(epoch) == sorted(tuple(full[r, : c + 1].tolist()) for r, c in zip(rows.tolist(), cols.tolist()))
    assert [len(s) for s in epoch] == sorted(len(s) for s in epoch)
    assert torch.equal(P.training_batch(task, 8, 0, 3), P.training_batch(task, 8, 0, 3))
    assert not torch.equal(P.training_batch(task, 8, 0, len(plan) - 1), P.training_batch(task, 8, 0, 2 * len(plan) - 1))


def wired(task: P.ParityTaskConfig, W_hh, W_ih, b, readout, h0) -> P.ParityRNN:
    model = P.ParityRNN(task)
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(torch.as_tensor(W_hh, dtype=torch.float))
        model.rnn.weight_ih_l0.copy_(torch.as_tensor(W_ih, dtype=torch.float))
        model.rnn.bias_ih_l0.copy_(torch.as_tensor(b, dtype=torch.float))
        model.rnn.bias_hh_l0.zero_()
        model.readout.weight.copy_(torch.as_tensor(readout, dtype=torch.float))
        model.readout.bias.zero_()
        model.h0.copy_(torch.as_tensor(h0, dtype=torch.float).view(1, 1, -1))
    return model.eval()


def parity_rnn() -> P.ParityRNN:
    """Four ReLU units, one per transition (even-0, odd-1, even-1, odd-0): u = relu(state + symbol - 1), where the
    state is even = u0 + u1, odd = u2 + u3; the readout is (even, odd)."""
    even, odd = [1, 1, 0, 0], [0, 0, 1, 1]
    W_hh = [even, odd, even, odd]
    W_ih = [[1, 0], [0, 1], [0, 1], [1, 0]]
    return wired(P.ParityTaskConfig(hidden_size=4, val_lengths="50,1000"), W_hh, W_ih, [-1] * 4, [even, odd],
                 [1, 0, 0, 0])


def tree_rnn(L: int) -> P.ParityRNN:
    """One unit per prefix of length <= L (unit 0: the empty one): unit q = relu(unit p + symbol c - 1) for q = pc,
    so every prefix has its own one-hot state; the readout names each prefix's parity. It memorises."""
    names = [""] + ["".join(map(str, s)) for n in range(1, L + 1) for s in P.all_sequences(n).tolist()]
    index = {s: i for i, s in enumerate(names)}
    H = len(names)
    W_hh, W_ih, readout = np.zeros((H, H)), np.zeros((H, 2)), np.zeros((2, H))
    for q, name in enumerate(names):
        readout[name.count("1") % 2, q] = 1
        if name:
            W_hh[q, index[name[:-1]]], W_ih[q, int(name[-1])] = 1, 1
    task = P.ParityTaskConfig(hidden_size=H, max_train_len=L, val_lengths="50")
    return wired(task, W_hh, W_ih, [-1] * H, readout, np.eye(H)[0])


def values(rows: list[dict]) -> dict[str, float]:
    return {r["metric"] + (f"/{r['evaluator']}" if r.get("evaluator") else ""): r["value"] for r in rows
            if r["metric"] not in ("transition", "state_output")}


def test_a_parity_rnn_reads_as_four_states_that_minimise_to_two_and_it_extrapolates():
    model = parity_rnn()
    rows = A.rows(model, P.make_batches(model.task, 16, 0), A.Options())
    v = values(rows)
    assert (v["n_states"], v["n_states_min"], v["complete"], v["deterministic"]) == (4, 2, 1, 1)
    assert v["train_loss/train"] == 0 and v["val_loss/len_1000"] == 0 and v["val_acc/len_1000"] == 1
    transitions = {r["component"]: r["value"] for r in rows if r["metric"] == "transition"}
    assert transitions == {"0>0": 0, "0>1": 1, "1>0": 1, "1>1": 0}  # stay on 0, flip on 1


def test_a_memorising_rnn_reads_as_a_tree_of_one_state_per_prefix():
    model = tree_rnn(4)
    v = values(A.rows(model, P.make_batches(model.task, 16, 0), A.Options()))
    assert v["n_states"] == 31 and v["complete"] == 0 and v["deterministic"] == 1
    assert v["n_states_min"] == 9  # the initial state and one per (depth 1..4, parity)
    assert v["train_loss/train"] == 0 and v["val_loss/len_50"] > 0.2  # beyond length 4 every unit is silent


def test_grouping_joins_the_first_group_whose_first_member_is_near():
    points = torch.tensor([[0.0], [1.0], [0.05], [1.08], [0.12]])
    assert A.group(points, 0.1).tolist() == [0, 1, 0, 1, 2]  # 0.12 is near 0.05, not near the first member 0


def test_moore_minimisation_of_hand_written_automata():
    mod4 = A.Automaton(np.array([[0, 1], [1, 2], [2, 3], [3, 0]]), np.array([0, 1, 0, 1]))  # ones mod 4, parity out
    assert len(A.minimise(mod4)) == 2
    mod3 = A.Automaton(np.array([[0, 1], [1, 2], [2, 0]]), np.array([1, 0, 0]))  # ones mod 3 == 0
    assert len(A.minimise(mod3)) == 3
    start = A.Automaton(np.array([[1, 2], [1, 2], [2, 1]]), np.array([A.OPEN, 0, 1]))  # open start, then parity
    small = A.minimise(start)
    assert len(small) == 2 and small.next.tolist() == [[0, 1], [1, 0]]
    unreachable = A.Automaton(np.array([[0, 0], [1, 0]]), np.array([0, 1]))
    assert len(A.minimise(unreachable)) == 1


def test_bad_settings_are_one_line_errors(tmp_path):
    config = ci.preset("parity-tiny")
    with pytest.raises(ConfigError, match="model section"):
        P.TASK.build_model(config.replace(model={"d_model": 32, "d_head": 4}))
    with pytest.raises(ConfigError, match="model section"):
        ci.train(config.replace(model={"d_model": 32, "d_head": 4}), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()  # refused before its run directory is made
    with pytest.raises(ConfigError, match="own sequences"):
        P.TASK.batches(config.task, "repeated", 4, 0, "cpu")
    with pytest.raises(ConfigError, match="val_lengths"):
        config.replace(task={"val_lengths": "50,x"})
    with pytest.raises(ConfigError, match="data_fraction"):
        config.replace(task={"data_fraction": 0.0})


def test_hidden_states_run_in_chunks_equal_one_pass(monkeypatch):
    model = P.ParityRNN(P.ParityTaskConfig(hidden_size=8, init_gain=1.0))
    bits = torch.randint(2, (5, 11), generator=torch.Generator().manual_seed(0))
    scored = torch.rand(5, 11, generator=torch.Generator().manual_seed(1)) < 0.4
    whole = model.hidden(bits)[scored]
    monkeypatch.setattr(P, "CHUNK", 3)
    torch.testing.assert_close(model.hidden_at(bits, scored), whole)


def test_outputs_and_the_hidden_hook():
    model = parity_rnn()
    batches = P.make_batches(model.task, 16, 0)
    out = model.outputs(batches)
    assert out.shape == (sum(int(b.scored.sum()) for b in batches.values()), 2)
    bits = torch.tensor([[1, 0, 1]])
    zeroed = model.run_with_hooks(bits, fwd_hooks=[("hook_hidden", lambda h, hook: h * 0)])
    assert torch.equal(model(bits)[0, -1], torch.tensor([1.0, 0.0])) and zeroed.abs().sum() == 0


def test_tiny_run_trains_resumes_exactly_analyses_and_plots(tmp_path):
    config = ci.preset("parity-tiny")
    straight = ci.train(config, tmp_path / "straight", progress=False, device="cpu")
    ci.train(config.replace(train={"steps": 20}), tmp_path / "resumed", progress=False, device="cpu")
    resumed = ci.train(config, tmp_path / "resumed", progress=False, device="cpu")
    assert all(torch.equal(straight.model(40).weights()[k], w) for k, w in resumed.model(40).weights().items())
    assert straight.model_kinds == ("rnn", "outputs")
    table = ci.analyze(straight, n=16, progress=False, workers=1)
    assert set(table.analysis) == {"automaton"}
    assert set(table.evaluator.dropna()) == {"train", "len_20", "len_200"}
    assert (table[table.metric == "n_states_min"].value >= 1).all()
    figs, skipped = figures(table, straight.metrics)
    assert {"automaton_size", "automaton_graph"} <= set(figs), skipped
