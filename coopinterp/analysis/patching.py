"""Path patching (docs/reference.md, "Metrics"): sender layer-0 heads -> receiver layer-1 heads, through one input.

A sender group's output (`hook_result` of its layer-0 heads) is replaced (batch mean per position by default,
zero, resample, or its value on a counterfactual batch) in the residual stream that feeds only the receivers'
q, k and/or v input; layer 1's LayerNorm is recomputed on that patched stream, and everything else (the other
inputs, the other heads, the direct path to the unembedding) stays clean. With receivers in the last layer
their outputs add into the stream, so one pass per sender group gives every receiver group at once: a
receiver group's logits are the clean ones plus its heads' change. `direct=True` also patches the sender ->
unembedding path, so patching all receivers' q, k and v with it equals ablating the senders. `direct_path`
keeps, cuts or isolates the query embedding's own path to the unembedding (see `ablation`).

The paper's K/V/Q check (`qkv_check`) zeroes every layer-0 head's output in layer 1's K, V or Q input only.

A token model of any depth (`token_rows`): each head -> each head of every later layer, through q, k or v, by
hooks only. The sender's mean-ablated output (its `hook_z` change through its W_O) is added to the receiver
layer's `hook_resid_pre` in one forward, which gives that layer's patched q, k and v (its LayerNorm recomputed,
positions rotated as the model does); a second forward, with the receivers folded into the batch, takes the
clean run and swaps in one receiver's patched q, k or v. With grouped-query attention a receiver's k and v are its
group's, shared with the other query heads of the group. Rows: next-token `loss` and `delta_loss` (from clean).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..errors import ConfigError
from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch
from .engine import Engine, Head, check_direct_path, replacement, with_direct_path
from .forwards import TOKENS_PER_CALL, recorded, resumed, stream_loss, token_run
from .record import Analysis

COMPONENTS = ("q", "k", "v")
Mode = str | Batch  # "mean" | "zero" | "resample", or a counterfactual batch
Scores = dict[str, Float[Tensor, "component sender receiver"]]  # metric -> value


@dataclass(frozen=True)
class Options:
    """What each path-patching row reports on the exemplar task (token models: always the next-token loss)."""

    loss: bool = False  # also the loss over all labels (unembeds every row: ~10x the default's time on the demo)


def check_model(model: CoopModel) -> None:
    if model.cfg.n_layers != 2:
        raise ConfigError(f"path patching needs a 2-layer model (senders in layer 0, receivers in layer 1), "
                          f"this one has {model.cfg.n_layers}")


def check_components(components: Sequence[str]) -> list[str]:
    """Each component is q, k or v, or several patched together (e.g. 'qkv')."""
    for c in components:
        if not c or set(c) - set(COMPONENTS) or len(set(c)) != len(c):
            raise ConfigError(f"bad path-patching component {c!r}: use q, k, v or a combination such as qkv")
    return list(components)


def group_mask(groups: Sequence[Sequence[int]], n_heads: int, role: str,
               device: torch.device | str = "cpu") -> Float[Tensor, "groups head"]:
    mask = torch.zeros(len(groups), n_heads, device=device)
    for i, heads in enumerate(groups):
        for h in heads:
            if not 0 <= h < n_heads:
                raise ConfigError(f"no {role} head {h}: heads are 0-{n_heads - 1}")
            mask[i, h] = 1.0
    return mask


def sender_values(model: CoopModel, engine: Engine, batch: Batch, z0: Float[Tensor, "n pos head d_head"],
                  mode: Mode, seed: int) -> Float[Tensor, "n pos head d_head"]:
    """What the senders' layer-0 `hook_z` becomes: a replacement of the clean one, or a counterfactual run's."""
    if isinstance(mode, Batch):
        if mode.exemplars.shape[:2] != batch.exemplars.shape[:2]:
            raise ConfigError(f"the counterfactual batch has shape {tuple(mode.exemplars.shape[:2])}, "
                              f"the batch {tuple(batch.exemplars.shape[:2])}")
        return engine.block(0, model.residual(mode))[1]
    return replacement(z0, mode, seed)


@torch.no_grad()
def patched_hidden(model: CoopModel, batch: Batch, senders: Sequence[Sequence[int]],
                   receivers: Sequence[Sequence[int]], components: Sequence[str] = COMPONENTS, mode: Mode = "mean",
                   direct: bool = False, seed: int = 0, engine: Engine | None = None,
                   direct_path: str = "keep") -> Float[Tensor, "component sender receiver n d_model"]:
    """The unembedding's input at the query for every (component, sender group, receiver group)."""
    check_model(model)
    components = check_components(components)
    check_direct_path(direct_path)
    engine = engine or Engine(model)
    H = model.cfg.n_heads
    resid = model.residual(batch)
    send, recv = (group_mask(g, H, role, resid.device) for g, role in ((senders, "sender"), (receivers, "receiver")))
    h1, z0 = engine.block(0, resid)
    change = engine.result(0, sender_values(model, engine, batch, z0, mode, seed) - z0)  # per sender head
    delta = torch.einsum("gh,nthd->gntd", send, change)  # each sender group's change to layer 1's input

    x, xp = engine.norm(engine.ln1[1], h1), engine.norm(engine.ln1[1], h1 + delta)
    clean = {"q": engine.project(1, "q", x[:, -1:]), "k": engine.project(1, "k", x), "v": engine.project(1, "v", x)}
    patched = {c: engine.project(1, c, xp[..., -1:, :] if c == "q" else xp) for c in set("".join(components))}
    out_clean = engine.result(1, engine.attend(clean["q"], clean["k"], clean["v"], 1))[:, 0]
    final = h1[:, -1] + out_clean.sum(-2) + engine.b_out[1]
    final = with_direct_path(final, resid[:, -1], direct_path)
    final = final + delta[:, :, -1] if direct else final.expand(len(senders), *final.shape)

    stream = final.new_empty(len(components), len(senders), len(receivers), *final.shape[-2:])
    for i, comp in enumerate(components):  # written in place: a stack would copy ~30 MB per evaluator on the demo
        q, k, v = (patched[c] if c in comp else clean[c] for c in COMPONENTS)
        out = engine.result(1, engine.attend(q, k, v, 1))[..., 0, :, :]
        torch.add(final[:, None], torch.einsum("rh,gnhd->grnd", recv, out - out_clean), out=stream[i])
    return engine.norm(engine.ln_final, stream)


