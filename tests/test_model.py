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


def linear(block, name):
    return getattr(block.attn, name).original_component


def test_weight_views_are_the_parameters(tiny_config):
    """Every TL weight view is the very tensor the forward uses, rearranged: per head, W_Q/W_K/W_V are that head's
    output rows of q/k/v (transposed, d_model x d_head), W_O its input columns of o, QK = W_Q W_K^T and
    OV = W_V W_O; on a model whose every weight is random, so that no two views coincide by accident."""
    m = randomised(tiny_config.task, tiny_config.model, seed=5)
    H, dh = tiny_config.model.n_heads, tiny_config.model.d_head
    for layer, block in enumerate(m.bridge.blocks):
        q, k, v, o = (linear(block, name) for name in ("q", "k", "v", "o"))
        assert torch.equal(m.b_O[layer], o.bias)
        for h in range(H):
            rows = slice(h * dh, (h + 1) * dh)
            for view, lin in ((m.W_Q, q), (m.W_K, k), (m.W_V, v)):
                assert torch.equal(view[layer, h], lin.weight[rows].T)
            assert torch.equal(m.W_O[layer, h], o.weight[:, rows].T)
            qk = q.weight[rows].T @ k.weight[rows]  # d_model x d_model: x_q QK x_k^T is the attention score
            ov = v.weight[rows].T @ o.weight[:, rows].T  # x OV is what the head writes for the token it attends to
            assert torch.allclose(m.QK[layer, h].AB, qk, atol=1e-5)
            assert torch.allclose(m.OV[layer, h].AB, ov, atol=1e-5)
    assert torch.equal(m.W_E, m.label_embedding) and torch.equal(m.W_pos, m.pos_embedding)
    head = m.bridge.unembed.original_component
    assert torch.equal(m.W_U, head.weight.T) and torch.equal(m.b_U, head.bias)


def test_paper_init_statistics(model, tiny_config):
    """The paper's initialisation, within sampling error (5 standard errors of a sample std, sqrt(1/(2n)) relative
    for a normal): lecun-normal linears (std 1/sqrt(fan_in): 1/4 for the 16-dim exemplar embedding, 1/sqrt(32) for
    the rest), positions uniform on +-1/sqrt(32), labels N(0, 0.02), every bias 0, LayerNorms at identity."""
    m, task = tiny_config.model, tiny_config.task

    def normal(w, std):
        n = w.numel()
        assert abs(w.std().item() / std - 1) < 5 * (2 * n) ** -0.5, (tuple(w.shape), w.std().item(), std)
        assert abs(w.mean().item()) < 5 * std / n ** 0.5

    normal(model.exemplar_embed.weight, task.dim ** -0.5)
    normal(model.bridge.unembed.original_component.weight, m.d_model ** -0.5)
    for block in model.bridge.blocks:
        for name in ("q", "k", "v", "o"):
            normal(linear(block, name).weight, m.d_model ** -0.5)  # fan_in d_model, and n_heads * d_head = d_model
    normal(model.label_embedding, 0.02)
    bound, pos = 32 ** -0.5, model.W_pos
    assert pos.abs().max() <= bound and pos.abs().max() > 0.9 * bound  # 160 draws: all under 0.9 bound p = 5e-8
    assert abs(pos.std().item() / (bound / 3 ** 0.5) - 1) < 0.2 and abs(pos.mean().item()) < 0.05 * bound
    biases = [linear(b, name).bias for b in model.bridge.blocks for name in ("q", "k", "v", "o")]
    biases += [model.exemplar_embed.bias, model.b_U]
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    norms = [b.ln1.original_component for b in model.bridge.blocks] + [model.bridge.ln_final.original_component]
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and torch.count_nonzero(n.bias) == 0 for n in norms)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith("bias") and ".attn." in n for n in trainable)  # no trained q/k/v/o bias
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
