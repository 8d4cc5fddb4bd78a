"""Attention-pattern scores of every head (docs/reference.md, "Metrics"; A = pattern averaged over the batch).

- `prev_token_score` (train batch): mean over label positions p of A[p, p-1].
- `self_score` (train batch): mean over label positions p of A[p, p].
- `induction_strength` (flip batch): at the query q, A[q, label of the same-class pair] - A[q, label of the other pair].
- `skip_trigram_score` (ciwl batch): A[q, label equal to the query's true label] - A[q, the other label].

With context_pairs > 2 several pairs can sit on either side of a contrast; each side is then the mean over
its label positions (for two pairs this is exactly the difference above), and sequences with an empty side
are left out. The `evaluator` column names the batch a score was read from.
"""
from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..model import CoopModel
from ..task import Batch
from .forwards import clean_run
from .record import Analysis

Patterns = Float[Tensor, "layer n head q_pos k_pos"]


def label_diagonal(patterns: Patterns, batch: Batch, offset: int) -> Float[Tensor, "layer head"]:
    """Mean over label positions p of A[p, p - offset]: offset 1 is the previous-token score, 0 the self score."""
    pos = batch.label_positions().to(patterns.device)
    return patterns.mean(1)[..., pos, pos - offset].mean(-1)


def query_contrast(patterns: Patterns, batch: Batch, chosen: Bool[Tensor, "n pairs"]) -> Float[Tensor, "layer head"]:
    """Attention from the query to the chosen pairs' labels minus to the other pairs' labels (means per side)."""
    at_query = patterns[..., -1, batch.label_positions().to(patterns.device)]  # layer n head pairs

    def side(mask: Bool[Tensor, "n pairs"]) -> Float[Tensor, "layer n head"]:
        m = mask.to(patterns.dtype)[None, :, None, :]
        return (at_query * m).sum(-1) / m.sum(-1).clamp(min=1)

    keep = (chosen.any(1) & (~chosen).any(1)).to(patterns.dtype)[None, :, None]  # sequences with both sides
    return ((side(chosen) - side(~chosen)) * keep).sum(1) / keep.sum(1).clamp(min=1)


def same_class_pairs(batch: Batch) -> Bool[Tensor, "n pairs"]:
    """Pairs of the query's class: the pairs labelled like `same_class_pair` (distinct classes in a sequence
    always carry distinct labels)."""
    rows = torch.arange(len(batch), device=batch.labels.device)
    label = batch.labels[rows, batch.same_class_pair.clamp(min=0)]
    return (batch.labels == label[:, None]) & (batch.same_class_pair >= 0)[:, None]


def true_label_pairs(batch: Batch) -> Bool[Tensor, "n pairs"]:
    """Pairs whose label is the query's true label."""
    return batch.labels == batch.query_label[:, None]


def scores(model: CoopModel, batches: dict[str, Batch]) -> dict[tuple[str, str], Float[Tensor, "layer head"]]:
    """(metric, evaluator) -> score of every head."""
    train, flip, ciwl = (clean_run(model, batches[ev]).patterns for ev in ("train", "flip", "ciwl"))
    return {
        ("prev_token_score", "train"): label_diagonal(train, batches["train"], 1),
        ("self_score", "train"): label_diagonal(train, batches["train"], 0),
        ("induction_strength", "flip"): query_contrast(flip, batches["flip"], same_class_pairs(batches["flip"])),
        ("skip_trigram_score", "ciwl"): query_contrast(ciwl, batches["ciwl"], true_label_pairs(batches["ciwl"])),
    }


def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    return [{"metric": metric, "evaluator": ev, "layer": layer, "head": head, "value": value}
            for (metric, ev), s in scores(model, batches).items()
            for layer, per_head in enumerate(s.tolist()) for head, value in enumerate(per_head)]


def headline(rows: pd.DataFrame) -> str:
    best = rows.loc[rows.groupby("metric").value.idxmax()]
    return "max " + " ".join(f"{m} {v:.2f} ({l}.{h})" for m, v, l, h in
                             zip(best.metric, best.value, best.layer, best["head"]))


ANALYSIS = Analysis("attention", 1, rows, "previous-token, self, induction and skip-trigram attention of every head",
                    figures=("layer0_attention", "layer1_attention", "induction_heatmap", "circuit_evolution"),
                    headline=headline)