def path_patch(model: CoopModel, batch: Batch, senders: Sequence[Sequence[int]], receivers: Sequence[Sequence[int]],
               components: Sequence[str] = COMPONENTS, mode: Mode = "mean", direct: bool = False,
               seed: int = 0, direct_path: str = "keep", metrics: Sequence[str] = ("acc", "loss")) -> Scores:
    """`Engine.score`'s metrics for every (component, sender group, receiver group), in one batched pass."""
    engine = Engine(model)
    with torch.no_grad():
        hidden = patched_hidden(model, batch, senders, receivers, components, mode, direct, seed, engine, direct_path)
        # the unpatched rows anchor iwl accuracy: most patched rows stay too close to them to change their answer
        anchor = engine.forward(model.residual(batch), direct_path=direct_path)[0] if batch.evaluator == "iwl" else None
        return engine.score(hidden, batch, metrics, anchor=anchor)


def qkv_check(model: CoopModel, batch: Batch, mode: Mode = "zero", direct_path: str = "keep") -> dict[str, float]:
    """The paper's check: all layer-0 heads ablated (zeroed, as in the paper) for layer 1's K, V or Q input only.

    Returns the accuracy of each, of `qkv` (all three inputs), of `ablated` (layer 0 ablated everywhere, its own
    path to the unembedding included) and of `clean` (no ablation), all with the same `direct_path`.
    """
    every, acc = [list(range(model.cfg.n_heads))], ["acc"]
    patched = path_patch(model, batch, every, every, [*COMPONENTS, "qkv"], mode, direct_path=direct_path,
                         metrics=acc)["acc"]
    ablated = path_patch(model, batch, every, every, ["qkv"], mode, direct=True, direct_path=direct_path,
                         metrics=acc)["acc"]
    engine = Engine(model)
    with torch.no_grad():
        clean = engine.score(engine.forward(model.residual(batch), direct_path=direct_path)[0], batch, acc)["acc"]
    return {"clean": clean.item(), **{c: a.item() for c, a in zip([*COMPONENTS, "qkv"], patched[:, 0, 0])},
            "ablated": ablated.item()}


