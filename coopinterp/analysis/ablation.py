"""Head ablations: every head alone (the `ablation` analysis) or any sets of heads together.

The exemplar model runs on the batched engine (tests/hooked_reference.py holds it equal to one transformer-lens
hooked forward per set). A token model runs through the bridge's own `hook_z`, the ablated heads folded into the batch:
a forward of S x n sequences ablates S heads at once (`ablated_token_loss`), in chunks that bound the activations'
memory, stopping at the final LayerNorm so that the loss unembeds a block of rows at a time. Rows: accuracy `acc`,
`logit_diff` (target label minus the best other context label; not on iwl) and the ablated `loss` (token models:
next-token loss and `delta_loss`, minus the clean loss), per evaluator, head and mode (component).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..errors import ConfigError
from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch
from .engine import (
    METRICS,
    MODES,
    Engine,
    Head,
    HeadGrid,
    Zs,
    check_mode,
    head_masks,
    masked_edit,
    replacement,
)
from .forwards import (TOKENS_PER_CALL, final_stream, recorded, stopped_at, stream_loss, stream_loss_grad,
                       token_run)
from .record import Analysis


def ablated_final(engine: Engine, resid: Float[Tensor, "n pos d_model"], masks: Bool[Tensor, "sets layer head"],
                  values: Zs) -> Float[Tensor, "sets n d_model"]:
    """The unembedding's input at the query with each set's masked heads' `hook_z` replaced by `values`.

    Sets run in groups by the first layer they ablate: below it their stream is the clean one, computed once for
    the group rather than once per set (masked_edit leaves a layer without edits unbatched), which halves the
    last layer's work when every head is ablated alone.
    """
    layers = torch.arange(masks.shape[1])
    first = torch.where(masks.any(-1), layers, masks.shape[1]).amin(-1)
    hidden = resid.new_empty(len(masks), resid.shape[0], resid.shape[-1])
    for layer in first.unique().tolist():
        group = (first == layer).nonzero()[:, 0]
        h, _ = engine.forward(resid, edit_z=masked_edit(masks[group], values))
        hidden[group.to(hidden.device)] = h.expand(len(group), *h.shape[-2:])
    return hidden


@torch.no_grad()
def ablated_hidden(model: CoopModel, batch: Batch, head_sets: Sequence[Sequence[Head]], mode: str = "mean",
                   seed: int = 0, engine: Engine | None = None) -> Float[Tensor, "sets n d_model"]:
    """The unembedding's input at the query with each set of heads ablated together, in batched passes."""
    check_mode(mode)
    engine = engine or Engine(model)
    resid = model.residual(batch)
    _, clean_z = engine.forward(resid)
    values = [replacement(z, mode, seed) for z in clean_z]
    return ablated_final(engine, resid, head_masks(head_sets, model.cfg), values)


def ablate(model: CoopModel, batch: Batch, head_sets: Sequence[Sequence[Head]], mode: str = "mean",
           seed: int = 0) -> Float[Tensor, "sets n labels"]:
    """Logits at the query with each set of heads ablated together (mode zero | mean | resample)."""
    engine = Engine(model)
    with torch.no_grad():
        return engine.logits(ablated_hidden(model, batch, head_sets, mode, seed, engine))


def all_heads(cfg: HeadGrid) -> list[Head]:
    return [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]


