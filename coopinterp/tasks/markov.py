"""The Markov-chain task (Park et al. 2024; Edelman et al. 2024): sequences from a finite mixture of chains.

The task (section kind "markov") fixes, from its seed, a set S of K = `n_chains` Markov chains over V = `n_states`
states, every transition row drawn from Dirichlet(`dirichlet_alpha`). A training sequence picks a chain of S
uniformly, its first state from that chain's stationary distribution, then T - 1 transitions; an out-of-distribution
(OOD) sequence does the same with a fresh chain of its own, drawn from the same prior. The model is scored on the
next token at every position. Sampling is torch code driven by one `torch.Generator` (a training stream resumes
exactly); the chains come from numpy's Dirichlet sampler seeded by the task seed.

The model (`MarkovModel`) is an attention-only token transformer booted by transformer-lens 4.x
(`TransformerBridge.boot_native`: LayerNorm, learned absolute positions, d_vocab = V states, n_ctx = T), a
token_model.TokenModel, so every token-model analysis runs on it; training and logging use the hook-free
fast_forward.attention_logits over the same tensors (tests/test_fast_forward.py holds the two equal in logits and
gradients). `MarkovSeeds` trains one or more seeds (one model, Adam and data stream each): the task's learner.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..config import ModelConfig, RunConfig, TrainConfig, check
from ..errors import ConfigError
from ..fast_forward import attention_logits, bridge_weights
from ..learner import EVAL_SEED, Results, SeedModels
from ..model import check_weights_match
from ..sources import ModelShape, TokenBatch, source_key, token_batches
from ..token_model import TokenModel

@dataclass(frozen=True)
class MarkovTaskConfig:
    """The Markov task's config section (docs/reference.md, "Markov chains")."""

    n_chains: int = 64  # K: the training mixture's chains
    n_states: int = 10  # V: states (tokens)
    markov_len: int = 512  # T: tokens per sequence
    dirichlet_alpha: float = 1.0  # every transition row ~ Dirichlet(alpha)
    seed: int = 0  # seeds the chains
    kind: str = "markov"  # the task section's tag (coopinterp.tasks)

    @property
    def seq_len(self) -> int:
        return self.markov_len

    def validate(self) -> None:
        check(self.n_chains >= 1, f"n_chains must be >= 1, got {self.n_chains}")
        check(self.n_states >= 2, f"n_states must be >= 2, got {self.n_states}")
        check(self.markov_len >= 2, f"markov_len must be >= 2, got {self.markov_len}")
        check(self.dirichlet_alpha > 0 and math.isfinite(self.dirichlet_alpha),
              f"dirichlet_alpha must be finite and > 0, got {self.dirichlet_alpha}")


EVALUATORS = ("markov_id", "markov_ood")  # sequences from chains of S, and from fresh chains
OOD_STREAM = 1  # numpy seed-sequence branch of the fresh (OOD) chains, apart from S's


@dataclass(frozen=True)
class MarkovBatch(TokenBatch):
    """Token sequences of the Markov task, with what the exact predictors need: the training set S of chains and
    the Dirichlet prior (predictors.py)."""

    chains: Float[Tensor, "K V V"] | None = None
    alpha: float = 1.0


def dirichlet_chains(n: int, states: int, alpha: float, seed: int | tuple[int, ...]) -> Float[Tensor, "n V V"]:
    """n transition matrices, each row ~ Dirichlet(alpha), float64."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(states, alpha), size=(n, states)))


@functools.lru_cache(maxsize=8)
def _chains(states: int, n: int, alpha: float, seed: int) -> Float[Tensor, "K V V"]:
    return dirichlet_chains(n, states, alpha, seed)


def chains(task: MarkovTaskConfig) -> Float[Tensor, "K V V"]:
    """The task's training set S: K transition matrices P[k, i, j] = p(next j | state i), float64."""
    return _chains(task.n_states, task.n_chains, task.dirichlet_alpha, task.seed).clone()


def stationary(P: Float[Tensor, "*K V V"]) -> Float[Tensor, "*K V"]:
    """Each chain's stationary distribution pi (pi P = pi, sum 1): the solve of (P^T - I) pi = 0 with its last
    equation replaced by sum(pi) = 1 (unique for the dense chains a Dirichlet prior draws)."""
    V = P.shape[-1]
    A = P.transpose(-1, -2) - torch.eye(V, dtype=P.dtype)
    A[..., -1, :] = 1.0
    b = torch.zeros(*P.shape[:-1], dtype=P.dtype)
    b[..., -1] = 1.0
    return torch.linalg.solve(A, b).clamp(min=0)