@torch.no_grad()
def rows(model: CoopModel, batches: dict[str, Batch], options: Options = Options()) -> list[dict]:
    """Each layer-0 head, and all, -> each layer-1 head, and all, through q, k and v (mean patching): accuracy
    and logit difference (the loss too with `options.loss`)."""
    H = model.cfg.n_heads
    groups = [[h] for h in range(H)] + [list(range(H))]
    names = list(range(H)) + [None]  # None: all heads (NA in the table)
    metrics = ["acc", "logit_diff"] + ["loss"] * options.loss
    out = []
    for ev, batch in batches.items():
        scores = path_patch(model, batch, groups, groups, COMPONENTS, "mean", metrics=metrics)
        for c, comp in enumerate(COMPONENTS):
            for s, src in enumerate(names):
                for r, dst in enumerate(names):
                    base = {"evaluator": ev, "layer": 1, "head": dst, "src_layer": 0, "src_head": src,
                            "component": comp}
                    out += [{**base, "metric": m, "value": v[c, s, r].item()} for m, v in scores.items()]
    return out


def clean_acts(model: TokenModel, batch: TokenBatch) -> dict[str, Tensor]:
    """Every layer's clean `hook_z` and `hook_resid_pre` from one forward stopped before the unembedding."""
    names = [get_act_name(a, layer) for layer in range(model.cfg.n_layers) for a in ("z", "resid_pre")]
    return recorded(model, batch.tokens, names)


def sender_delta(model: TokenModel, acts: dict[str, Tensor], senders: Sequence[Head], mode: str,
                 seed: int = 0) -> Float[Tensor, "n pos d_model"]:
    """What replacing the senders' `hook_z` (engine.replacement) adds to the residual stream, through their W_O."""
    delta = 0
    for layer, head in senders:
        z = acts[get_act_name("z", layer)]
        delta = delta + (replacement(z, mode, seed) - z)[..., head, :] @ model.bridge.W_O[layer, head]
    return delta


@torch.no_grad()
def patched_inputs(model: TokenModel, tokens: Tensor, layer: int, resid: Float[Tensor, "n pos d_model"]) -> dict:
    """hook_q, hook_k and hook_v of `layer` when `resid` enters it: one block's attention inputs, from a forward
    started at that block and stopped at its `hook_z`."""
    store = {}

    def record(x: Tensor, hook, c: str) -> None:
        store[c] = x

    resumed(model, resid, tokens, layer, [(get_act_name(c, layer), partial(record, c=c)) for c in COMPONENTS],
            stop=get_act_name("z", layer))
    return store


@torch.no_grad()
def token_rows(model: TokenModel, batches: dict[str, TokenBatch], options: Options = Options()) -> list[dict]:
    """Every head -> every head of each later layer, through q, k and v (the sender mean-ablated); `options` set what
    the exemplar task reports and change nothing here: a token model always reports its next-token loss."""
    cfg, out = model.cfg, []
    sets = [(c, h) for c in COMPONENTS for h in range(cfg.n_heads)]
    for ev, batch in batches.items():
        clean = token_run(model, batch).loss.mean().item()
        acts = clean_acts(model, batch)
        for src_layer in range(cfg.n_layers - 1):
            for src_head in range(cfg.n_heads):
                delta = sender_delta(model, acts, [(src_layer, src_head)], "mean")
                for layer in range(src_layer + 1, cfg.n_layers):
                    losses = swapped_loss(model, batch, layer, sets, acts, delta)
                    for (c, head), value in zip(sets, losses.tolist()):
                        base = {"evaluator": ev, "layer": layer, "head": head, "src_layer": src_layer,
                                "src_head": src_head, "component": c}
                        out += [{**base, "metric": "loss", "value": value},
                                {**base, "metric": "delta_loss", "value": value - clean}]
    return out


