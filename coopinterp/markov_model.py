"""The Markov task's model, its trainer and its runs.

`MarkovModel`: an attention-only token transformer booted by transformer-lens 4.x (`TransformerBridge.boot_native`:
LayerNorm, learned absolute positions, d_vocab = V states, n_ctx = T), an outside.TokenModel (`bridge`, `cfg`,
`kind == "tokens"`, called on a TokenBatch), so every token-model analysis runs on it unchanged.
Training uses `fast_logits`, a plain-torch forward over the same tensors (the bridge's hooks cost time a training
step does not need); a test holds the two equal.

`MarkovSeeds`: a training.Learner of one or more seeds (one independent model, Adam and data stream each), so
`train` and `train --seeds` share training.run_loop with the exemplar task: same run directory, resume, schedule.
`MarkovRun`: a run directory of this task; its default data source is the task's own ID and OOD sequences.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .checkpoints import ResumeState, Run, checkpoint_path, load_tensors, save_checkpoint
from .config import ModelConfig, RunConfig, TaskConfig
from .errors import ConfigError
from .markov import EVALUATORS, MarkovBatch, check_markov, eval_batches, sample_train
from .model import check_weights_match
from .outside import TokenModel
from .sources import ModelShape, TokenBatch, source_key, token_batches

EVAL_SEED = 10_000  # the evaluation batches logged during training (training.EVAL_SEED's role)


def _boot(task: TaskConfig, cfg: ModelConfig) -> nn.Module:
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

    def __init__(self, task: TaskConfig, cfg: ModelConfig, seed: int = 0):
        nn.Module.__init__(self)
        check_markov(task)
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
        """The bridge's forward, hand-written without hooks (training and logging)."""
        b = self.bridge
        h = b.embed.original_component.weight[tokens] + b.pos_embed.original_component.weight[: tokens.shape[1]]
        n, T, d = h.shape
        H, dh = self.cfg.n_heads, self.cfg.d_head
        for block in b.blocks:
            ln = block.ln1.original_component
            x = F.layer_norm(h, (d,), ln.weight, ln.bias, ln.eps)
            q, k, v = (F.linear(x, lin.weight, lin.bias).view(n, T, H, dh).transpose(1, 2)
                       for lin in (getattr(block.attn, m).original_component for m in ("q", "k", "v")))
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
            o = block.attn.o.original_component
            h = h + F.linear(z, o.weight, o.bias)
        ln, head = b.ln_final.original_component, b.unembed.original_component
        return F.linear(F.layer_norm(h, (d,), ln.weight, ln.bias, ln.eps), head.weight, head.bias)

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


class MarkovSeeds:
    """Models of one config, one per seed, each with its own Adam and data generator (a training.Learner)."""

    def __init__(self, config: RunConfig, seeds: list[int], device: str):
        check_markov(config.task)
        if config.train.forgetting != "none":
            raise ConfigError("forgetting resets the exemplar task's embeddings; the Markov task has none")
        self.config, self.seeds, self.device = config, seeds, device
        self.models = [MarkovModel(config.task, config.model, seed=s).to(device) for s in seeds]
        self.opts = [torch.optim.Adam(m.parameters(), lr=config.train.lr) for m in self.models]
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def load_state(self, j: int, run_dir: Path) -> int:
        return ResumeState(run_dir).load(self.models[j], self.opts[j], self.gens[j])

    def save_state(self, j: int, run_dir: Path, step: int) -> None:
        ResumeState(run_dir).save(step, self.models[j], self.opts[j], self.gens[j])

    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None:
        t = self.config.train
        save_checkpoint(run_dir, self.models[j], step, step * t.batch_size, t.checkpoint_dtype)

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


def training_batches(config: RunConfig, device: str) -> dict[str, MarkovBatch]:
    """The fixed batches whose loss is logged to metrics.parquet."""
    return eval_batches(config.task, config.train.eval_n, EVAL_SEED, device)


class MarkovRun(Run):
    """A run of the Markov task: token-model analyses plus the Markov ones, on its own ID and OOD sequences by
    default (`--source markov`), or on any token source (sources.py)."""

    kind = "markov"

    def source_key(self, source: str | None) -> str | None:
        return None if source in (None, "markov") else source_key(source)

    def batches(self, source: str | None, n: int, seed: int) -> dict[str, TokenBatch]:
        if source in (None, "markov"):
            return eval_batches(self.config.task, n, seed, self.device)
        task = self.config.task
        found = token_batches(source, ModelShape(d_vocab=task.n_states, n_ctx=task.markov_len, bos=None), n, seed)
        return {name: b.to(self.device) for name, b in found.items()}

    def model(self, step: int) -> MarkovModel:
        self.check_step(step)
        if step not in self._models:
            weights, _ = load_tensors(checkpoint_path(self.path, step))
            model = MarkovModel(self.config.task, self.config.model, seed=self.config.train.seed)
            model.load_weights({k: v.float() for k, v in weights.items()}, source=str(checkpoint_path(self.path, step)))
            self._models[step] = model.to(self.device).eval().requires_grad_(False)
            while len(self._models) > self.cache_size:
                self._models.popitem(last=False)
        self._models.move_to_end(step)
        return self._models[step]


__all__ = ["EVALUATORS", "MarkovModel", "MarkovRun", "MarkovSeeds", "training_batches"]
