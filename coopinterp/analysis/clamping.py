"""Attention clamping (the paper's skip-trigram copier test) and weight grafting between checkpoints.

Clamping: in one head's query row (`hook_pattern`, which the bridge applies before the value matmul) put
attention s on the label(s) equal to the evaluator's target and 1 - s on the other label(s), zero elsewhere;
the other heads of that layer are mean-ablated so that the head alone carries the answer. Layer 0 stays
clean by default: it only shapes the values the head reads (pass `ablate=` to change that). On `ciwl` a pure
copier then scores accuracy rising with the margin 2s - 1 (chance at s = 0.5). `rows` sweeps s in
{0, 0.1, ..., 1} for the last layer's most skip-trigram-like head (largest clean A[q, true label] -
A[q, other label] on the ciwl batch): one head keeps it to one batched pass per checkpoint.

Grafting: a copy of a recipient model with some parameter groups taken from a donor (e.g. layer 0 of an
ICL checkpoint into a CIWL one), to ask which weights carry a strategy.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import ConfigError
from ..model import CoopModel
from ..task import Batch
from .ablation import Engine, Head, check_head, check_mode, masked_edit, replacement

S_VALUES = tuple(i / 10 for i in range(11))


def clamp_row(batch: Batch, s: Float[Tensor, " s"]) -> Float[Tensor, "s n pos"]:
    """The clamped query row: s spread over the target's label position(s), 1 - s over the other labels."""
    correct = (batch.labels == batch.target[:, None]).float()
    if not (correct.any(1) & (1 - correct).any(1)).all():
        raise ConfigError(f"clamping needs the target and another label in every context; "
                          f"the {batch.evaluator!r} batch does not have them (use ciwl)")
    share = s[:, None, None] * correct / correct.sum(1, keepdim=True)
    share = share + (1 - s[:, None, None]) * (1 - correct) / (1 - correct).sum(1, keepdim=True)
    row = torch.zeros(len(s), len(batch), batch.exemplars.shape[1] + batch.labels.shape[1])
    row[..., batch.label_positions()] = share
    return row


def _others(model: CoopModel, head: Head, ablate: Sequence[Head] | None) -> list[Head]:
    layer, h = head
    return [(layer, o) for o in range(model.cfg.n_heads) if o != h] if ablate is None else list(ablate)


