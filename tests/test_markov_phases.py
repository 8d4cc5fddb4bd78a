"""analyses/markov_phases.py: transition steps and power-law fits with known answers, and the phase figure from the
shipped metrics-only sweep (checkpoints/markov_phases)."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "analyses"))
import markov_phases as mp  # noqa: E402

from coopinterp.predictors import NAMES  # noqa: E402
from coopinterp.tables import read_table  # noqa: E402


def test_transition_is_where_the_final_algorithm_starts_to_stay():
    dominant = {"a": ["uni_ret", "bi_ret", "uni_ret", "bi_ret", "bi_ret"], "b": ["uni_ret"] * 4 + ["bi_inf"]}
    rows = [(run, step, a, 1.0 if a == d else 0.0) for run, ds in dominant.items()
            for step, d in zip((0, 10, 20, 30, 40), ds) for a in NAMES]
    w = pd.DataFrame(rows, columns=["run", "step", "component", "value"]).pivot_table(
        index=["run", "step"], columns="component", values="value")[list(NAMES)]
    t = mp.transitions(w)
    assert t.loc["a"].tolist() == ["bi_ret", 30] and t.loc["b"].tolist() == ["bi_inf", 40]


def test_power_law_recovers_a_known_exponent():
    k = np.array([1.0, 2, 4, 8])
    b, c = mp.power_law(k, 5 * k**1.5)
    assert b == pytest.approx(1.5) and c == pytest.approx(5)
    assert mp.power_law(np.array([1.0, 1, 2]), np.array([3.0, 4, 5])) is None  # two values of K


def test_phase_figure_from_the_shipped_sweep():
    table = read_table(mp.SHIP / "strategy.parquet")
    chains = mp.chains_of(mp.SHIP, table)
    assert sorted(set(chains.values())) == [1, 2, 4, 8, 16, 64] and len(chains) == 12
    trans = mp.transitions(mp.weights(table))
    assert (trans.final[[r for r in trans.index if chains[r] <= 4]] == "bi_ret").all()
    assert (trans.final[[r for r in trans.index if chains[r] >= 16]] == "bi_inf").all()
    fig = mp.phase_figure(mp.weights(table), chains, trans)
    heat = fig.data[0]
    assert list(heat.y) == ["1", "2", "4", "8", "16", "64"]
