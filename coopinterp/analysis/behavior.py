"""In-context accuracy and query loss of each evaluator batch (docs/reference.md, "Evaluators")."""
from __future__ import annotations

from ..model import CoopModel
from ..task import Batch, accuracy, loss
from .forwards import clean_run


def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    out = []
    for ev, batch in batches.items():
        logits = clean_run(model, batch).logits
        out += [{"metric": "acc", "evaluator": ev, "value": accuracy(logits, batch).item()},
                {"metric": "loss", "evaluator": ev, "value": loss(logits, batch).item()}]
    return out
