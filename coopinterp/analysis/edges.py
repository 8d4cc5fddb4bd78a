"""Edge attribution: how much each edge of the model's graph (graph.py) carries a contrastive behaviour.

One row per edge: metric `edge_{method}`, the estimated (EAP, EAP-IG) or exact change of the behaviour's metric
(the logit difference answer - wrong, or the probability difference) when that edge alone carries its sender's
output on the corrupted prompt; negative: the edge carries the behaviour. Beside them the metric on the clean and on
the corrupted prompts (`clean_{metric}`, `corrupted_{metric}`). Needs a contrastive source (`--source induction`,
`--source contrast:FILE`).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..sources import TokenBatch
from ..token_model import TokenModel
from .graph import Method, Metric, Scored, contrast_pairs, edge_columns, edge_name, score
from .record import Analysis

IG_STEPS = 3


@dataclass(frozen=True)
class Options:
    method: Method = "eap_ig"  # eap_ig, eap (one gradient), exact (one patched forward per edge: small models)
    steps: int = IG_STEPS  # EAP-IG's interpolation steps
    metric: Metric = "logit_diff"


def scored_rows(found: Scored, method: str, metric: str, evaluator: str) -> list[dict]:
    values = found.edge_values().tolist()
    rows = [{"metric": f"edge_{method}", "evaluator": evaluator, "value": v, **edge_columns(found.graph, edge)}
            for edge, v in zip(found.graph.edges.tolist(), values)]
    return rows + [{"metric": f"clean_{metric}", "evaluator": evaluator, "value": found.clean},
                   {"metric": f"corrupted_{metric}", "evaluator": evaluator, "value": found.corrupted}]


def token_rows(model: TokenModel, batches: dict[str, TokenBatch], options: Options = Options()) -> list[dict]:
    return [row for ev, pairs in contrast_pairs(batches, "edges").items()
            for row in scored_rows(score(model, pairs, options.method, options.steps, options.metric),
                                   options.method, options.metric, ev)]


def headline(rows: pd.DataFrame) -> str:
    edges = rows[rows.metric.str.startswith("edge_")]
    top = edges.loc[edges.value.abs().idxmax()]
    name = edge_name(top.src_layer, top.src_head, top.layer, top["head"],
                     top.component)
    return f"{len(edges)} edges, strongest {name} {top.value:+.2f}"


ANALYSIS = Analysis("edges", 1, {"tokens": token_rows}, "every edge's attribution to a contrastive behaviour "
                    "(EAP-IG, EAP or exact edge patching; needs --source induction or contrast:FILE)",
                    options=Options, opt_in=True, headline=headline)
