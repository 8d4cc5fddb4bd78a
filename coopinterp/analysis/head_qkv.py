"""Each head's query, key and value rebuilt from its own input stream, outside the bridge's forward.

transformer-lens gives every head its own q/k/v input (`use_split_qkv_input`) by copying the residual stream once
per head for each of q, k and v and running LayerNorm and the projection on every copy: at Pythia-70m's shape that
forward costs 2.3x a plain one, and its backward more. Edge patching changes the inputs of few heads, and edge
attribution needs each head's input gradient, which is the LayerNorm's vector-Jacobian product of that head's
output gradient through its weight rows. So the edge forwards run the plain bridge and do these per-head steps here,
with the LayerNorm module and the weight rows the bridge's own split forward uses (it keeps them as
`attn._ln1_module` and `attn.{q,k,v}.original_component`). `HeadQKV.of` returns None for a bridge without them, and
`matches` checks the rebuilt outputs against a forward's own before any result relies on them; where either fails,
the edge forwards use the split forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..token_model import TokenModel

COMPONENTS = ("q", "k", "v")
TOLERANCE = 1e-4  # of the largest |output|: float32 sums in another order differ by ~1e-6


@dataclass
class HeadQKV:
    """Per layer, the LayerNorm the heads read through, and per (layer, component) each head's weight and bias."""

    norms: list[nn.Module | None]
    weights: dict[tuple[int, str], Float[Tensor, "head d_model d_head"]]
    biases: dict[tuple[int, str], Float[Tensor, "head d_head"] | None]

    @classmethod
    def of(cls, model: TokenModel) -> "HeadQKV | None":
        cfg = model.bridge.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        norms, weights, biases = [], {}, {}
        for layer, block in enumerate(model.bridge.blocks):
            attn = block.attn
            norms.append(getattr(attn, "_ln1_module", None))
            for component in COMPONENTS:
                linear = getattr(getattr(attn, component, None), "original_component", None)
                if type(linear) is not nn.Linear:
                    return None
                heads = cfg.n_heads if component == "q" else n_kv
                if linear.weight.shape != (heads * cfg.d_head, cfg.d_model):
                    return None
                weights[(layer, component)] = linear.weight.view(heads, cfg.d_head, cfg.d_model).transpose(1, 2)
                biases[(layer, component)] = None if linear.bias is None else linear.bias.view(heads, cfg.d_head)
        return cls(norms, weights, biases)

    def normed(self, layer: int, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        norm = self.norms[layer]
        return x if norm is None else norm(x)

    def project(self, layer: int, component: str, x: Float[Tensor, "m n pos d_model"],
                heads: Int[Tensor, " m"]) -> Float[Tensor, "m n pos d_head"]:
        """Head heads[i]'s `component` from input stream x[i] (before the LayerNorm)."""
        m, n, pos, d_model = x.shape
        out = torch.bmm(self.normed(layer, x).view(m, n * pos, d_model), self.weights[(layer, component)][heads])
        bias = self.biases[(layer, component)]
        out = out if bias is None else out + bias[heads][:, None]
        return out.view(m, n, pos, -1)

    def matches(self, layer: int, component: str, x: Float[Tensor, "n pos d_model"],
                out: Float[Tensor, "n pos head d_head"]) -> bool:
        """Whether every head's output rebuilt from the stream x is the forward's own `out`."""
        heads = torch.arange(out.shape[2], device=x.device)
        rebuilt = self.project(layer, component, x.expand(len(heads), *x.shape), heads).permute(1, 2, 0, 3)
        return bool((rebuilt - out).abs().max() <= TOLERANCE * max(1.0, out.abs().max().item()))

    def input_grads(self, layer: int, component: str, x: Float[Tensor, "n pos d_model"],
                    grad: Float[Tensor, "n pos head d_head"]) -> Float[Tensor, "head n pos d_model"]:
        """The gradient at each head's own input stream (before the LayerNorm, at x) from the gradient at its
        output: back through its weight rows, then the LayerNorm's vector-Jacobian product at x."""
        back = torch.einsum("ntre,rde->rntd", grad, self.weights[(layer, component)])
        norm = self.norms[layer]
        if norm is None:
            return back
        _, vjp = torch.func.vjp(norm, x.detach())
        return torch.vmap(vjp)(back)[0]
