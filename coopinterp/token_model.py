"""TokenModel: a transformer-lens bridge over token ids, the model every token-model analysis reads.

Hugging Face checkpoints boot into one (runs/huggingface.py); the Markov task's model is one (tasks/markov.py).
"""
from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from .sources import TokenBatch


class TokenModel:
    """A token model from one checkpoint folder: the transformer-lens bridge and the shape analyses need."""

    model_kinds = ("tokens",)  # the analyses' row functions it takes (analysis/record.py)

    def __init__(self, bridge, tokenizer):
        self.bridge, self.tokenizer = bridge, tokenizer
        self.cfg = bridge.cfg  # n_layers, n_heads, d_head, d_model, d_vocab, n_ctx

    def __call__(self, batch: TokenBatch) -> Float[Tensor, "n pos vocab"]:
        return self.bridge(batch.tokens)

    def run_with_cache(self, batch: TokenBatch, **kwargs):
        return self.bridge.run_with_cache(batch.tokens, **kwargs)

    def run_with_hooks(self, batch: TokenBatch, fwd_hooks=(), **kwargs) -> Float[Tensor, "n pos vocab"]:
        return self.bridge.run_with_hooks(batch.tokens, fwd_hooks=list(fwd_hooks), **kwargs)

    def parameters(self):
        return self.bridge.parameters()

    def trained_parameters(self) -> list:
        """What training optimises: every parameter of the bridge."""
        return list(self.bridge.parameters())
