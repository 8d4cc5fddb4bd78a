"""Q-, K- and V-composition between heads of different layers (Elhage et al. 2021), with a random baseline.

score(src -> dst) = ||W_OV(src) W(dst)||_F / (||W_OV(src)||_F ||W(dst)||_F), where W(dst) is W_QK (q), W_QK^T (k)
or W_OV (v) in TL's right-multiplying convention (x @ W): the source head writes into the residual stream
that the destination head's query, key or value reads. Computed by TL's own
`TransformerBridge.all_composition_scores` on the raw weights (LayerNorm scales are not folded in).

Even unrelated random matrices score well above 0, so each checkpoint also gets `{q,k,v}_composition_baseline`
rows (layer and head NA): the mean score of i.i.d. Gaussian matrices of the same shapes (the score is scale
free), estimated from `BASELINE_SAMPLES` draws with a fixed seed (`factored_score`: the same score, computed
without forming d_model x d_model products). Scores well above it indicate composition.
"""
from __future__ import annotations

import functools

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch
from .record import Analysis

MODES = ("q", "k", "v")
BASELINE_SAMPLES = 1_000


def scores(model: CoopModel | TokenModel, mode: str) -> Float[Tensor, "src_layer src_head layer head"]:
    """TL's composition scores of every head pair; zero unless src_layer < layer."""
    return model.bridge.all_composition_scores(mode.upper()).scores


def factored_score(left_a: Float[Tensor, "*n d r"], left_b: Float[Tensor, "*n r d"], right_a: Float[Tensor, "*n d r"],
                   right_b: Float[Tensor, "*n r d"]) -> Float[Tensor, "*n"]:
    """||L R||_F / (||L||_F ||R||_F) for L = left_a @ left_b and R = right_a @ right_b, through r x r matrices only.

    Hand-written beside TL's `composition_scores` (which the model's own scores use) because that one forms
    d_model x d_model products: 1,000 random pairs at d_model 512 took 45 s a mode. Here ||A B||_F^2 =
    sum((A^T A) * (B B^T)) for A of width r and B of height r, so nothing larger than d_model x r is formed."""
    def sq_norm(a, b):  # ||a @ b||_F^2
        return ((a.transpose(-2, -1) @ a) * (b @ b.transpose(-2, -1))).sum((-2, -1))

    middle = left_b @ right_a  # L R = left_a @ middle @ right_b
    gram = middle.transpose(-2, -1) @ (left_a.transpose(-2, -1) @ left_a) @ middle  # (left_a middle)^T (left_a middle)
    product = (gram * (right_b @ right_b.transpose(-2, -1))).sum((-2, -1))
    return (product / sq_norm(left_a, left_b) / sq_norm(right_a, right_b)).sqrt()


@functools.lru_cache(maxsize=8)
def random_baseline(d_model: int, d_head: int, mode: str, samples: int = BASELINE_SAMPLES, seed: int = 0) -> float:
    """Expected score for i.i.d. Gaussian W_V, W_O (source) and W_Q, W_K or W_V, W_O (destination)."""
    g = torch.Generator().manual_seed(seed)
    tall, wide = (samples, d_model, d_head), (samples, d_head, d_model)
    src_v, src_o = torch.randn(tall, generator=g), torch.randn(wide, generator=g)
    if mode == "v":
        dst_a, dst_b = torch.randn(tall, generator=g), torch.randn(wide, generator=g)
    else:
        w_q, w_k = torch.randn(tall, generator=g), torch.randn(tall, generator=g)
        dst_a, dst_b = (w_q, w_k.transpose(-2, -1)) if mode == "q" else (w_k, w_q.transpose(-2, -1))  # k: W_QK^T
    return factored_score(src_v, src_o, dst_a, dst_b).mean().item()


def rows(model: CoopModel | TokenModel, batches: dict[str, Batch] | dict[str, TokenBatch]) -> list[dict]:
    cfg = model.cfg
    out = []
    for mode in MODES:
        s = scores(model, mode).tolist()
        out += [{"metric": f"{mode}_composition", "src_layer": sl, "src_head": sh, "layer": dl, "head": dh,
                 "value": s[sl][sh][dl][dh]}
                for sl in range(cfg.n_layers) for dl in range(sl + 1, cfg.n_layers)
                for sh in range(cfg.n_heads) for dh in range(cfg.n_heads)]
        if cfg.n_layers > 1:
            out.append({"metric": f"{mode}_composition_baseline",
                        "value": random_baseline(cfg.d_model, cfg.d_head, mode)})
    return out


def headline(rows: pd.DataFrame) -> str:
    best = rows[~rows.metric.str.endswith("_baseline")].groupby("metric").value.max()
    base = rows[rows.metric.str.endswith("_baseline")].value.mean()
    return "max " + " ".join(f"{m} {v:.2f}" for m, v in best.items()) + f" (random {base:.2f})"


ANALYSIS = Analysis("composition", 1, {"exemplar": rows, "tokens": rows}, "Q/K/V composition scores of every head "
                    "pair across layers, with a random baseline", headline=headline)
