import pytest
import torch

import coopinterp as ci


@pytest.fixture(scope="module")
def model(tiny_config):
    return ci.CoopModel(tiny_config.task, tiny_config.model, seed=3).eval()


def test_hooked_and_fast_forward_agree(model, tiny_config):
    b = ci.make_batch(tiny_config.task, "flip", n=64)
    with torch.no_grad():
        assert torch.allclose(model(b), model.fast_logits(b.exemplars, b.labels), atol=1e-5)


def test_hook_names_and_cache_shapes(model, tiny_config):
    b = ci.make_batch(tiny_config.task, "train", n=10)
    logits, cache = model.run_with_cache(b)
    H, T, d = tiny_config.model.n_heads, tiny_config.task.seq_len, tiny_config.model.d_model
    assert logits.shape == (10, tiny_config.task.labels)
    for layer in range(2):
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (10, H, T, T)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (10, T, H, 8)
        assert cache[f"blocks.{layer}.hook_resid_pre"].shape == (10, T, d)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(10, H, T))
    assert (pattern.triu(1) == 0).all()  # causal
    # positions are added exactly once: resid_pre = embeddings + W_pos
    expect = model.embed(b.exemplars, b.labels) + model.W_pos
    assert torch.allclose(cache["blocks.0.hook_resid_pre"], expect, atol=1e-6)


def test_run_with_hooks_intervenes(model, tiny_config):
    b = ci.make_batch(tiny_config.task, "train", n=10)
    clean = model.run_with_hooks(b)
    def zero(z, hook):
        return torch.zeros_like(z)
    hooked = model.run_with_hooks(b, fwd_hooks=[("blocks.1.attn.hook_z", zero)])
    assert not torch.allclose(clean, hooked)
    assert torch.allclose(model.run_with_hooks(b), clean)  # hooks were removed


def test_weight_views_and_paper_init(model, tiny_config):
    m = tiny_config.model
    assert model.W_Q.shape == (2, m.n_heads, m.d_model, m.d_head)
    assert model.W_O.shape == (2, m.n_heads, m.d_head, m.d_model)
    assert model.OV is not None and model.QK is not None
    std = model.W_Q.std().item()
    assert abs(std - m.d_model ** -0.5) < 0.03  # lecun normal
    assert model.W_pos.abs().max() <= 32 ** -0.5
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith("bias") and ".attn." in n for n in trainable)  # no qkv/o bias
    assert any("unembed" in n and n.endswith("bias") for n in trainable)


def test_same_seed_same_weights(tiny_config):
    a = ci.CoopModel(tiny_config.task, tiny_config.model, seed=1).weights()
    b = ci.CoopModel(tiny_config.task, tiny_config.model, seed=1).weights()
    c = ci.CoopModel(tiny_config.task, tiny_config.model, seed=2).weights()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.q.weight"], c["blocks.0.attn.q.weight"])


def randomised(task, cfg, seed):
    """A model whose every weight is random, LayerNorm weights and biases and the frozen q/k/v/o biases included,
    so that a forward ignoring any parameter gives different logits."""
    m = ci.CoopModel(task, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    w = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in m.weights().items()}
    m.load_weights(w)
    return m


def bridge_and_fast(m, batch):
    """Logits and gradients (of the summed query loss) through the TL bridge and through fast_logits."""
    out = []
    for forward in (lambda: m(batch), lambda: m.fast_logits(batch.exemplars, batch.labels)):
        m.zero_grad(set_to_none=True)
        logits = forward()
        torch.nn.functional.cross_entropy(logits, batch.target).backward()
        out.append((logits.detach(), grads_by_weight_name(m)))
    return out


def grads_by_weight_name(m):
    """Gradients of the trainable parameters, keyed by their `weights()` (checkpoint) names."""
    name = {v.data_ptr(): k for k, v in m.weights().items()}
    return {name[p.data_ptr()]: p.grad.clone() for p in m.parameters() if p.requires_grad}


@pytest.mark.parametrize("source", ["random", "trained"])
def test_fast_forward_equals_the_bridge_in_logits_and_gradients(tiny_config, tiny_run, source):
    m = randomised(tiny_config.task, tiny_config.model, 4) if source == "random" else \
        tiny_run.model(tiny_run.steps[-1]).requires_grad_(True)
    batch = ci.make_batch(tiny_config.task, "train", n=64, seed=2)
    (lb, gb), (lf, gf) = bridge_and_fast(m, batch)
    torch.testing.assert_close(lf, lb, atol=1e-5, rtol=1e-5)
    assert gb.keys() == gf.keys() and len(gb) >= 12
    for name in gb:
        torch.testing.assert_close(gf[name], gb[name], atol=1e-5, rtol=1e-4, msg=name)


def test_every_parameter_reaches_the_fast_forward(tiny_config):
    """Perturbing any one weight tensor changes the fast logits exactly as it changes the bridge's."""
    m = randomised(tiny_config.task, tiny_config.model, 5)
    batch = ci.make_batch(tiny_config.task, "flip", n=32, seed=3)
    base, g = m.weights(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = m(batch)
        for name, value in base.items():  # random, not constant: LayerNorm would undo a constant shift
            m.load_weights({**base, name: value + 0.5 * torch.randn(value.shape, generator=g)})
            bridge, fast = m(batch), m.fast_logits(batch.exemplars, batch.labels)
            assert (bridge - clean).abs().max() > 1e-2, f"{name} does not change the bridge's logits"
            torch.testing.assert_close(fast, bridge, atol=1e-4, rtol=1e-5, msg=name)  # float32 rounding: <4e-5
    m.load_weights(base)
