"""Reading the tidy table (tables.COLUMNS) for figures: one analysis's rows, behavior curves, the clean baseline,
the model's shape; `MissingAnalysis` when a figure's rows are absent."""
from __future__ import annotations

import pandas as pd

from ..errors import CoopError

X_AXES = ("step", "seqs_seen")


class MissingAnalysis(CoopError):
    """The table lacks the rows a figure needs."""


def check_x(x: str) -> str:
    if x not in X_AXES:
        raise CoopError(f"x must be 'step' or 'seqs_seen', got {x!r}")
    return x


def x_title(x: str) -> str:
    return {"step": "training step", "seqs_seen": "sequences seen"}[check_x(x)] + " (log scale)"


def select(table: pd.DataFrame, analysis: str, **equal: object) -> pd.DataFrame:
    """Rows of one analysis (and exact column values); MissingAnalysis if there are none."""
    rows = table[table.analysis == analysis]
    for column, value in equal.items():
        rows = rows[rows[column] == value]
    if rows.empty:
        what = ", ".join(f"{k}={v}" for k, v in equal.items())
        raise MissingAnalysis(f"no {analysis!r} rows{f' with {what}' if what else ''} in the table; "
                              f"run `coopinterp analyze RUN --analyses {analysis}`")
    return rows


def behavior(table: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Behavior rows as a step x evaluator frame; duplicates keep the first row."""
    rows = select(table, "behavior", metric=metric).drop_duplicates(["step", "evaluator"])
    wide = rows.pivot(index="step", columns="evaluator", values="value").sort_index()
    wide.columns = wide.columns.astype(str)
    return wide


def clean_baseline(table: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """The unablated metric per (step, evaluator) from the table's own behavior rows, if it has them."""
    try:
        return behavior(table, metric)
    except MissingAnalysis:
        return None


def minus_clean(rows: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """`rows` with each value minus the clean value of its (step, evaluator): an intervention's effect."""
    base = clean.stack()
    at = pd.MultiIndex.from_arrays([rows.step.to_numpy(), rows.evaluator.astype(str).to_numpy()])
    return rows.assign(value=rows.value.to_numpy() - base.reindex(at).to_numpy())


def on_log_x(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """Rows that fit a log x axis (step 0 cannot sit on one), in x order."""
    return rows[rows[check_x(x)] > 0].sort_values(x)


def per_head(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of one head each (a layer and head, no source head)."""
    return rows[rows.layer.notna() & rows["head"].notna() & rows.src_head.isna()]


def model_shape(table: pd.DataFrame) -> tuple[int, int]:
    """(n_layers, n_heads) of the model behind a table: one more than the largest layer and head in any row."""
    layers = pd.concat([table.layer, table.src_layer]).dropna()
    heads = pd.concat([table["head"], table.src_head]).dropna()
    return (int(layers.max()) + 1 if len(layers) else 1), (int(heads.max()) + 1 if len(heads) else 1)
