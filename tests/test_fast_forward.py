"""fast_forward.attention_logits, the training forward of CoopModel, MarkovModel and multiseed's stacked seeds, against
the hooked transformer-lens bridge: logits and the gradient of a loss with respect to every parameter, on models whose
every weight is random (LayerNorm weights and biases, q/k/v/o biases and the unembedding bias included), so that a
forward ignoring or misplacing any one of them fails."""
import importlib
import pkgutil

import pytest
import torch
import torch.nn.functional as F

import coopinterp as ci
from coopinterp.fast_forward import attention_logits, bridge_weights
from coopinterp.model import CoopModel
from coopinterp.multiseed import SeedStack, stacked_logits

ATOL, RTOL = 1e-5, 1e-4  # float32: the two forwards sum in different orders (measured max |diff| ~1e-6)


def _markov_model_class():
    """MarkovModel, from coopinterp.markov_model or wherever it has moved (coopinterp.tasks...)."""
    try:
        from coopinterp.markov_model import MarkovModel
        return MarkovModel
    except ImportError:
        for info in pkgutil.walk_packages(ci.__path__, "coopinterp."):
            if not info.name.endswith("__main__"):
                module = importlib.import_module(info.name)
                if isinstance(getattr(module, "MarkovModel", None), type):
                    return module.MarkovModel
    raise ImportError("no coopinterp module defines MarkovModel")


MarkovModel = _markov_model_class()


@torch.no_grad()
def randomise(model, seed):
    """Every weight random, not just re-drawn: LayerNorm weights away from 1 and biases away from 0, the frozen
    q/k/v/o biases and the unembedding bias nonzero; then every parameter trainable, so each gets a gradient."""
    g = torch.Generator().manual_seed(seed)
    weights = {k: v.clone() for k, v in model.weights().items()}
    model.load_weights({k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in weights.items()})
    for name, value in model.weights().items():
        assert (value != 0).all() and not torch.equal(value, weights[name]), name
    for p in model.bridge.parameters():
        p.requires_grad_(True)
    return model


def named_grads(model):
    """The gradient of every parameter, keyed by its `weights()` name; a parameter the loss missed has None."""
    name = {v.data_ptr(): k for k, v in model.weights().items()}
    return {name[p.data_ptr()]: p.grad for p in model.parameters()}


def logits_and_grads(model, forward, loss):
    for p in model.parameters():
        p.grad = None
    logits = forward()
    loss(logits).backward()
    return logits.detach(), named_grads(model)


def assert_same(got, want):
    (lg, gg), (lw, gw) = got, want
    torch.testing.assert_close(lg, lw, atol=ATOL, rtol=RTOL)
    assert gg.keys() == gw.keys()
    for name in gw:
        assert gw[name] is not None and gg[name] is not None, f"{name} has no gradient"
        assert gw[name].abs().max() > 0, f"{name}: zero gradient through the bridge"
        torch.testing.assert_close(gg[name], gw[name], atol=ATOL, rtol=RTOL, msg=name)


