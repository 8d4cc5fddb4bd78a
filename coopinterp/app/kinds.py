"""What the app computes differently per kind of model: the ablated scores, one sequence's row and its labels.

Each scorer calls what its kind's `coopinterp ablate` calls (the exemplar engine's `ablated_hidden`, or
`ablated_token_loss` on replacements from a cache of the clean run), with the same batches, mode and seed, so
a number the app shows is the number `ablate` prints. `scorer_for` picks a run's scorer from its `model_kinds`,
most specific first, as the CLI's verbs do: nothing here asks which kind of run it is.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..analysis.ablation import ablated_hidden, ablated_token_loss
from ..analysis.engine import Engine, Head
from ..errors import ConfigError
from ..sources import TokenBatch
from ..task import Batch

Scores = dict[str, float]  # metric -> value on one batch
Values = Callable[[], list[Tensor]]  # the batch's `ablation.z_replacements` in the chosen mode, computed once when first asked


def position_labels(context_pairs: int) -> list[str]:
    """`x0 l0 x1 l1 ... xq`: exemplar i at 2i, its label at 2i + 1, the query last."""
    return [f"{kind}{i}" for i in range(context_pairs) for kind in ("x", "l")] + ["xq"]


class ExemplarScorer:
    """The exemplar task: accuracy and loss at the query, on the batched engine (`ablate`'s exemplar path)."""

    formats = {"acc": ".3f", "loss": ".3f"}  # as `ablate` prints them
    curve_metric = "acc"  # the logged behavior curve the ablated values are marked on

    def __init__(self):
        self.engine = lru_cache(maxsize=None)(Engine)  # one per model (the app keeps every model loaded)
        self.clean: dict[tuple[Any, str], Scores] = {}  # (model, evaluator) -> the clean scores

    @torch.no_grad()
    def _score(self, model, batch: Batch, heads: Sequence[Head], mode: str, seed: int) -> Scores:
        engine = self.engine(model)
        acc, ce = engine.score(ablated_hidden(model, batch, [list(heads)], mode, seed, engine), batch).values()
        return {"acc": acc.item(), "loss": ce.item()}

    def scores(self, model, batch: Batch, heads: Sequence[Head], mode: str, seed: int,
               values: Values) -> tuple[Scores, Scores]:
        """Clean and ablated. The engine runs each set by itself (sets are grouped by the first layer they ablate),
        so a set alone gives what it gives beside the clean set in `ablate`; the clean scores are kept."""
        key = (model, batch.evaluator)
        if key not in self.clean:
            self.clean[key] = self._score(model, batch, (), mode, seed)
        return self.clean[key], self._score(model, batch, heads, mode, seed)

    def row(self, batch: Batch, i: int) -> Batch:
        return Batch(*(t[i:i + 1] for t in (batch.exemplars, batch.labels, batch.query_label, batch.target,
                                             batch.target_pair, batch.same_class_pair)), batch.evaluator)

    def labels(self, model, batch: Batch, i: int) -> list[str]:
        return position_labels(batch.labels.shape[1])


class TokenScorer:
    """Token models: next-token loss, and on `repeated` tokens its split into the first copy and the repeat."""

    formats = {"loss": ".4f", "loss_first": ".4f", "loss_repeat": ".4f"}
    curve_metric = "loss"

    def scores(self, model, batch: TokenBatch, heads: Sequence[Head], mode: str, seed: int,
               values: Values) -> tuple[Scores, Scores]:
        """Clean and ablated, from the one `ablated_token_loss` call `ablate` makes (sets [] and `heads`).

        On repeated tokens ([BOS] + r + r, |r| = L) the first copy's loss is the same call on the prefix up to the
        repeat (a causal model's prefix is computed as in the whole sequence); the repeat's loss is what is left of
        the total: the loss on the L tokens of the second copy.
        """
        sets, values = [[], list(heads)], values()
        total = ablated_token_loss(model, batch, sets, values)
        if batch.period is None:
            return tuple({"loss": v} for v in total.tolist())
        L, end = batch.period, batch.first + batch.period
        prefix = replace(batch, tokens=batch.tokens[:, :end])
        first = ablated_token_loss(model, prefix, sets, [v[:, :end] for v in values])
        repeat = (total * (2 * L - 1) - first * (L - 1)) / L
        return tuple({"loss": t, "loss_first": f, "loss_repeat": r}
                     for t, f, r in zip(total.tolist(), first.tolist(), repeat.tolist()))

    def row(self, batch: TokenBatch, i: int) -> TokenBatch:
        return replace(batch, tokens=batch.tokens[i:i + 1])

    def labels(self, model, batch: TokenBatch, i: int) -> list[str]:
        """`position:token`, the token spelled by the checkpoint's tokenizer where it has one, else its id."""
        ids = batch.tokens[i].tolist()
        tokenizer = getattr(model, "tokenizer", None)
        names = tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(t) for t in ids]
        return [f"{p}:{name}" for p, name in enumerate(names)]


SCORERS = {"exemplar": ExemplarScorer, "tokens": TokenScorer}


def scorer_for(run: Any) -> ExemplarScorer | TokenScorer:
    """The scorer of the run's first kind of model that has one; else a one-line error."""
    kind = next((k for k in run.model_kinds if k in SCORERS), None)
    if kind is None:
        raise ConfigError(f"the app explores {' or '.join(SCORERS)} models; {run.path} holds a {run.model_kinds[0]} "
                          "model")
    return SCORERS[kind]()
