import math

import pytest
import torch
from typer.testing import CliRunner

from coopinterp.cli import app
from coopinterp.errors import CoopError
from coopinterp.minimal import DIMS, METRICS, losses, minimal_figure, run_minimal, summarize_minimal
from coopinterp.tables import COLUMNS, DTYPES, read_table


@pytest.fixture(scope="module")
def short_run():
    """Seed 7 at the paper's init scale: ICL forms by ~300 steps, CIWL overtakes by ~1,300."""
    return run_minimal(steps=2500, seed=7, every=10)


def test_closed_form_losses_match_outer_products():
    g = torch.Generator().manual_seed(0)
    p = {k: torch.randn(1, n, generator=g, dtype=torch.float64) for k, n in DIMS.items()}
    t = {k: torch.randn_like(v) for k, v in p.items()}
    outer = lambda x, y, z: torch.einsum("i,j,k->ijk", x[0], y[0], z[0])  # noqa: E731
    L1 = 0.5 * ((outer(t["a"], t["b"], t["c"]) - outer(p["a"], p["b"], p["c"])) ** 2).mean()
    L2 = 0.5 * ((outer(t["d"], t["b"], t["c"]) - outer(p["d"], p["b"], p["c"])) ** 2).mean()
    C = 0.5 * (torch.outer(p["a"][0], p["d"][0]) ** 2).mean()
    got = losses(p, t, mu1=0.1, mu2=0.0, alpha=0.1)
    torch.testing.assert_close(got["loss_L1"][0], L1)
    torch.testing.assert_close(got["loss_L2"][0], L2)
    torch.testing.assert_close(got["cost"][0], C)
    torch.testing.assert_close(got["loss"][0], (L1 + 0.1) * L2 + 0.1 * C)


def test_table_schema_and_finite(short_run):
    assert list(short_run.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in short_run.dtypes.items()} == DTYPES
    assert set(short_run.metric) == set(METRICS)
    assert set(short_run.run) == {"minimal"} and set(short_run.analysis) == {"minimal"}
    assert short_run.step.min() == 0 and short_run.step.max() == 2500
    assert short_run[["evaluator", "layer", "head", "component"]].isna().all().all()
    assert short_run.value.map(math.isfinite).all()


def test_icl_rises_then_decays_as_ciwl_takes_over(short_run):
    s = summarize_minimal(short_run)
    assert s.icl_peak > 0.9 and 0 < s.icl_peak_step < 1000
    assert s.icl_final < 0.3 * s.icl_peak
    assert s.ciwl_final > 0.99
    assert s.ciwl_overtakes_step is not None and s.icl_peak_step < s.ciwl_overtakes_step < 2500
    # The divot: the slower mechanism's loss rises while ICL forms, before CIWL drives it to zero.
    assert s.l2_divot_height > 0.05 and s.l2_divot_step < s.ciwl_overtakes_step
    w = short_run.pivot(index="step", columns="metric", values="value")
    assert w.norm_a.iloc[-1] < 0.5 * w.norm_a.loc[s.icl_peak_step]  # the a-path shrinks


def test_seeds_run_as_a_batch():
    both = run_minimal(steps=300, seed=[7, 3], every=100)
    alone = run_minimal(steps=300, seed=3, every=100)
    assert set(both.run) == {"minimal_seed7", "minimal_seed3"}
    mine = both[both.run == "minimal_seed3"].value.to_numpy()
    assert mine == pytest.approx(alone.value.to_numpy(), rel=1e-9)
    with pytest.raises(CoopError, match="pass run="):
        summarize_minimal(both)


def test_bad_arguments_raise():
    with pytest.raises(CoopError, match="steps"):
        run_minimal(steps=0)
    with pytest.raises(CoopError, match="diverged"):
        run_minimal(steps=200, lr=1e3, every=50)


def test_figure_has_both_strategies(short_run):
    fig = minimal_figure(short_run)
    names = {t.name for t in fig.data}
    assert {"ICL (a-path)", "CIWL (d-path)", "L1 (ICL task)", "L2 (CIWL task)", "|a|", "|d|"} <= names
    assert {t.legend for t in fig.data} == {"legend", "legend2", "legend3"}  # a legend per panel
    assert [a.text for a in fig.layout.annotations if "ICL peak" in a.text or "overtakes" in a.text]  # phase marks
    assert all(fig.layout[f"yaxis{i}"].title.text for i in ("", "2", "3"))


def test_cli_writes_table_and_html(tmp_path):
    res = CliRunner().invoke(app, ["minimal", "--out", str(tmp_path), "--steps", "400", "--every", "20",
                                   "--format", "html,csv"])
    assert res.exit_code == 0, res.output
    assert "ICL strength peaks" in res.output
    df = read_table(tmp_path / "minimal.parquet")
    assert df.step.max() == 400 and set(df.metric) == set(METRICS)
    assert (tmp_path / "minimal.csv").is_file()
    html = (tmp_path / "minimal.html").read_text()
    assert "plotly" in html and len(html) > 1_000_000  # plotly.js is embedded: works offline
    bad = CliRunner().invoke(app, ["minimal", "--out", str(tmp_path), "--format", "svg"])
    assert bad.exit_code == 2 and "--format: unknown value(s)" in bad.output
