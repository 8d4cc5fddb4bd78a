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
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..errors import ConfigError
from ..model import CoopModel
from ..task import Batch
from .engine import Engine, check_direct_path, replacement, with_direct_path
from .record import Analysis

COMPONENTS = ("q", "k", "v")
Mode = str | Batch  # "mean" | "zero" | "resample", or a counterfactual batch
Scores = Float[Tensor, "component sender receiver"]


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

    hidden = []
    for comp in components:
        q, k, v = (patched[c] if c in comp else clean[c] for c in COMPONENTS)
        out = engine.result(1, engine.attend(q, k, v, 1))[..., 0, :, :]
        hidden.append(final[:, None] + torch.einsum("rh,gnhd->grnd", recv, out - out_clean))
    return engine.norm(engine.ln_final, torch.stack(hidden))


def path_patch(model: CoopModel, batch: Batch, senders: Sequence[Sequence[int]], receivers: Sequence[Sequence[int]],
               components: Sequence[str] = COMPONENTS, mode: Mode = "mean", direct: bool = False,
               seed: int = 0, direct_path: str = "keep") -> tuple[Scores, Scores]:
    """Accuracy and loss for every (component, sender group, receiver group), in one batched pass."""
    engine = Engine(model)
    with torch.no_grad():
        hidden = patched_hidden(model, batch, senders, receivers, components, mode, direct, seed, engine, direct_path)
        return engine.score(hidden, batch)


def qkv_check(model: CoopModel, batch: Batch, mode: Mode = "zero", direct_path: str = "keep") -> dict[str, float]:
    """The paper's check: all layer-0 heads ablated (zeroed, as in the paper) for layer 1's K, V or Q input only.

    Returns the accuracy of each, of `qkv` (all three inputs), of `ablated` (layer 0 ablated everywhere, its own
    path to the unembedding included) and of `clean` (no ablation), all with the same `direct_path`.
    """
    every = [list(range(model.cfg.n_heads))]
    acc, _ = path_patch(model, batch, every, every, [*COMPONENTS, "qkv"], mode, direct_path=direct_path)
    (ablated,), _ = path_patch(model, batch, every, every, ["qkv"], mode, direct=True, direct_path=direct_path)
    engine = Engine(model)
    with torch.no_grad():
        clean, _ = engine.score(engine.forward(model.residual(batch), direct_path=direct_path)[0], batch)
    return {"clean": clean.item(), **{c: a.item() for c, a in zip([*COMPONENTS, "qkv"], acc[:, 0, 0])},
            "ablated": ablated.item()}


@torch.no_grad()
def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    """Each layer-0 head, and all, -> each layer-1 head, and all, through q, k and v (mean patching)."""
    H = model.cfg.n_heads
    groups = [[h] for h in range(H)] + [list(range(H))]
    names = list(range(H)) + [None]  # None: all heads (NA in the table)
    out = []
    for ev, batch in batches.items():
        acc, ce = path_patch(model, batch, groups, groups, COMPONENTS, "mean")
        for c, comp in enumerate(COMPONENTS):
            for s, src in enumerate(names):
                for r, dst in enumerate(names):
                    base = {"evaluator": ev, "layer": 1, "head": dst, "src_layer": 0, "src_head": src,
                            "component": comp}
                    out += [{**base, "metric": "acc", "value": acc[c, s, r].item()},
                            {**base, "metric": "loss", "value": ce[c, s, r].item()}]
    return out


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


ANALYSIS = Analysis("path_patching", 1, rows, "each layer-0 head (or all) patched into each layer-1 head's q, k or v",
                    figures=("path_patching", "path_patching_icl"))
