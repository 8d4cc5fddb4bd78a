"""The training forward of every attention-only model here, one function for one model and for S stacked models.

Both models (CoopModel, MarkovModel) are transformer-lens bridges of pre-LN attention-only blocks:

    x = LN1(h);  h = h + O(attention(Q x, K x, V x))        (q, k, v, o linears with bias, causal softmax)
    logits = U LN_final(h) + b_U

`attention_logits` computes that from the residual stream entering block 0 (each model builds its own: exemplar and
label embeddings, or token embeddings, plus positions) and the weights under their `weights()` (checkpoint) names.
It runs on the very tensors it is given, so gradients reach the parameters: `bridge_weights` hands out a bridge's
own parameters under those names, multiseed.SeedStack its stacked `[S, ...]` tensors.

Weights with a leading seed dim (LayerNorm weight `[S, d]`, linear weight `[S, d_out, d_in]`) run S models at once
on a stream `[S, n, pos, d]`, each model on its own slice, as batched matmuls (`baddbmm`); without it, the same
steps run with `F.linear` and `F.layer_norm`, the single-seed training step's kernels. Attention has no weights,
so the seed dim folds into the batch dim there.

`query_only=True` (the exemplar task: its loss reads only the query, the last position) computes only the last
position in the last block (its query row, its output and the final LayerNorm and unembedding) and returns
`[..., n, vocab]`; `query_only=False` (the Markov task: a next-token loss at every position) returns every
position's logits `[..., n, pos, vocab]`.

Hand-written rather than the bridge's forward because the hook wrappers double a training step's cost (docs/speed.md);
tests/test_fast_forward.py holds the two equal in logits and gradients with every weight random.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

BLOCK_WEIGHTS = ("ln1.weight", "ln1.bias", *(f"attn.{m}.{p}" for m in "qkvo" for p in ("weight", "bias")))


def bridge_weights(bridge: nn.Module) -> dict[str, Tensor]:
    """The parameters (live, not copies) that `attention_logits` reads, under their `weights()` names."""
    w: dict[str, Tensor] = {}
    for i, block in enumerate(bridge.blocks):
        ln = block.ln1.original_component
        w[f"blocks.{i}.ln1.weight"], w[f"blocks.{i}.ln1.bias"] = ln.weight, ln.bias
        for m in "qkvo":
            lin = getattr(block.attn, m).original_component
            w[f"blocks.{i}.attn.{m}.weight"], w[f"blocks.{i}.attn.{m}.bias"] = lin.weight, lin.bias
    ln, head = bridge.ln_final.original_component, bridge.unembed.original_component
    w["ln_final.weight"], w["ln_final.bias"] = ln.weight, ln.bias
    w["unembed.weight"], w["unembed.bias"] = head.weight, head.bias
    return w


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """LayerNorm of `x` over its last dim: one model's (`w`, `b`: `[d]`) or S models' (`[S, d]`, `x`: `[S, ..., d]`)."""
    if w.dim() == 1:
        return F.layer_norm(x, x.shape[-1:], w, b, eps)
    shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[1],)  # [S, d] against [S, ..., d]
    return torch.addcmul(b.view(shape), F.layer_norm(x, x.shape[-1:], eps=eps), w.view(shape))


def linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """`x W^T + b`: one model's (`w`: `[d_out, d_in]`) or S models' (`[S, d_out, d_in]`, `x`: `[S, ..., d_in]`)."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    y = torch.baddbmm(b[:, None], x.flatten(1, -2), w.mT)  # [S, ..., d_in] -> [S, rows, d_out]
    return y.unflatten(1, x.shape[1:-1])


def _unembed(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    if w.dim() == 2:
        return F.linear(x, w, b)
    # (W_U x^T)^T rather than x W_U^T: W_U's gradient then comes out in W_U's own layout (no transposing copy)
    y = torch.baddbmm(b[:, :, None], w, x.flatten(1, -2).mT).mT
    return y.unflatten(1, x.shape[1:-1])


def _heads(t: Float[Tensor, "*lead pos d_attn"], n_heads: int) -> Float[Tensor, "batch n_heads pos d_head"]:
    return t.reshape(-1, t.shape[-2], n_heads, t.shape[-1] // n_heads).transpose(1, 2)


def attention_logits(w: Mapping[str, Tensor], h: Float[Tensor, "*lead pos d_model"], n_heads: int, eps: float,
                     query_only: bool) -> Float[Tensor, "*lead_and_pos vocab"]:
    """Logits of the blocks and unembedding in `w` on the stream `h` entering block 0 (module docstring).

    `w`: `weights()`-named tensors, all with a leading seed dim S (then `h` is `[S, n, pos, d]`) or none.
    Returns `[..., n, vocab]` at the last position if `query_only`, else `[..., n, pos, vocab]`.
    """
    lead = h.shape[:-2]
    n_layers = sum(1 for k in w if k.endswith(".ln1.weight"))
    for i in range(n_layers):
        p = f"blocks.{i}."
        x = layer_norm(h, w[p + "ln1.weight"], w[p + "ln1.bias"], eps)
        last = query_only and i == n_layers - 1
        q = linear(x[..., -1:, :] if last else x, w[p + "attn.q.weight"], w[p + "attn.q.bias"])
        k = linear(x, w[p + "attn.k.weight"], w[p + "attn.k.bias"])
        v = linear(x, w[p + "attn.v.weight"], w[p + "attn.v.bias"])
        # the last block's single query row attends to every position: no mask needed
        z = F.scaled_dot_product_attention(_heads(q, n_heads), _heads(k, n_heads), _heads(v, n_heads),
                                           is_causal=not last)
        z = z.transpose(1, 2).reshape(*lead, q.shape[-2], q.shape[-1])
        out = linear(z, w[p + "attn.o.weight"], w[p + "attn.o.bias"])
        h = h[..., -1:, :] + out if last else h + out
    if query_only:
        h = h[..., -1, :]
    return _unembed(layer_norm(h, w["ln_final.weight"], w["ln_final.bias"], eps), w["unembed.weight"],
                    w["unembed.bias"])
