"""Head ablations on the batched engine: every head alone (the `ablation` analysis) or any sets of heads together,
with a one-hook-per-set transformer-lens reference (`ablate_hooked`)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..config import ModelConfig
from ..model import CoopModel
from ..task import Batch
from .engine import (
    MODES,
    Engine,
    Head,
    Zs,
    check_mode,
    head_masks,
    masked_edit,
    replacement,
)
from .record import Analysis


@torch.no_grad()
def ablated_hidden(model: CoopModel, batch: Batch, head_sets: Sequence[Sequence[Head]], mode: str = "mean",
                   seed: int = 0, engine: Engine | None = None) -> Float[Tensor, "sets n d_model"]:
    """The unembedding's input at the query with each set of heads ablated together, in one batched pass."""
    check_mode(mode)
    engine = engine or Engine(model)
    resid = model.residual(batch)
    _, clean_z = engine.forward(resid)
    values = [replacement(z, mode, seed) for z in clean_z]
    hidden, _ = engine.forward(resid, edit_z=masked_edit(head_masks(head_sets, model.cfg), values))
    return hidden.expand(len(head_sets), *hidden.shape[-2:])


def ablate(model: CoopModel, batch: Batch, head_sets: Sequence[Sequence[Head]], mode: str = "mean",
           seed: int = 0) -> Float[Tensor, "sets n labels"]:
    """Logits at the query with each set of heads ablated together (mode zero | mean | resample)."""
    engine = Engine(model)
    with torch.no_grad():
        return engine.logits(ablated_hidden(model, batch, head_sets, mode, seed, engine))


def all_heads(cfg: ModelConfig) -> list[Head]:
    return [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]


@torch.no_grad()
def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    """Every head ablated alone, in every mode: acc and loss on every evaluator."""
    engine, heads, out = Engine(model), all_heads(model.cfg), []
    masks = head_masks([[h] for h in heads], model.cfg)
    for ev, batch in batches.items():
        resid = model.residual(batch)
        _, clean_z = engine.forward(resid)
        for mode in MODES:
            hidden, _ = engine.forward(resid, edit_z=masked_edit(masks, [replacement(z, mode) for z in clean_z]))
            acc, ce = engine.score(hidden, batch)
            for (layer, head), a, c in zip(heads, acc.tolist(), ce.tolist()):
                base = {"evaluator": ev, "layer": layer, "head": head, "component": mode}
                out += [{**base, "metric": "acc", "value": a}, {**base, "metric": "loss", "value": c}]
    return out


def hooked_replacements(model: CoopModel, batch: Batch, mode: str, seed: int = 0) -> Zs:
    """Reference: each layer's `hook_z` replacement, from a TL cache of the clean run."""
    names = [get_act_name("z", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=names)
    return [replacement(cache[name], mode, seed) for name in names]


@torch.no_grad()
def ablate_hooked(model: CoopModel, batch: Batch, heads: Sequence[Head],
                  values: Zs) -> Float[Tensor, "n labels"]:
    """Reference: one TL forward with `hook_z` hooks writing `values` (from `hooked_replacements`) into `heads`."""
    def write(z: Tensor, hook, layer: int) -> Tensor:
        picked = [h for at, h in heads if at == layer]
        z[:, :, picked] = values[layer][:, :, picked]
        return z

    layers = sorted({layer for layer, _ in heads})
    return model.run_with_hooks(batch, fwd_hooks=[(get_act_name("z", layer), partial(write, layer=layer))
                                                  for layer in layers])


ANALYSIS = Analysis("ablation", 1, rows, "every head ablated alone (zero, mean, resample): accuracy and loss",
                    figures=("ablation", "ablation_heatmap_icl"))