def probe(shape, seed):
    """A random direction: a loss term `(logits * probe).sum()` reaches every logit, not only the target's."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- the exemplar model -------------------------------------------------------------------------------------------

MODELS = {"tiny": None, "3 layers, 2 heads": ci.ModelConfig(n_layers=3, n_heads=2, d_model=16, d_head=8)}


@pytest.fixture(params=list(MODELS))
def exemplar_config(request, tiny_config):
    cfg = MODELS[request.param]
    return tiny_config if cfg is None else tiny_config.replace(model=cfg.__dict__)


def exemplar_loss(batch, seed):
    return lambda logits: F.cross_entropy(logits, batch.target) + (logits * probe(logits.shape, seed)).sum() / len(batch)


def test_coop_fast_logits_equals_the_bridge(exemplar_config):
    task = exemplar_config.task
    m = randomise(CoopModel(task, exemplar_config.model, seed=4), 4)
    batch = ci.make_batch(task, "train", n=48, seed=2)
    loss = exemplar_loss(batch, 0)
    bridge = logits_and_grads(m, lambda: m(batch), loss)  # CoopModel.__call__: the hooked TL forward
    fast = logits_and_grads(m, lambda: m.fast_logits(batch.exemplars, batch.labels), loss)
    assert_same(fast, bridge)
    assert len(bridge[1]) == len(m.weights())  # every tensor of the checkpoint is a parameter with a gradient


def test_query_only_is_the_last_position_of_the_full_forward(tiny_config):
    m = randomise(CoopModel(tiny_config.task, tiny_config.model, seed=5), 5)
    batch = ci.make_batch(tiny_config.task, "train", n=16, seed=3)
    with torch.no_grad():
        h = m.residual(batch)
        w, eps = bridge_weights(m.bridge), m.bridge.ln_final.original_component.eps
        full = attention_logits(w, h, tiny_config.model.n_heads, eps, query_only=False)
        assert full.shape == (16, tiny_config.task.seq_len, tiny_config.task.labels)
        torch.testing.assert_close(full, m.bridge(h, start_at_layer=0), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(attention_logits(w, h, tiny_config.model.n_heads, eps, query_only=True),
                                   full[:, -1], atol=ATOL, rtol=RTOL)


# -- stacked seeds (multiseed.SeedStack) ----------------------------------------------------------------------------

def test_seed_stack_equals_one_bridge_per_seed(exemplar_config):
    """SeedStack's forward on S random models, each seed on its own batch, against each seed's own CoopModel."""
    seeds = [0, 1, 2]
    task = exemplar_config.task
    stack = SeedStack(exemplar_config, seeds, "cpu")
    assert stack.forward is stacked_logits
    models = [randomise(CoopModel(task, exemplar_config.model, seed=s), 10 + s) for s in seeds]
    batches = [ci.make_batch(task, "train", n=32, seed=20 + s) for s in seeds]
    losses = [exemplar_loss(b, s) for s, b in zip(seeds, batches)]
    with torch.no_grad():
        for k, v in stack.w.items():
            v.copy_(torch.stack([m.weights()[k] for m in models]))
    w = {k: v.detach().requires_grad_() for k, v in stack.w.items()}  # every tensor trainable, frozen biases too
    ex = torch.stack([b.exemplars for b in batches])
    lab = w["embed.weight"][torch.arange(len(seeds))[:, None, None], torch.stack([b.labels for b in batches])]
    logits = stack.forward(w, exemplar_config.model.n_heads, stack.eps, ex, lab)
    sum(loss(logits[j]) for j, loss in enumerate(losses)).backward()
    for j, (m, b, loss) in enumerate(zip(models, batches, losses)):
        want = logits_and_grads(m, lambda: m(b), loss)
        assert_same((logits[j].detach(), {k: w[k].grad[j] for k in w}), want)


# -- the Markov model ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def markov_config():
    return ci.preset("markov-tiny")


def markov_forward(model, tokens):
    """The body MarkovModel.fast_logits is to have: the shared forward, every position."""
    b = model.bridge
    h = b.embed.original_component.weight[tokens] + b.pos_embed.original_component.weight[: tokens.shape[1]]
    return attention_logits(bridge_weights(b), h, model.cfg.n_heads, b.ln_final.original_component.eps,
                            query_only=False)


def markov_tokens(config, n, seed):
    return torch.randint(config.task.n_states, (n, config.task.markov_len), generator=torch.Generator().manual_seed(seed))


def markov_loss(tokens, seed):
    """markov_model.next_token_loss plus a probe of every position's logits (the last position's included)."""
    return lambda logits: (F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
                           + (logits * probe(logits.shape, seed)).sum() / len(tokens))


@pytest.mark.parametrize("forward", ["shared forward", "MarkovModel.fast_logits"])
def test_markov_fast_forward_equals_the_bridge(markov_config, forward):
    m = randomise(MarkovModel(markov_config.task, markov_config.model, seed=3), 3)
    assert m.weights()["unembed.bias"].abs().min() > 0  # a buffer of the bridge (not trained), now nonzero
    tokens = markov_tokens(markov_config, 12, 0)
    loss = markov_loss(tokens, 1)
    bridge = logits_and_grads(m, lambda: m.bridge(tokens), loss)
    fast = markov_forward if forward == "shared forward" else type(m).fast_logits
    got = logits_and_grads(m, lambda: fast(m, tokens), loss)
    assert got[0].shape == (12, markov_config.task.markov_len, markov_config.task.n_states)
    assert_same(got, bridge)


def test_stacked_markov_models_equal_their_bridges(markov_config):
    """The full-sequence forward with a seed dim (the exemplar stack's path, every position)."""
    models = [randomise(MarkovModel(markov_config.task, markov_config.model, seed=s), 30 + s) for s in range(3)]
    w = {k: torch.stack([m.weights()[k] for m in models]).requires_grad_() for k in models[0].weights()}
    tokens = torch.stack([markov_tokens(markov_config, 8, 40 + s) for s in range(3)])
    h = w["embed.weight"][torch.arange(3)[:, None, None], tokens] + w["pos_embed.weight"][:, None]
    eps = models[0].bridge.ln_final.original_component.eps
    logits = attention_logits(w, h, markov_config.model.n_heads, eps, query_only=False)
    losses = [markov_loss(tokens[j], 50 + j) for j in range(3)]
    sum(loss(logits[j]) for j, loss in enumerate(losses)).backward()
    for j, (m, loss) in enumerate(zip(models, losses)):
        want = logits_and_grads(m, lambda: m.bridge(tokens[j]), loss)
        torch.testing.assert_close(logits[j].detach(), want[0], atol=ATOL, rtol=RTOL)
        for k, g in want[1].items():
            torch.testing.assert_close(w[k].grad[j], g, atol=ATOL, rtol=RTOL, msg=k)