@torch.no_grad()
def token_path_patch(model: TokenModel, batch: TokenBatch, senders: list[Head], receivers: list[Head],
                     mode: str = "mean", seed: int = 0) -> dict[str, Tensor]:
    """The next-token loss with the senders' outputs replaced (`mode`, engine.replacement) only in each receiver's
    q, k or v input: "clean" (a scalar) and, per component, one loss per receiver. Every receiver must sit in a
    layer above every sender; LayerNorm is recomputed on the patched stream."""
    if max(layer for layer, _ in senders) >= min(layer for layer, _ in receivers):
        raise ConfigError("every receiver must sit in a layer above every sender")
    acts = clean_acts(model, batch)
    delta = sender_delta(model, acts, senders, mode, seed)
    out = {"clean": token_run(model, batch).loss.mean()}
    for layer in sorted({layer for layer, _ in receivers}):
        heads = [head for at, head in receivers if at == layer]
        sets = [(c, h) for c in COMPONENTS for h in heads]
        for (c, _), value in zip(sets, swapped_loss(model, batch, layer, sets, acts, delta)):
            out.setdefault(c, []).append(value)
    return {k: v if k == "clean" else torch.stack(v) for k, v in out.items()}


@torch.no_grad()
def swapped_loss(model: TokenModel, batch: TokenBatch, layer: int, sets: list[tuple[str, int]],
                 acts: dict[str, Tensor], delta: Float[Tensor, "n pos d_model"]) -> Float[Tensor, " sets"]:
    """Mean next-token loss of each set (component, receiver head): the clean run with that head's q, k or v at
    `layer` taken from the run whose stream entering `layer` carries `delta`. Both start at `layer` from the clean
    stream (`clean_acts`); the sets are folded into the batch, in chunks that bound the activations' memory."""
    n, T = batch.tokens.shape
    resid = acts[get_act_name("resid_pre", layer)]
    patched = patched_inputs(model, batch.tokens, layer, resid + delta)
    per_call = max(1, TOKENS_PER_CALL // (n * T))
    totals = []
    for first in range(0, len(sets), per_call):
        group = sets[first: first + per_call]
        S = len(group)

        def swap(x: Tensor, hook, c: str) -> Tensor:
            x = x.unflatten(0, (S, n)).clone()
            per_kv = model.cfg.n_heads // x.shape[-2]  # grouped-query attention: several query heads per k, v
            for s, (comp, head) in enumerate(group):
                if comp == c:
                    kv = head if c == "q" else head // per_kv
                    x[s, :, :, kv] = patched[c][:, :, kv]
            return x.flatten(0, 1)

        tokens = batch.tokens.repeat(S, 1)
        hidden = resumed(model, resid.repeat(S, 1, 1), tokens, layer,
                         [(get_act_name(c, layer), partial(swap, c=c)) for c in {c for c, _ in group}])
        totals.append(stream_loss(model, hidden, tokens, batch.first).view(S, -1).mean(-1))
    return torch.cat(totals)


def headline(rows: pd.DataFrame) -> str:
    delta = rows[rows.metric == "delta_loss"]
    if delta.empty:
        return ""
    top = delta.loc[delta.value.idxmax()]
    return (f"largest loss increase {top.value:.3f} ({top.src_layer}.{top.src_head} -> {top.layer}.{top['head']} "
            f"through {top.component})")


ANALYSIS = Analysis("path_patching", 2, {"exemplar": rows, "tokens": token_rows},
                    "each layer-0 head (or all) patched into each layer-1 head's q, k or v: accuracy and logit "
                    "difference (token models, on request: every head into every later head, next-token loss)",
                    options=Options, opt_in=("tokens",), headline=headline)