@torch.no_grad()
def clamp_sweep(model: CoopModel, batch: Batch, head: Head, s: Sequence[float] = S_VALUES,
                ablate: Sequence[Head] | None = None, mode: str = "mean") -> tuple[Float[Tensor, " s"],
                                                                                  Float[Tensor, " s"]]:
    """Accuracy and loss with `head`'s query row clamped to each s, `ablate` heads (default: the rest of
    its layer) ablated; all values of s in one batched pass."""
    layer, h = check_head(head, model.cfg)
    check_mode(mode)
    engine = Engine(model)
    resid = model.residual(batch)
    _, clean_z = engine.forward(resid)
    masks = torch.zeros(1, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for other in _others(model, head, ablate):
        masks[(0, *check_head(other, model.cfg))] = True
    row = clamp_row(batch, torch.tensor(list(s), dtype=resid.dtype))

    def edit_pattern(at: int, pattern: Tensor) -> Tensor:
        if at != layer:
            return pattern
        pattern = pattern.expand(len(row), *pattern.shape[-4:]).clone()
        pattern[:, :, h, -1] = row
        return pattern

    values = [replacement(z, mode) for z in clean_z]
    hidden, _ = engine.forward(resid, edit_z=masked_edit(masks, values), edit_pattern=edit_pattern)
    return engine.score(hidden, batch)


@torch.no_grad()
def clamp_hooked(model: CoopModel, batch: Batch, head: Head, s: float, ablate: Sequence[Head] | None = None,
                 mode: str = "mean") -> Float[Tensor, "n labels"]:
    """Reference: one TL forward with a `hook_pattern` hook clamping the row and `hook_z` hooks ablating."""
    layer, h = check_head(head, model.cfg)
    others = _others(model, head, ablate)
    names = [f"blocks.{at}.attn.hook_z" for at in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(batch, names_filter=names)
    row = clamp_row(batch, torch.tensor([s]))[0]

    def clamp(pattern: Tensor, hook) -> Tensor:
        pattern[:, h, -1] = row
        return pattern

    def ablate_z(z: Tensor, hook, at: int) -> Tensor:
        picked = [o for al, o in others if al == at]
        z[:, :, picked] = replacement(cache[names[at]], mode)[:, :, picked]
        return z

    hooks = [(f"blocks.{layer}.attn.hook_pattern", clamp)]
    hooks += [(names[at], partial(ablate_z, at=at)) for at in sorted({al for al, _ in others})]
    return model.run_with_hooks(batch, fwd_hooks=hooks)


@torch.no_grad()
def skip_trigram_head(model: CoopModel, batch: Batch) -> int:
    """The last-layer head attending most from the query to the target label over the other label(s)."""
    store = {}
    last = model.cfg.n_layers - 1

    def record(at: int, pattern: Tensor) -> Tensor:
        store[at] = pattern
        return pattern

    engine = Engine(model)
    engine.forward(model.residual(batch), edit_pattern=record)
    at_labels = store[last][:, :, -1, batch.label_positions()]  # n head pairs
    correct = (batch.labels == batch.target[:, None]).float()[:, None]
    contrast = (at_labels * correct).sum(-1) / correct.sum(-1).clamp(min=1) \
        - (at_labels * (1 - correct)).sum(-1) / (1 - correct).sum(-1).clamp(min=1)
    return int(contrast.mean(0).argmax())


def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    """CIWL accuracy and loss vs the clamp s for the most skip-trigram-like last-layer head."""
    batch, layer = batches["ciwl"], model.cfg.n_layers - 1
    head = skip_trigram_head(model, batch)
    acc, ce = clamp_sweep(model, batch, (layer, head))
    out = []
    for s, a, c in zip(S_VALUES, acc.tolist(), ce.tolist()):
        base = {"evaluator": "ciwl", "layer": layer, "head": head, "component": f"s={s:.2f}"}
        out += [{**base, "metric": "acc", "value": a}, {**base, "metric": "loss", "value": c}]
    return out


def param_groups(model: CoopModel) -> dict[str, list[str]]:
    """Graftable parameter groups -> their names in `CoopModel.weights()`."""
    names = list(model.weights())
    groups = {f"layer{layer}": [k for k in names if k.startswith(f"blocks.{layer}.")]
              for layer in range(model.cfg.n_layers)}
    prefixes = {"label_embedding": "embed.", "unembed": "unembed.", "exemplar_embed": "exemplar_embed.",
                "pos": "pos_embed.", "ln_final": "ln_final."}
    return groups | {group: [k for k in names if k.startswith(p)] for group, p in prefixes.items()}


def graft(recipient: CoopModel, donor: CoopModel, groups: Sequence[str]) -> CoopModel:
    """A copy of `recipient` (eval mode) with the parameter `groups` taken from `donor`."""
    valid = param_groups(recipient)
    unknown = [g for g in groups if g not in valid]
    if unknown or not groups:
        raise ConfigError(f"unknown parameter group {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(valid)}")
    weights, donated = recipient.weights(), donor.weights()
    for name in (n for g in groups for n in valid[g]):
        weights[name] = donated[name]
    model = CoopModel(recipient.task, recipient.cfg)
    model.load_weights(weights, source="grafted weights")
    return model.to(recipient.W_U.device).eval().requires_grad_(False)


@torch.no_grad()
def evaluate(model: CoopModel, batches: dict[str, Batch]) -> dict[str, tuple[float, float]]:
    """Evaluator -> (acc, loss) of a model, e.g. a grafted one."""
    engine = Engine(model)
    out = {}
    for ev, batch in batches.items():
        acc, ce = engine.score(engine.forward(model.residual(batch))[0], batch)
        out[ev] = (acc.item(), ce.item())
    return out
