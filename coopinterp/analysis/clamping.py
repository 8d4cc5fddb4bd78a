"""Attention clamping: the paper's skip-trigram copier test.

A clamp puts, in one head's query row (`hook_pattern`, applied before the value matmul), attention s on the
label(s) equal to the evaluator's target and 1 - s on the other label(s), zero elsewhere. On `ciwl` a head that
copies the label it attends to then scores accuracy rising with s (chance at s = 0.5).

Two protocols:
  paper  (`copier_sweep`, the paper's code): the clamped last-layer head alone reaches the unembedding. The
         query's embedding path, every layer-0 head's output and the other last-layer heads are removed from
         the unembedding's input (zeroed), while the head's values stay those of the clean run. This asks
         whether the head's OV circuit copies labels, without any help from memorisation in the direct path.
  layer  (`clamp_sweep`): the rest of the head's layer is ablated (mean by default), everything else clean;
         with a direct path that memorises, the model can answer without the head at all.
`rows` runs the paper protocol for every last-layer head, s in {0, 0.1, ..., 1}, on `ciwl`: accuracy and logit
difference, which read only the context labels' logits (the loss over all labels too with `Options.loss`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import ConfigError
from ..model import CoopModel
from ..task import Batch
from .engine import Engine, Head, check_head, check_mode, masked_edit, replacement
from .record import Analysis

PROTOCOLS = ("paper", "layer")
Scores = dict[str, Float[Tensor, " s"]]  # metric (`engine.METRICS`) -> one value per s


@dataclass(frozen=True)
class Options:
    """What each clamping row reports."""

    loss: bool = False  # also the loss over all labels (unembeds every row: ~3x the analysis's default time)

S_VALUES = tuple(i / 10 for i in range(11))


def clamp_row(batch: Batch, s: Float[Tensor, " s"]) -> Float[Tensor, "s n pos"]:
    """The clamped query row: s spread over the target's label position(s), 1 - s over the other labels."""
    correct = (batch.labels == batch.target[:, None]).float()
    if not (correct.any(1) & (1 - correct).any(1)).all():
        raise ConfigError(f"clamping needs the target and another label in every context; "
                          f"the {batch.evaluator!r} batch does not have them (use ciwl)")
    correct = correct.to(s.device)
    share = s[:, None, None] * correct / correct.sum(1, keepdim=True)
    share = share + (1 - s[:, None, None]) * (1 - correct) / (1 - correct).sum(1, keepdim=True)
    row = torch.zeros(len(s), len(batch), batch.exemplars.shape[1] + batch.labels.shape[1], device=s.device)
    row[..., batch.label_positions().to(s.device)] = share
    return row


def _check_last_layer(model: CoopModel, head: Head) -> Head:
    layer, h = check_head(head, model.cfg)
    if layer != model.cfg.n_layers - 1:
        raise ConfigError(f"the copier test clamps a last-layer head (layer {model.cfg.n_layers - 1}), "
                          f"got {layer}.{h}")
    return layer, h


@torch.no_grad()
def copier_sweep(model: CoopModel, batch: Batch, head: Head, s: Sequence[float] = S_VALUES,
                 metrics: Sequence[str] = ("acc", "loss")) -> Scores:
    """The paper's copier test: `metrics` with only `head`'s clamped output reaching the unembedding.

    Its values come from the clean run; its output at the query (plus the layer's output bias) is all that
    enters the final LayerNorm. All values of s in one pass.
    """
    layer, h = _check_last_layer(model, head)
    engine = Engine(model)
    stream = model.residual(batch)
    for at in range(layer):
        stream, _ = engine.block(at, stream)
    v = engine.project(layer, "v", engine.norm(engine.ln1[layer], stream))[:, :, h]  # n pos d_head
    row = clamp_row(batch, torch.tensor(list(s), dtype=stream.dtype, device=stream.device))
    z = torch.einsum("snt,ntd->snd", row, v)
    out = z @ engine.W_O[layer, h] + engine.b_out[layer]
    return engine.score(engine.norm(engine.ln_final, out), batch, metrics)


def _others(model: CoopModel, head: Head, ablate: Sequence[Head] | None) -> list[Head]:
    layer, h = head
    return [(layer, o) for o in range(model.cfg.n_heads) if o != h] if ablate is None else list(ablate)


@torch.no_grad()
def clamp_sweep(model: CoopModel, batch: Batch, head: Head, s: Sequence[float] = S_VALUES,
                ablate: Sequence[Head] | None = None, mode: str = "mean",
                metrics: Sequence[str] = ("acc", "loss")) -> Scores:
    """`metrics` with `head`'s query row clamped to each s, `ablate` heads (default: the rest of its layer)
    ablated; all values of s in one batched pass."""
    layer, h = check_head(head, model.cfg)
    check_mode(mode)
    engine = Engine(model)
    resid = model.residual(batch)
    _, clean_z = engine.forward(resid)
    masks = torch.zeros(1, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for other in _others(model, head, ablate):
        masks[(0, *check_head(other, model.cfg))] = True
    row = clamp_row(batch, torch.tensor(list(s), dtype=resid.dtype, device=resid.device))

    def edit_pattern(at: int, pattern: Tensor) -> Tensor:
        if at != layer:
            return pattern
        pattern = pattern.expand(len(row), *pattern.shape[-4:]).clone()
        pattern[:, :, h, -1] = row
        return pattern

    values = [replacement(z, mode) for z in clean_z]
    hidden, _ = engine.forward(resid, edit_z=masked_edit(masks, values), edit_pattern=edit_pattern)
    return engine.score(hidden, batch, metrics)


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


def rows(model: CoopModel, batches: dict[str, Batch], options: Options = Options()) -> list[dict]:
    """CIWL accuracy and logit difference (and loss, with `options.loss`) vs the clamp s for every last-layer head
    (the paper's protocol)."""
    batch, layer = batches["ciwl"], model.cfg.n_layers - 1
    metrics = ["acc", "logit_diff"] + ["loss"] * options.loss
    out = []
    for head in range(model.cfg.n_heads):
        scores = copier_sweep(model, batch, (layer, head), metrics=metrics)
        for i, s in enumerate(S_VALUES):
            base = {"evaluator": "ciwl", "layer": layer, "head": head, "component": f"s={s:.2f}"}
            out += [{**base, "metric": m, "value": v[i].item()} for m, v in scores.items()]
    return out


ANALYSIS = Analysis("clamping", 2, {"exemplar": rows}, "the copier test: CIWL accuracy as a layer-1 head's attention to the true "
                    "label is clamped", options=Options)
