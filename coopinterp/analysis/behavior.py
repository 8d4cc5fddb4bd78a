"""In-context accuracy and query loss of each evaluator batch (docs/reference.md, "Evaluators")."""
from __future__ import annotations

import pandas as pd

from ..model import CoopModel
from ..task import Batch, accuracy, loss
from .forwards import clean_run
from .record import Analysis


def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    out = []
    for ev, batch in batches.items():
        logits = clean_run(model, batch).logits
        out += [{"metric": "acc", "evaluator": ev, "value": accuracy(logits, batch).item()},
                {"metric": "loss", "evaluator": ev, "value": loss(logits, batch).item()}]
    return out


def headline(rows: pd.DataFrame) -> str:
    acc = rows[rows.metric == "acc"]
    return "acc " + " ".join(f"{ev} {v:.2f}" for ev, v in zip(acc.evaluator, acc.value))


ANALYSIS = Analysis("behavior", 1, rows, "accuracy and query loss of every evaluator",
                    figures=("behavior", "circuit_evolution"), headline=headline)
