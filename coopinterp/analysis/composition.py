"""Q-, K- and V-composition between heads of different layers (Elhage et al. 2021), with a random baseline.

score(src -> dst) = ||W_OV(src) W(dst)||_F / (||W_OV(src)||_F ||W(dst)||_F), where W(dst) is W_QK (q), W_QK^T (k)
or W_OV (v) in TL's right-multiplying convention (x @ W): the source head writes into the residual stream
that the destination head's query, key or value reads. Computed by TL's own
`TransformerBridge.all_composition_scores` on the raw weights (LayerNorm scales are not folded in).

Even unrelated random matrices score well above 0, so each checkpoint also gets `{q,k,v}_composition_baseline`
rows (layer and head NA): the mean score of i.i.d. Gaussian matrices of the same shapes (the score is scale
free), estimated from `BASELINE_SAMPLES` draws with a fixed seed. Scores well above it indicate composition.
"""
from __future__ import annotations

import functools

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import composition_scores

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


@functools.lru_cache(maxsize=8)
def random_baseline(d_model: int, d_head: int, mode: str, samples: int = BASELINE_SAMPLES, seed: int = 0) -> float:
    """Expected score for i.i.d. Gaussian W_V, W_O (source) and W_Q, W_K or W_V, W_O (destination)."""
    g = torch.Generator().manual_seed(seed)
    tall, wide = (samples, d_model, d_head), (samples, d_head, d_model)
    src_ov = FactoredMatrix(torch.randn(tall, generator=g), torch.randn(wide, generator=g))
    if mode == "v":
        dst = FactoredMatrix(torch.randn(tall, generator=g), torch.randn(wide, generator=g))
    else:
        dst = FactoredMatrix(torch.randn(tall, generator=g), torch.randn(tall, generator=g).transpose(-2, -1))
        dst = dst.T if mode == "k" else dst
    return composition_scores(src_ov, dst, broadcast_dims=False).mean().item()


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
