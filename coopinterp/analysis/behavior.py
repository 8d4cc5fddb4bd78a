"""How well the model does on each evaluation batch (docs/reference.md, "Evaluators").

The exemplar model: in-context accuracy and query loss of each evaluator. A token model: the mean next-token
loss (`loss`) and, on repeated tokens, the loss on the block's first copy and on its repeat (`loss_first_copy`,
`loss_repeat`, both over the tokens r_1 .. r_{L-1}): an induction head makes the repeat far cheaper.
"""
from __future__ import annotations

import pandas as pd

from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch
from .engine import Engine
from .forwards import clean_run, token_run
from .record import Analysis


def token_rows(model: TokenModel, batches: dict[str, TokenBatch]) -> list[dict]:
    out = []
    for ev, batch in batches.items():
        loss_at = token_run(model, batch).loss  # n scored; scored index i predicts token first + i + 1
        out.append({"metric": "loss", "evaluator": ev, "value": loss_at.mean().item()})
        L = batch.period
        if L is not None:
            out += [{"metric": "loss_first_copy", "evaluator": ev, "value": loss_at[:, : L - 1].mean().item()},
                    {"metric": "loss_repeat", "evaluator": ev, "value": loss_at[:, L: 2 * L - 1].mean().item()}]
    return out


def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    engine, out = Engine(model), []
    for ev, batch in batches.items():
        scores = engine.score(clean_run(model, batch).hidden, batch, ("acc", "loss"))
        out += [{"metric": m, "evaluator": ev, "value": v.item()} for m, v in scores.items()]
    return out


def headline(rows: pd.DataFrame) -> str:
    acc = rows[rows.metric == "acc"]
    if acc.empty:
        return " ".join(f"{m} {v:.3f}" for m, v in zip(rows.metric, rows.value))
    return "acc " + " ".join(f"{ev} {v:.2f}" for ev, v in zip(acc.evaluator, acc.value))


ANALYSIS = Analysis("behavior", 1, {"exemplar": rows, "tokens": token_rows},
                    "accuracy and loss of every evaluator (token models: next-token loss)", headline=headline)
