"""The batched intervention engine (ablation, path patching, clamping) against one-TL-hook-per-set references."""
from pathlib import Path

import pytest
import torch
from transformer_lens.utilities import get_act_name
from typer.testing import CliRunner

import coopinterp as ci
import hooked_reference as reference
from coopinterp.analysis import ablation as A
from coopinterp.analysis import engine as E
from coopinterp.analysis import clamping as C
from coopinterp.analysis import grafting as G
from coopinterp.analysis import paper_checks as PC
from coopinterp.analysis import patching as P
from coopinterp.cli import app
from coopinterp.tables import table
from coopinterp.tasks.exemplar import evaluate
from coopinterp.task import EVALUATORS, accuracy, loss

TOL = dict(atol=1e-5, rtol=1e-5)


def as_table(rows):
    """The tidy frame analyze() would build from these rows (checks their keys and types)."""
    return table({**r, "run": "tiny", "step": 0, "seqs_seen": 0, "analysis": "test"} for r in rows)


@pytest.fixture(scope="module")
def model(tiny_run):
    return tiny_run.model(tiny_run.steps[-1])


@pytest.fixture(scope="module")
def batches(tiny_config):
    return {ev: ci.make_batch(tiny_config.task, ev, n=48, seed=i) for i, ev in enumerate(EVALUATORS)}


def test_parse_heads(tiny_config):
    cfg = tiny_config.model
    assert E.parse_heads("0.3,1.0, 0.3", cfg) == [(0, 3), (1, 0)]
    for bad, message in [("0.4", "no head 0.4"), ("2.0", "no head 2.0"), ("1", "bad head '1'"),
                         ("0.-1", "bad head"), ("", "bad head ''"), ("a.b", "bad head 'a.b'")]:
        with pytest.raises(ci.ConfigError, match=message):
            E.parse_heads(bad, cfg)


def test_derangement_has_no_fixed_point():
    perm = E.derangement(101, seed=3)
    assert sorted(perm.tolist()) == list(range(101)) and not (perm == torch.arange(101)).any()
    assert torch.equal(perm, E.derangement(101, seed=3))


def naive_logit_diff(logits, batch):
    """The target label's logit minus the best other context label's, from the full row (sequences with both)."""
    ctx = logits.gather(1, batch.labels)
    is_target = batch.labels == batch.target[:, None]
    diff = ctx.masked_fill(~is_target, -1e9).amax(1) - ctx.masked_fill(is_target, -1e9).amax(1)
    kept = is_target.any(1) & ~is_target.all(1)
    return diff[kept].mean()


def test_engine_is_the_model(model, batches):
    engine = E.Engine(model)
    for batch in batches.values():
        hidden, _ = engine.forward(model.residual(batch))
        logits = engine.logits(hidden)
        torch.testing.assert_close(logits, model(batch), **TOL)
        scores = engine.score(torch.stack([hidden, hidden.flip(0)]), batch, E.METRICS)
        acc, ce = scores["acc"], scores["loss"]
        torch.testing.assert_close(acc[0], accuracy(logits, batch))
        if batch.evaluator == "iwl":  # the target need not be in the context: no logit difference
            assert set(scores) == {"acc", "loss"}
        else:
            torch.testing.assert_close(scores["logit_diff"][0], naive_logit_diff(logits, batch), **TOL)
        torch.testing.assert_close(ce[0], loss(logits, batch), **TOL)
        torch.testing.assert_close(ce[1], loss(logits.flip(0), batch), **TOL)


