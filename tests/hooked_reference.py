"""Transformer-lens references for the batched intervention engine: one hooked forward per head, path or clamp.

Slow and obvious on purpose: tests/test_interventions.py and benchmarks/bench_analysis.py hold the engine's
ablation, path patching and clamping equal to these (they live beside the tests, not in the package).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from coopinterp.analysis import clamping as C
from coopinterp.analysis.engine import Head, Zs, check_head, replacement
from coopinterp.analysis.patching import COMPONENTS
from coopinterp.model import CoopModel
from coopinterp.task import Batch


@torch.no_grad()
def ablate_hooked(model: CoopModel, batch: Batch, heads: Sequence[Head],
                  values: Zs) -> Float[Tensor, "n labels"]:
    """Reference: one TL forward with `hook_z` hooks writing `values` (from `ablation.z_replacements`) into `heads`."""
    def write(z: Tensor, hook, layer: int) -> Tensor:
        picked = [h for at, h in heads if at == layer]
        z[:, :, picked] = values[layer][:, :, picked]
        return z

    layers = sorted({layer for layer, _ in heads})
    return model.run_with_hooks(batch, fwd_hooks=[(get_act_name("z", layer), partial(write, layer=layer))
                                                  for layer in layers])


@torch.no_grad()
def sender_inputs_hooked(model: CoopModel, batch: Batch, senders: Sequence[int],
                         values: Float[Tensor, "n pos head d_head"]) -> dict[str, Float[Tensor, "n pos head d_head"]]:
    """Reference: one TL forward with the senders' `hook_z` set to `values`; records layer 1's hook_q/k/v.

    The model itself recomputes layer 1's LayerNorm on the patched stream.
    """
    store: dict[str, Tensor] = {}

    def patch(z: Tensor, hook) -> Tensor:
        z[:, :, list(senders)] = values[:, :, list(senders)]
        return z

    def record(x: Tensor, hook, c: str) -> None:
        store[c] = x.clone()

    model.run_with_hooks(batch, fwd_hooks=[(get_act_name("z", 0), patch)]
                         + [(get_act_name(c, 1), partial(record, c=c)) for c in COMPONENTS])
    return store


@torch.no_grad()
def receive_hooked(model: CoopModel, batch: Batch, receivers: Sequence[int], component: str,
                   inputs: dict[str, Float[Tensor, "n pos head d_head"]], extra_hooks=()) -> Float[Tensor, "n labels"]:
    """Reference: one clean TL forward whose receivers take their `component` input(s) from `inputs`
    (`extra_hooks`, e.g. a direct-path cut, run beside them)."""
    def put(x: Tensor, hook, c: str) -> Tensor:
        x[:, :, list(receivers)] = inputs[c][:, :, list(receivers)]
        return x

    hooks = [(get_act_name(c, 1), partial(put, c=c)) for c in component]
    return model.run_with_hooks(batch, fwd_hooks=hooks + list(extra_hooks))


@torch.no_grad()
def copier_hooked(model: CoopModel, batch: Batch, head: Head, s: float) -> Float[Tensor, "n labels"]:
    """Reference: one TL forward that clamps `head`'s row, zeroes the other heads of its layer and feeds the
    final LayerNorm that layer's attention output alone (no embedding path, no earlier layer)."""
    layer, h = C._check_last_layer(model, head)
    row = C.clamp_row(batch, torch.tensor([s]))[0]
    store: dict[str, Tensor] = {}

    def clamp(pattern: Tensor, hook) -> Tensor:
        pattern[:, h, -1] = row
        return pattern

    def zero_others(z: Tensor, hook) -> Tensor:
        keep = torch.zeros(z.shape[2], dtype=torch.bool)
        keep[h] = True
        return torch.where(keep[:, None], z, torch.zeros_like(z))

    def record(x: Tensor, hook) -> None:
        store["attn_out"] = x.clone()

    def only_head(x: Tensor, hook) -> Tensor:
        return store["attn_out"]

    return model.run_with_hooks(batch, fwd_hooks=[
        (get_act_name("pattern", layer), clamp), (get_act_name("z", layer), zero_others),
        (get_act_name("attn_out", layer), record), ("ln_final.hook_in", only_head)])


@torch.no_grad()
def clamp_hooked(model: CoopModel, batch: Batch, head: Head, s: float, ablate: Sequence[Head] | None = None,
                 mode: str = "mean") -> Float[Tensor, "n labels"]:
    """Reference: one TL forward with a `hook_pattern` hook clamping the row and `hook_z` hooks ablating."""
    layer, h = check_head(head, model.cfg)
    others = C._others(model, head, ablate)
    names = [get_act_name("z", at) for at in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(batch, names_filter=names)
    row = C.clamp_row(batch, torch.tensor([s]))[0]

    def clamp(pattern: Tensor, hook) -> Tensor:
        pattern[:, h, -1] = row
        return pattern

    def ablate_z(z: Tensor, hook, at: int) -> Tensor:
        picked = [o for al, o in others if al == at]
        z[:, :, picked] = replacement(cache[names[at]], mode)[:, :, picked]
        return z

    hooks = [(get_act_name("pattern", layer), clamp)]
    hooks += [(names[at], partial(ablate_z, at=at)) for at in sorted({al for al, _ in others})]
    return model.run_with_hooks(batch, fwd_hooks=hooks)