@torch.no_grad()
def ablated_token_loss(model: TokenModel, batch: TokenBatch, head_sets: Sequence[Sequence[Head]],
                       values: list[Float[Tensor, "n pos head d_head"]]) -> Float[Tensor, " sets"]:
    """Mean next-token loss with each set of heads ablated together (their hook_z replaced by values[layer])."""
    n, T = batch.tokens.shape
    masks = head_masks(head_sets, model.cfg).to(batch.tokens.device)  # sets layer head
    rows_per_call = max(1, min(n, TOKENS_PER_CALL // T))
    sets_per_call = max(1, TOKENS_PER_CALL // (rows_per_call * T))
    totals = torch.zeros(len(head_sets), device=batch.tokens.device)
    for first in range(0, len(head_sets), sets_per_call):
        group = masks[first: first + sets_per_call]
        S = len(group)
        for rows in torch.arange(n, device=batch.tokens.device).split(rows_per_call):
            def ablate(z: Tensor, hook, layer: int) -> Tensor:
                z = z.unflatten(0, (S, -1))
                return torch.where(group[:, layer, None, None, :, None], values[layer][rows], z).flatten(0, 1)

            tokens = batch.tokens[rows].repeat(S, 1)
            layers = [layer for layer in range(model.cfg.n_layers) if group[:, layer].any()]
            hidden = final_stream(model, tokens, [(get_act_name("z", layer), partial(ablate, layer=layer))
                                                  for layer in layers])
            totals[first: first + S] += stream_loss(model, hidden, tokens, batch.first).view(S, -1).sum(-1)
    return totals / (n * (T - batch.first - 1))


EXACT_HEADS = 16  # method auto: a token model with at most this many heads is ablated exactly (docs/speed.md)


@dataclass(frozen=True)
class Options:
    """How a token model's rows are computed; the exemplar model's are always exact (its engine ablates every head
    in one batched pass)."""

    method: Literal["auto", "exact", "attribution"] = "auto"  # auto: exact up to EXACT_HEADS heads, else attribution
    top_k: int = 8  # attribution: how many of an evaluator's (head, mode) estimates, the largest, are rechecked


def token_method(options: Options, cfg: HeadGrid) -> str:
    """The method `options` ask for on a model of this size ("exact" or "attribution")."""
    if options.top_k < 0:
        raise ConfigError(f"ablation option top_k must be >= 0, got {options.top_k}")
    if options.method != "auto":
        return options.method
    return "exact" if cfg.n_layers * cfg.n_heads <= EXACT_HEADS else "attribution"


def z_grads(model: TokenModel, batch: TokenBatch) -> tuple[Zs, Zs]:
    """Every layer's clean `hook_z` and the gradient of the mean next-token loss with respect to it: one forward
    (stopped before the unembedding, whose gradient `stream_loss_grad` takes a block of rows at a time) and one
    backward to the first layer's `hook_z`."""
    names = [get_act_name("z", layer) for layer in range(model.cfg.n_layers)]
    with torch.enable_grad():
        start = (get_act_name("resid_pre", 0), lambda x, hook: x.detach().requires_grad_())  # no weight gradients
        acts = {}

        def keep(z: Tensor, hook, name: str) -> Tensor:
            acts[name] = z
            return z  # returned, so that the rest of the forward reads this tensor (the hook sees a head-split copy)

        hidden = stopped_at(model, batch.tokens, "unembed.hook_in",
                            [start, *[(name, partial(keep, name=name)) for name in names]])
        _, grad = stream_loss_grad(model, hidden, batch.tokens, batch.first)
        zs = [acts[name] for name in names]
        grads = torch.autograd.grad(hidden, zs, grad)
    return [z.detach() for z in zs], list(grads)


def attribution(zs: Zs, grads: Zs, mode: str) -> Float[Tensor, "layer head"]:
    """Each head's ablation effect on the mean loss to first order: its loss gradient dotted with the change that
    ablating it makes to its `hook_z`."""
    return torch.stack([torch.einsum("nphd,nphd->h", g, replacement(z, mode) - z) for z, g in zip(zs, grads)])


@torch.no_grad()
def token_rows(model: TokenModel, batches: dict[str, TokenBatch], options: Options = Options()) -> list[dict]:
    """Every head ablated alone, in every mode: next-token loss and its change from the clean loss, exactly, or
    (attribution) every head's estimated change in every mode, and exactly the top_k (head, mode) pairs by its size."""
    heads = all_heads(model.cfg)
    names = [get_act_name("z", layer) for layer in range(model.cfg.n_layers)]
    method = token_method(options, model.cfg)
    out = []
    for ev, batch in batches.items():
        clean = token_run(model, batch).loss.mean().item()
        if method == "exact":
            zs, exact = recorded(model, batch.tokens, names), {mode: heads for mode in MODES}
            zs = [zs[name] for name in names]
        else:
            zs, grads = z_grads(model, batch)
            estimate = torch.stack([attribution(zs, grads, mode).flatten() for mode in MODES])  # mode head
            top = estimate.flatten().abs().topk(min(options.top_k, estimate.numel())).indices
            exact = {mode: [heads[i] for i in top[top // len(heads) == m].remainder(len(heads)).tolist()]
                     for m, mode in enumerate(MODES)}
            out += [{"evaluator": ev, "layer": layer, "head": head, "component": mode,
                     "metric": "delta_loss_attribution", "value": value}
                    for mode, values in zip(MODES, estimate.tolist()) for (layer, head), value in zip(heads, values)]
        for mode, chosen in exact.items():
            if not chosen:
                continue
            losses = ablated_token_loss(model, batch, [[h] for h in chosen], [replacement(z, mode) for z in zs])
            for (layer, head), value in zip(chosen, losses.tolist()):
                base = {"evaluator": ev, "layer": layer, "head": head, "component": mode}
                out += [{**base, "metric": "loss", "value": value},
                        {**base, "metric": "delta_loss", "value": value - clean}]
    return out


@torch.no_grad()
def rows(model: CoopModel, batches: dict[str, Batch], options: Options = Options()) -> list[dict]:
    """Every head ablated alone, in every mode: acc, logit difference and loss on every evaluator (`options` choose
    how a token model's rows are computed and change nothing here)."""
    engine, heads, out = Engine(model), all_heads(model.cfg), []
    masks = head_masks([[h] for h in heads], model.cfg)
    for ev, batch in batches.items():
        resid = model.residual(batch)
        _, clean_z = engine.forward(resid)
        for mode in MODES:
            hidden = ablated_final(engine, resid, masks, [replacement(z, mode) for z in clean_z])
            scores = {m: v.tolist() for m, v in engine.score(hidden, batch, METRICS).items()}
            for i, (layer, head) in enumerate(heads):
                base = {"evaluator": ev, "layer": layer, "head": head, "component": mode}
                out += [{**base, "metric": m, "value": v[i]} for m, v in scores.items()]
    return out


def z_replacements(model: CoopModel | TokenModel, batch: Batch | TokenBatch, mode: str, seed: int = 0) -> Zs:
    """Each layer's `hook_z` replacement (engine.replacement), from a transformer-lens cache of the clean run: what
    `coopinterp ablate` and the app write into the heads they ablate."""
    names = [get_act_name("z", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=names)
    return [replacement(cache[name], mode, seed) for name in names]


def headline(rows: pd.DataFrame) -> str:
    delta = rows[rows.metric == "delta_loss"]
    if delta.empty:
        return ""
    top = delta.loc[delta.value.idxmax()]
    return f"largest loss increase {top.value:.3f} ({top.layer}.{top['head']}, {top.component})"


ANALYSIS = Analysis("ablation", 2, {"exemplar": rows, "tokens": token_rows},
                    "every head ablated alone (zero, mean, resample): accuracy, logit difference and loss "
                    "(token models: next-token loss and its change, by attribution patching above 16 heads)",
                    options=Options, headline=headline)