@pytest.mark.parametrize("bias", [False, True])
def test_screened_argmax_is_the_fp32_one(monkeypatch, bias):
    """The bf16 screen gives fp32's answer on every row: it decides the rows with a clear margin, and exact ties
    (label 1 duplicates label 0, the target) go back to fp32, which counts a tie as the target's."""
    g = torch.Generator().manual_seed(0)
    d, labels, n = 16, 3000, 600
    W = torch.randn(d, labels, generator=g)
    W[:, 1] = W[:, 0]
    b = torch.randn(labels, generator=g) if bias else torch.zeros(labels)
    b[1] = b[0]
    h = 4 * torch.randn(n, d, generator=g)
    h[:100] = 6 * W[:, 0] + 0.1 * torch.randn(100, d, generator=g)  # labels 0 and 1 on top, tied
    target = torch.addmm(b, h, W).argmax(-1)
    target[:100] = 0
    target[300:] = torch.randint(0, labels, (n - 300,), generator=g)  # mostly not the top
    expected = E.exact_rows(h, W, b, target, loss=False)[1]
    monkeypatch.setattr(E, "bf16_is_fast", lambda device_type: True)  # screen even where bf16 is slow
    rechecked = []
    exact_rows = E.exact_rows
    monkeypatch.setattr(E, "exact_rows", lambda flat, *a, **k: rechecked.append(len(flat)) or exact_rows(flat, *a, **k))
    ce, screened = E.full_rows(h, W, b, target, loss=False)
    assert ce is None and torch.equal(screened, expected)
    assert expected[:100].all() and expected[:300].float().mean() > 0.9 and expected[300:].float().mean() < 0.1
    assert 100 <= sum(rechecked) <= 250  # the ties, and fewer than a third of the others