def sample_sequences(P: Float[Tensor, "M V V"], which: Int[Tensor, " n"], T: int,
                     generator: torch.Generator) -> Int[Tensor, "n T"]:
    """n sequences of T states, sequence i from chain P[which[i]], started from its stationary distribution
    (inverse-CDF sampling: one uniform draw per token)."""
    device = generator.device
    cdf = P.to(device).cumsum(-1)[which]  # n V V
    start = stationary(P).to(device).cumsum(-1)[which]  # n V
    u = torch.rand(T, len(which), 1, generator=generator, device=device, dtype=P.dtype)
    V = P.shape[-1]
    tokens = torch.empty(T, len(which), dtype=torch.long, device=device)
    tokens[0] = (start <= u[0]).sum(-1).clamp(max=V - 1)  # the first state whose cumulative probability passes u
    rows = torch.arange(len(which), device=device)
    for t in range(1, T):
        tokens[t] = (cdf[rows, tokens[t - 1]] <= u[t]).sum(-1).clamp(max=V - 1)
    tokens = tokens.T.contiguous()
    return tokens


def sample_train(task: MarkovTaskConfig, n: int, generator: torch.Generator) -> Int[Tensor, "n T"]:
    """A training batch: each sequence from a chain of S chosen uniformly."""
    which = torch.randint(task.n_chains, (n,), generator=generator, device=generator.device)
    return sample_sequences(chains(task), which.cpu(), task.markov_len, generator)


def make_batch(task: MarkovTaskConfig, evaluator: str, n: int, seed: int) -> MarkovBatch:
    """n evaluation sequences (CPU): `markov_id` from chains of S, `markov_ood` each from a fresh chain (drawn from
    the prior with a stream of its own, a function of (task seed, seed))."""
    if evaluator not in EVALUATORS:
        raise ConfigError(f"unknown Markov evaluator {evaluator!r}; choose from {', '.join(EVALUATORS)}")
    g = torch.Generator().manual_seed(seed)
    S = chains(task)
    if evaluator == "markov_id":
        tokens = sample_sequences(S, torch.randint(task.n_chains, (n,), generator=g), task.markov_len, g)
    else:
        fresh = dirichlet_chains(n, task.n_states, task.dirichlet_alpha, (task.seed, OOD_STREAM, seed))
        tokens = sample_sequences(fresh, torch.arange(n), task.markov_len, g)
    return MarkovBatch(tokens, evaluator, chains=S, alpha=task.dirichlet_alpha)


def eval_batches(task: MarkovTaskConfig, n: int, seed: int, device: str = "cpu") -> dict[str, MarkovBatch]:
    """One batch per evaluator (in- and out-of-distribution), drawn on the CPU."""
    return {ev: make_batch(task, ev, n, seed + i).to(device) for i, ev in enumerate(EVALUATORS)}


