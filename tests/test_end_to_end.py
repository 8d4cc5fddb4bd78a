"""End to end through the CLI, as a user would: train a tiny run, analyze it, plot it, report it."""
import subprocess
import sys
from pathlib import Path

import pandas as pd

from coopinterp.analysis import default_analyses

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "coopinterp", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_train_analyze_plot_report(tmp_path):
    run = tmp_path / "tiny"
    cli("train", "--preset", "tiny", "--out", run, "--device", "cpu", "--no-progress")
    cli("analyze", run, "--n", "64", "--out", tmp_path / "table.parquet")
    table = pd.read_parquet(tmp_path / "table.parquet")
    assert set(table.analysis) == set(default_analyses())
    assert not table.value.isna().any()
    cli("analyze", run, "--analyses", "llc", "--option", "llc.chains=2", "--option", "llc.draws=10",
        "--option", "llc.burnin=5", "--out", tmp_path / "llc.parquet")
    llc = pd.read_parquet(tmp_path / "llc.parquet")
    assert set(llc.metric) >= {"llc", "llc_std", "rllc"} and not llc.value.isna().any()
    cli("plot", run, "--out", tmp_path / "plots", "--n", "64", "--format", "html,png")
    written = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"behavior.html", "behavior.png", "circuit_evolution.html", "layer0_attention.png", "llc.png",
            "rllc_heatmap.png"} <= written
    html = (tmp_path / "plots" / "behavior.html").read_text()
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js embedded: works offline
    cli("report", run, "--out", tmp_path / "report.html", "--n", "64")
    assert "Run config" in (tmp_path / "report.html").read_text()


# The shipped runs' verdicts (docs/results.md): a change to an analysis that flips one shows up here.
EXPECTED = {"strategy_order": "PASS", "transience": "FAIL", "layer0_switch": "FAIL", "layer1_conserved": "FAIL",
            "copier": "PASS", "kv_composition": "FAIL", "minimal_model": "PASS", "persistent_icl": "PASS",
            "forgetting": "FAIL"}


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_paper_findings_on_the_shipped_runs(tmp_path):
    shipped = snapshot(REPO / "checkpoints")
    r = subprocess.run([sys.executable, str(REPO / "analyses" / "run_all.py"), "--fast", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    verdicts = {line.split()[0]: line.split()[1] for line in r.stdout.split("summary")[-1].splitlines()
                if line.strip() and line.split()[0] in EXPECTED}
    assert verdicts == EXPECTED, r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == (0 if set(EXPECTED.values()) == {"PASS"} else 1)
    assert ": error " not in r.stdout
    assert snapshot(REPO / "checkpoints") == shipped  # the scripts never write into shipped runs
    assert (tmp_path / "strategy_order.html").exists() and (tmp_path / "minimal_model.html").exists()