def test_loss_rows_are_cross_entropy_and_argmax():
    """Blocked rows give fp64's cross-entropy to fp32 rounding, with or without the argmax, including a row whose
    best label beats the target by far more than exp can take, and the argmax counts ties as the target's."""
    g = torch.Generator().manual_seed(1)
    W, b = torch.randn(16, 3000, generator=g), torch.randn(3000, generator=g)
    h = 3 * torch.randn(300, 16, generator=g)
    h[0] = 30 * W[:, 5]
    target = torch.randint(0, 3000, (300,), generator=g)
    target[0] = (h[0] @ W + b).argmin()
    top_label = int((h[1] @ W + b).argmax())
    twin = (top_label + 1) % 3000
    W[:, twin], b[twin] = W[:, top_label], b[top_label]
    target[1] = twin  # tied with the top label
    logits = h.double() @ W.double() + b.double()
    expected = torch.nn.functional.cross_entropy(logits, target, reduction="none").float()
    assert expected[0] > 200
    with_top, is_top = E.full_rows(h, W, b, target)
    alone, none = E.full_rows(h, W, b, target, top=False)
    on_top = logits.gather(1, target[:, None])[:, 0] >= logits.amax(-1)
    assert none is None and is_top[1] and torch.equal(is_top, on_top)
    torch.testing.assert_close(with_top, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(alone, expected, rtol=1e-6, atol=1e-5)


def test_anchored_argmax_is_the_fp32_one(monkeypatch):
    """Rows near their anchor row take its answer without an unembedding, far ones go to the screen; all equal fp32."""
    g = torch.Generator().manual_seed(2)
    d, labels, n = 16, 3000, 50
    W, b = torch.randn(d, labels, generator=g), torch.randn(labels, generator=g)
    anchor = 4 * torch.randn(n, d, generator=g)
    target = torch.addmm(b, anchor, W).argmax(-1)
    target[n // 2:] = torch.randint(0, labels, (n - n // 2,), generator=g)
    scale = torch.tensor([1e-4, 1e-2, 1.0, 10.0])[:, None, None]  # sets: ever farther from the anchor
    hidden = anchor + scale * torch.randn(4, n, d, generator=g)
    expected = E.exact_rows(hidden.flatten(0, 1), W, b, target.repeat(4), loss=False)[1].view(4, n)
    monkeypatch.setattr(E, "bf16_is_fast", lambda device_type: True)
    screened = []
    screened_top = E.screened_top
    monkeypatch.setattr(E, "screened_top", lambda flat, *a: screened.append(len(flat)) or screened_top(flat, *a))
    _, is_top = E.full_rows(hidden, W, b, target, loss=False, anchor=anchor)
    assert torch.equal(is_top, expected) and expected[0].any() and not expected[0].all()
    assert n < sum(screened) < 3 * n  # the nearest two sets decided by the anchor, the farthest not


@pytest.mark.parametrize("bf16", [True, False])
def test_fast_argmax_on_the_demo_checkpoints(monkeypatch, bf16):
    """iwl accuracy of every head's ablation (screened, or not where bf16 is slow) and of path patching (anchored,
    then screened or not) on two of the shipped demo's checkpoints equals fp32's on every row."""
    monkeypatch.setattr(E, "bf16_is_fast", lambda device_type: bf16)
    run = ci.load_run(Path(__file__).resolve().parents[1] / "checkpoints" / "demo")
    for step in (run.steps[2], run.steps[-1]):
        model = run.model(step)
        batch = ci.make_batch(run.config.task, "iwl", n=64, seed=1)
        engine = E.Engine(model)
        W_U = engine.W_U.contiguous()
        groups = [[h] for h in range(model.cfg.n_heads)] + [list(range(model.cfg.n_heads))]
        ablated = A.ablated_hidden(model, batch, [[head] for head in A.all_heads(model.cfg)], "mean")
        patched = P.patched_hidden(model, batch, groups, groups)
        anchor = engine.forward(model.residual(batch))[0]
        for hidden, kwargs in ((ablated, {}), (patched, {"anchor": anchor})):
            _, expected = E.exact_rows(hidden.reshape(-1, hidden.shape[-1]), W_U, engine.b_U,
                                       batch.target.repeat(hidden[..., 0].numel() // len(batch)), loss=False)
            _, fast = E.full_rows(hidden, engine.W_U, engine.b_U, batch.target, loss=False, **kwargs)
            assert torch.equal(fast.flatten(), expected)


@pytest.mark.parametrize("mode", E.MODES)
def test_ablate_matches_one_hook_per_set(model, batches, mode):
    sets = [[h] for h in A.all_heads(model.cfg)] + [[(0, 1), (1, 2), (1, 3)], []]
    for ev in ("flip", "iwl"):
        batch = batches[ev]
        batched = A.ablate(model, batch, sets, mode)
        values = A.z_replacements(model, batch, mode)
        naive = torch.stack([reference.ablate_hooked(model, batch, heads, values) for heads in sets])
        torch.testing.assert_close(batched, naive, **TOL)
        assert (batched[:-1] - batched[-1]).abs().amax((1, 2)).min() > 1e-3  # every ablation changes something


def test_ablation_rows(model, batches):
    rows = A.rows(model, batches)
    heads = model.cfg.n_layers * model.cfg.n_heads
    assert len(rows) == (len(EVALUATORS) * 3 - 1) * len(E.MODES) * heads  # no logit difference on iwl
    row = next(r for r in rows if (r["evaluator"], r["layer"], r["head"], r["component"], r["metric"])
               == ("icl", 1, 2, "zero", "loss"))
    logits = A.ablate(model, batches["icl"], [[(1, 2)]], "zero")[0]
    assert row["value"] == pytest.approx(loss(logits, batches["icl"]).item(), abs=1e-5)
    assert len(as_table(rows)) == len(rows)


def test_path_patching_matches_hooks(model, batches):
    batch, H = batches["flip"], model.cfg.n_heads
    groups = [[0], [2], [1, 3], list(range(H))]
    components = ["q", "k", "v", "qkv"]
    counterfactual = ci.make_batch(model.task, "icl", n=len(batch), seed=9)
    for mode in ("mean", counterfactual):
        logits = E.Engine(model).logits(P.patched_hidden(model, batch, groups, groups, components, mode))
        if isinstance(mode, str):
            values = A.z_replacements(model, batch, mode)[0]
        else:
            values = model.run_with_cache(mode, names_filter=[get_act_name("z", 0)])[1][get_act_name("z", 0)]
        for s in (0, 2, 3):
            inputs = reference.sender_inputs_hooked(model, batch, groups[s], values)
            for r in (1, 3):
                for c, comp in enumerate(components):
                    naive = reference.receive_hooked(model, batch, groups[r], comp, inputs)
                    torch.testing.assert_close(logits[c, s, r], naive, **TOL)
        assert (logits - model(batch)).abs().amax() > 1e-2


@pytest.mark.parametrize("mode", E.MODES)
def test_patching_everything_equals_ablating_the_senders(model, batches, mode):
    every = [list(range(model.cfg.n_heads))]
    batch = batches["train"]
    patched = P.patched_hidden(model, batch, every, every, ["qkv"], mode, direct=True)[0, 0, 0]
    ablated = A.ablated_hidden(model, batch, [[(0, h) for h in every[0]]], mode)[0]
    torch.testing.assert_close(patched, ablated, **TOL)
    acc = P.path_patch(model, batch, every, every, ["qkv"], mode, direct=True)["acc"]
    assert P.qkv_check(model, batch, mode)["ablated"] == pytest.approx(acc.item())


def direct_path_hook(model, batch, direct_path):
    """Reference hooks: the final LayerNorm's input without (cut) or with only (only) the query's embedding."""
    store = {}

    def record(x, hook):
        store["resid"] = x.clone()

    def edit(x, hook):
        query = store["resid"][:, -1:]
        return x - query if direct_path == "cut" else query.expand_as(x).clone()

    return [(get_act_name("resid_pre", 0), record), ("ln_final.hook_in", edit)]


@pytest.mark.parametrize("direct_path", ["cut", "only"])
def test_direct_path_matches_hooks(model, batches, direct_path):
    engine = E.Engine(model)
    for ev in ("train", "iwl"):
        batch = batches[ev]
        hidden, _ = engine.forward(model.residual(batch), direct_path=direct_path)
        naive = model.run_with_hooks(batch, fwd_hooks=direct_path_hook(model, batch, direct_path))
        torch.testing.assert_close(engine.logits(hidden), naive, **TOL)
        assert (naive - model(batch)).abs().amax() > 1e-2
    with pytest.raises(ci.ConfigError, match="unknown direct_path 'bogus'"):
        engine.forward(model.residual(batch), direct_path="bogus")


def test_qkv_zero_check_with_direct_path_cut_matches_hooks(model, batches):
    """The paper's K/V/Q check: layer-0 outputs zeroed in layer 1's K, V or Q input only, direct path cut."""
    batch, every = batches["train"], list(range(model.cfg.n_heads))
    values = A.z_replacements(model, batch, "zero")[0]
    inputs = reference.sender_inputs_hooked(model, batch, every, values)
    acc, ce = P.path_patch(model, batch, [every], [every], ["q", "k", "v"], "zero", direct_path="cut").values()
    for c, comp in enumerate("qkv"):
        naive = reference.receive_hooked(model, batch, every, comp, inputs,
                                 extra_hooks=direct_path_hook(model, batch, "cut"))
        assert acc[c, 0, 0].item() == pytest.approx(accuracy(naive, batch).item())
        assert ce[c, 0, 0].item() == pytest.approx(loss(naive, batch).item(), abs=1e-5)
    check = P.qkv_check(model, batch, direct_path="cut")
    assert check["k"] == pytest.approx(acc[1, 0, 0].item()) and set(check) == {"clean", "q", "k", "v", "qkv",
                                                                               "ablated"}


def test_paper_checks_rows(model, batches):
    rows = PC.rows(model, batches)
    df = as_table(rows)
    assert len(df) == len(EVALUATORS) * (2 + 2 * len(PC.CHECK_COMPONENTS)) * 2
    only = df[(df.component == "direct_only") & (df.evaluator == "iwl") & (df.metric == "acc")].value.item()
    engine = E.Engine(model)
    acc = engine.score(engine.forward(model.residual(batches["iwl"]), direct_path="only")[0], batches["iwl"])["acc"]
    assert only == pytest.approx(acc.item())


def test_copier_sweep_matches_hooks(model, batches):
    batch = batches["ciwl"]
    for head in ((1, 0), (1, 3)):
        scores = C.copier_sweep(model, batch, head, s=[0.0, 0.4, 1.0], metrics=E.METRICS)
        for i, s in enumerate([0.0, 0.4, 1.0]):
            naive = reference.copier_hooked(model, batch, head, s)
            assert scores["acc"][i].item() == pytest.approx(accuracy(naive, batch).item())
            assert scores["loss"][i].item() == pytest.approx(loss(naive, batch).item(), abs=1e-5)
            assert scores["logit_diff"][i].item() == pytest.approx(naive_logit_diff(naive, batch).item(), abs=1e-5)
    with pytest.raises(ci.ConfigError, match="clamps a last-layer head"):
        C.copier_sweep(model, batch, (0, 1))


def test_copier_sweep_on_a_hand_built_copier(tiny_config, batches):
    """Head 1.0's OV copies each label's direction onto that label's unembedding: it answers the label it attends
    to, so CIWL accuracy is 0 below s = 0.5 and 1 above it."""
    m = ci.CoopModel(tiny_config.task, tiny_config.model).eval().requires_grad_(False)
    w = {k: torch.zeros_like(v) for k, v in m.weights().items()}
    d, dh = tiny_config.model.d_model, tiny_config.model.d_head
    directions = torch.zeros(tiny_config.task.labels, d)  # label i: +-(e_j - e_{j+dh}), zero-mean for LayerNorm
    for i in range(tiny_config.task.labels):
        j, sign = i % dh, 1 - 2 * (i // dh)
        directions[i, j], directions[i, j + dh] = sign, -sign
    w["embed.weight"], w["unembed.weight"] = 3 * directions, directions
    for at in range(dh):
        w["blocks.1.attn.v.weight"][at, at], w["blocks.1.attn.v.weight"][at, at + dh] = 1, -1
        w["blocks.1.attn.o.weight"][at, at], w["blocks.1.attn.o.weight"][at + dh, at] = 1, -1
    for name in ("blocks.0.ln1.weight", "blocks.1.ln1.weight", "ln_final.weight"):
        w[name] = torch.ones_like(w[name])
    m.load_weights(w)
    acc = C.copier_sweep(m, batches["ciwl"], (1, 0), s=[0.0, 0.3, 0.7, 1.0])["acc"]
    assert acc.tolist() == [0.0, 0.0, 1.0, 1.0]
    acc = C.copier_sweep(m, batches["ciwl"], (1, 1), s=[0.0, 1.0])["acc"]  # a head with no OV circuit: a tie
    assert acc[0] == acc[1]


def test_graft_out_and_in(tiny_run, batches):
    early, late = tiny_run.model(tiny_run.steps[1]), tiny_run.model(tiny_run.steps[-1])
    out, into = G.graft_out(early, late), G.graft_in(early, late)
    for name, value in out.weights().items():
        assert torch.equal(value, (late if name.startswith("blocks.1.") else early).weights()[name]), name
    for name, value in into.weights().items():
        assert torch.equal(value, (early if name.startswith("blocks.1.") else late).weights()[name]), name


def test_patching_a_silent_head_changes_nothing(model, batches):
    weights = model.weights()
    v = weights["blocks.0.attn.v.weight"].clone()
    v[model.cfg.d_head:2 * model.cfg.d_head] = 0  # head 0.1 reads nothing, so writes nothing
    silent = ci.CoopModel(model.task, model.cfg).eval().requires_grad_(False)
    silent.load_weights({**weights, "blocks.0.attn.v.weight": v})
    assert not silent.W_V[0, 1].any() and silent.W_V[0, 0].any()
    batch, H = batches["flip"], model.cfg.n_heads
    clean = E.Engine(silent).forward(silent.residual(batch))[0]
    receivers = [[h] for h in range(H)] + [list(range(H))]
    for mode in E.MODES:
        for senders, same in (([[1]], True), ([[0]], False)):
            hidden = P.patched_hidden(silent, batch, senders, receivers, ["q", "k", "v", "qkv"], mode, direct=True)
            assert torch.allclose(hidden, clean.expand_as(hidden), atol=1e-6) == same


def test_path_patching_rows_and_errors(model, batches):
    rows = P.rows(model, {"icl": batches["icl"]})
    H = model.cfg.n_heads
    assert len(rows) == 3 * (H + 1) ** 2 * 2
    df = as_table(rows)
    assert df["head"].isna().sum() == df["src_head"].isna().sum() == 3 * (H + 1) * 2
    assert set(df.component) == {"q", "k", "v"} and (df.layer == 1).all() and (df.src_layer == 0).all()
    with pytest.raises(ci.ConfigError, match="bad path-patching component 'x'"):
        P.path_patch(model, batches["icl"], [[0]], [[0]], ["x"])
    with pytest.raises(ci.ConfigError, match="no sender head 7"):
        P.path_patch(model, batches["icl"], [[7]], [[0]], ["q"])
    with pytest.raises(ci.ConfigError, match="counterfactual batch has shape"):
        P.path_patch(model, batches["icl"], [[0]], [[0]], ["q"], mode=ci.make_batch(model.task, "train", n=5))


def test_clamp_matches_hooks(model, batches):
    batch = batches["ciwl"]
    for head, ablate in (((1, 2), None), ((1, 0), [(0, 1), (1, 3)])):
        scores = C.clamp_sweep(model, batch, head, s=[0.0, 0.3, 1.0], ablate=ablate)
        for i, s in enumerate([0.0, 0.3, 1.0]):
            naive = reference.clamp_hooked(model, batch, head, s, ablate=ablate)
            assert scores["acc"][i].item() == pytest.approx(accuracy(naive, batch).item())
            assert scores["loss"][i].item() == pytest.approx(loss(naive, batch).item(), abs=1e-5)


def test_clamp_row_and_rows(model, batches):
    batch = batches["ciwl"]
    row = C.clamp_row(batch, torch.tensor([0.25]))[0]
    at_true = row[torch.arange(len(batch)), batch.target_pair * 2 + 1]
    assert torch.allclose(row.sum(-1), torch.ones(len(batch)))
    assert torch.allclose(at_true, torch.full_like(at_true, 0.25))
    with pytest.raises(ci.ConfigError, match="use ciwl"):
        C.clamp_sweep(model, batches["iwl"], (1, 0))
    rows = C.rows(model, batches)
    assert [r["component"] for r in rows[:2 * len(C.S_VALUES):2]] == [f"s={s:.2f}" for s in C.S_VALUES]
    assert {r["head"] for r in rows} == set(range(model.cfg.n_heads)) and {r["layer"] for r in rows} == {1}
    assert {r["metric"] for r in rows} == {"acc", "logit_diff"}  # the loss only when asked
    with_loss = C.rows(model, batches, C.Options(loss=True))
    scores = C.copier_sweep(model, batch, (1, 2), metrics=E.METRICS)
    for metric in E.METRICS:
        values = [r["value"] for r in with_loss if r["head"] == 2 and r["metric"] == metric]
        assert values == pytest.approx(scores[metric].tolist())


def test_graft(tiny_run, batches):
    recipient, donor = tiny_run.model(tiny_run.steps[1]), tiny_run.model(tiny_run.steps[-1])
    grafted = G.graft(recipient, donor, ["layer0", "unembed"])
    w, wr, wd = grafted.weights(), recipient.weights(), donor.weights()
    for name in w:
        expected = wd if name.startswith(("blocks.0.", "unembed.")) else wr
        assert torch.equal(w[name], expected[name]), name
    everything = G.graft(recipient, donor, list(G.param_groups(recipient)))
    assert evaluate(everything, batches) == evaluate(donor, batches)
    with pytest.raises(ci.ConfigError, match="unknown parameter group 'layer2'; choose from layer0, layer1"):
        G.graft(recipient, donor, ["layer2"])


def test_cli(tiny_run):
    runner = CliRunner()
    r = runner.invoke(app, ["ablate", str(tiny_run.path), "--heads", "0.1,1.2", "--n", "32"])
    assert r.exit_code == 0, r.output
    assert "acc ablated" in r.output and all(ev in r.output for ev in EVALUATORS)
    for args, message in [(["--heads", "0.9"], "no head 0.9"),
                          (["--heads", "0.1", "--step", "7"], "no checkpoint at step 7"),
                          (["--heads", "0.1", "--mode", "bogus"], "unknown ablation mode 'bogus'")]:
        r = runner.invoke(app, ["ablate", str(tiny_run.path), *args])
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for cmd in (["patch", "--senders", "0,1"], ["clamp"], ["graft", "--donor", str(tiny_run.path), "--groups", "pos"]):
        r = runner.invoke(app, [cmd[0], str(tiny_run.path), *cmd[1:], "--n", "32"])
        assert r.exit_code == 0, r.output