def _boot(task: MarkovTaskConfig, cfg: ModelConfig) -> nn.Module:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    bridge_cfg = TransformerBridgeConfig(
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, d_head=cfg.d_head, attn_only=True,
        normalization_type="LN", d_vocab=task.n_states, n_ctx=task.markov_len,
        positional_embedding_type="standard", init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_native(bridge_cfg)


class MarkovModel(TokenModel, nn.Module):
    """Attention-only transformer over the task's V states, next-token logits at every position: a TokenModel (every
    token-model analysis applies) whose weights train."""

    model_kinds = ("markov", "tokens")  # the Markov analyses (strategy), then every token-model analysis

    def __init__(self, task: MarkovTaskConfig, cfg: ModelConfig, seed: int = 0):
        nn.Module.__init__(self)
        self.task, self.model_cfg, self.tokenizer = task, cfg, None
        self.bridge = _boot(task, cfg)
        self.cfg = self.bridge.cfg  # n_layers, n_heads, d_head, d_model, d_vocab, n_ctx (as TokenModel.cfg)
        self.reset_parameters(seed)

    def _linears(self) -> list[nn.Linear]:
        attn = [getattr(b.attn, m).original_component for b in self.bridge.blocks for m in ("q", "k", "v", "o")]
        return attn + [self.bridge.unembed.original_component]

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Linears lecun-normal ("paper") or torch's default, zero biases; token and position embeddings N(0, 0.02);
        LayerNorms at identity."""
        g = torch.Generator().manual_seed(seed)
        for lin in self._linears():
            if self.model_cfg.init == "paper":
                nn.init.normal_(lin.weight, std=lin.in_features ** -0.5, generator=g)
            else:
                nn.init.kaiming_uniform_(lin.weight, a=5 ** 0.5, generator=g)
            nn.init.zeros_(lin.bias)
        for emb in (self.bridge.embed.original_component.weight, self.bridge.pos_embed.original_component.weight):
            nn.init.normal_(emb, std=0.02, generator=g)
        for norm in [b.ln1.original_component for b in self.bridge.blocks] + [self.bridge.ln_final.original_component]:
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def fast_logits(self, tokens: Int[Tensor, "n pos"]) -> Float[Tensor, "n pos vocab"]:
        """The bridge's forward without hooks (training and logging): fast_forward.attention_logits, every position."""
        b = self.bridge
        h = b.embed.original_component.weight[tokens] + b.pos_embed.original_component.weight[: tokens.shape[1]]
        return attention_logits(bridge_weights(b), h, self.cfg.n_heads, b.ln_final.original_component.eps,
                                query_only=False)

    def weights(self) -> dict[str, Tensor]:
        """Every tensor of the bridge under TL's names: the checkpoint format."""
        return {k: v.detach() for k, v in self.bridge.state_dict().items()}

    @torch.no_grad()
    def load_weights(self, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
        own = self.weights()
        check_weights_match(own, weights, source)
        self.bridge.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=True)


def next_token_loss(logits: Float[Tensor, "n pos vocab"], tokens: Int[Tensor, "n pos"]) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting token p + 1 at every position p."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


class MarkovSeeds(SeedModels):
    """Models of one config, one per seed, each with its own Adam and data generator (a training.Learner)."""

    def __init__(self, config: RunConfig, seeds: list[int], device: str):
        if config.train.forgetting != "none":
            raise ConfigError("forgetting resets the exemplar task's embeddings; the Markov task has none")
        self.config, self.seeds, self.device = config, seeds, device
        self.models = [MarkovModel(config.task, config.model, seed=s).to(device) for s in seeds]
        self.opts = [torch.optim.Adam(m.parameters(), lr=config.train.lr) for m in self.models]
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    @torch.no_grad()
    def evaluate(self, batches: dict[str, MarkovBatch]) -> list[dict[str, dict[str, float]]]:
        return [{ev: {"loss": next_token_loss(m.fast_logits(b.tokens), b.tokens).item()} for ev, b in batches.items()}
                for m in self.models]

    def forget(self, step: int) -> None:
        raise ConfigError("the Markov task has no forgetting intervention")

    def train_step(self, step: int | None = None) -> None:
        for model, opt, gen in zip(self.models, self.opts, self.gens):
            tokens = sample_train(self.config.task, self.config.train.batch_size, gen)
            loss = next_token_loss(model.fast_logits(tokens), tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


PRESETS: dict[str, RunConfig] = {
    # The Markov-chain task (Park et al. 2024, scaled to a CPU; docs/reference.md "Markov chains"): K chains of S
    # over V states, the four algorithms' competition (analysis `strategy`) in minutes on one core.
    "markov": RunConfig(
        task=MarkovTaskConfig(n_chains=16, n_states=5, markov_len=64),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=32, d_head=16),
        train=TrainConfig(steps=4_000, batch_size=32, lr=3e-3, n_checkpoints=12, eval_every=100, eval_n=256),
        name="markov",
    ),
    # The Markov task in seconds; for tests and CI.
    "markov-tiny": RunConfig(
        task=MarkovTaskConfig(n_chains=4, n_states=3, markov_len=16),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8),
        train=TrainConfig(steps=60, batch_size=16, lr=3e-3, n_checkpoints=4, eval_every=20, eval_n=32),
        name="markov-tiny",
    ),
}


class MarkovTask:
    """The registry's view of the Markov task (tasks.Task): its own in- and out-of-distribution sequences by default
    (`--source markov`), or any token source (sources.py)."""

    kind = "markov"
    section = MarkovTaskConfig
    evaluators = EVALUATORS
    model_kinds = MarkovModel.model_kinds
    presets = PRESETS

    def build_model(self, config: RunConfig) -> MarkovModel:
        return MarkovModel(config.task, config.model, seed=config.train.seed)

    def batches(self, section: MarkovTaskConfig, source: str | None, n: int, seed: int,
                device: str) -> dict[str, TokenBatch]:
        if source in (None, "markov"):
            return eval_batches(section, n, seed, device)
        shape = ModelShape(d_vocab=section.n_states, n_ctx=section.markov_len, bos=None)
        return {name: b.to(device) for name, b in token_batches(source, shape, n, seed).items()}

    def source_key(self, source: str | None) -> str | None:
        return None if source in (None, "markov") else source_key(source)

    def learner(self, config: RunConfig, seeds: list[int] | None, device: str) -> MarkovSeeds:
        return MarkovSeeds(config, [config.train.seed] if seeds is None else seeds, device)

    def training_batches(self, config: RunConfig, device: str) -> dict[str, MarkovBatch]:
        return eval_batches(config.task, config.train.eval_n, EVAL_SEED, device)

    def progress(self, results: list[Results]) -> str:
        return "  ".join(f"{ev} loss {sum(r[ev]['loss'] for r in results) / len(results):.3f}" for ev in results[0])


TASK = MarkovTask()
