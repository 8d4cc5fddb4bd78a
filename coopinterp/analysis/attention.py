"""Attention-pattern scores of every head (docs/reference.md, "Metrics"; A = pattern averaged over the batch).

The exemplar model:

- `prev_token_score` (train batch): mean over label positions p of A[p, p-1].
- `self_score` (train batch): mean over label positions p of A[p, p].
- `induction_strength` (flip batch): at the query q, A[q, label of the same-class pair] - A[q, label of the other pair].
- `skip_trigram_score` (ciwl batch): A[q, label equal to the query's true label] - A[q, the other label].

With context_pairs > 2 several pairs can sit on either side of a contrast; each side is then the mean over
its label positions (for two pairs this is exactly the difference above), and sequences with an empty side
are left out. The `evaluator` column names the batch a score was read from.

A token model (on any data source; forwards.relations defines where each kind of head looks):
- `prev_token_score`, `self_score`: mean over positions p of A[p, p-1] and A[p, p].
- `duplicate_token_score`: attention mass on earlier positions holding p's token (rows where there is one).
- `induction_score`: on a source with a known period L (`repeated`, `induction`: r r after an optional BOS), the
  mean over positions p of the second copy of A[p, p - L + 1], exactly the repeat's offset. On a source without
  one (`tokens:`, `text:`, contrast files, the Markov task's own sequences) it is occurrence-based: the attention
  mass on the positions right after every earlier occurrence of p's token (prefix matching), which also counts
  chance repeats (on a small vocabulary, repeats inside the first block).
- `copying_score` (weights only, evaluator NA): Elhage et al.'s positive-eigenvalue share of the head's full OV
  circuit W_E W_OV W_U, sum(eig) / sum(|eig|): near 1 for a head that copies the token it attends to into the
  prediction (the skip-trigram / copying half of an induction head), raw weights (LayerNorm not folded).
"""
from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch
from .forwards import clean_run, token_run
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


def copying_scores(model: TokenModel) -> Float[Tensor, "layer head"]:
    """Positive-eigenvalue share of every head's W_E W_OV W_U (TL's FactoredMatrix: eigenvalues of the small
    d_head x d_head product, not of the vocab x vocab matrix)."""
    eig = (model.bridge.W_E @ model.bridge.OV @ model.bridge.W_U).eigenvalues
    return eig.sum(-1).real / eig.abs().sum(-1)


def token_scores(model: TokenModel,
                 batches: dict[str, TokenBatch]) -> dict[tuple[str, str | None], Float[Tensor, "layer head"]]:
    out: dict[tuple[str, str | None], Tensor] = {}
    for ev, batch in batches.items():
        mass = token_run(model, batch).mass
        out.update({(f"{rel}_score", ev): mass[rel] for rel in ("prev_token", "self", "duplicate_token", "induction")})
    out[("copying_score", None)] = copying_scores(model)
    return out


def score_rows(found: dict[tuple[str, str | None], Float[Tensor, "layer head"]]) -> list[dict]:
    return [{"metric": metric, "evaluator": ev, "layer": layer, "head": head, "value": value}
            for (metric, ev), s in found.items()
            for layer, per_head in enumerate(s.tolist()) for head, value in enumerate(per_head)]


def headline(rows: pd.DataFrame) -> str:
    rows = rows.dropna(subset=["value"])  # a head whose OV circuit is zero has no copying score
    best = rows.loc[rows.groupby("metric").value.idxmax()]
    return "max " + " ".join(f"{m} {v:.2f} ({l}.{h})" for m, v, l, h in
                             zip(best.metric, best.value, best.layer, best["head"]))


def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    return score_rows(scores(model, batches))


def token_rows(model: TokenModel, batches: dict[str, TokenBatch]) -> list[dict]:
    return score_rows(token_scores(model, batches))


ANALYSIS = Analysis("attention", 2, {"exemplar": rows, "tokens": token_rows}, "previous-token, self, induction and skip-trigram attention of every head "
                    "(token models: previous-token, self, duplicate-token, induction, OV copying)",
                    headline=headline)
