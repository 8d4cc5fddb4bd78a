"""Training phases found from the data: where ICL peaks, where CIWL overtakes it, where `flip` switches."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


def accuracy_curves(table: pd.DataFrame, smooth: int = 1) -> pd.DataFrame:
    """step x evaluator in-context accuracy from the behavior rows of a tidy table (e.g. metrics.parquet).

    `smooth` > 1 applies a centred rolling mean over that many logged steps (evaluation noise is ~1/sqrt(n)).
    """
    rows = table[(table.analysis == "behavior") & (table.metric == "acc")]
    curves = rows.pivot_table(index="step", columns="evaluator", values="value").sort_index()
    if smooth > 1:
        curves = curves.rolling(smooth, center=True, min_periods=1).mean()
    return curves


@dataclass(frozen=True)
class Phases:
    icl_peak_step: int
    icl_peak: float
    icl_final: float
    ciwl_final: float
    ciwl_overtake_step: int | None  # first step after the ICL peak where CIWL acc exceeds ICL acc
    flip_switch_step: int | None  # first step after the ICL peak where `flip` acc (in-context answer) < 0.5


def find_phases(curves: pd.DataFrame) -> Phases:
    """Phases of a (smoothed) accuracy table with columns icl, ciwl and flip."""
    icl, ciwl, flip = curves["icl"], curves["ciwl"], curves["flip"]
    peak_step = int(icl.idxmax())
    after = curves.index >= peak_step
    overtake = curves.index[after & (ciwl > icl).to_numpy()]
    switch = curves.index[after & (flip < 0.5).to_numpy()]
    return Phases(
        icl_peak_step=peak_step,
        icl_peak=float(icl.max()),
        icl_final=float(icl.iloc[-1]),
        ciwl_final=float(ciwl.iloc[-1]),
        ciwl_overtake_step=int(overtake[0]) if len(overtake) else None,
        flip_switch_step=int(switch[0]) if len(switch) else None,
    )
