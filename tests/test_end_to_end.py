"""End to end through the CLI, as a user would: train a tiny run, analyze it, plot it, report it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from coopinterp.analysis import ANALYSES

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
    assert set(table.analysis) == set(ANALYSES)
    assert not table.value.isna().any()
    cli("plot", run, "--out", tmp_path / "plots", "--n", "64", "--format", "html,png")
    written = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"behavior.html", "behavior.png", "circuit_evolution.html", "layer0_attention.png"} <= written
    html = (tmp_path / "plots" / "behavior.html").read_text()
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js embedded: works offline
    cli("report", run, "--out", tmp_path / "report.html", "--n", "64")
    assert "Run config" in (tmp_path / "report.html").read_text()


def test_paper_findings_scripts_run_on_the_shipped_demo(tmp_path):
    demo = tmp_path / "demo"  # a copy: the scripts cache analyses inside the run, and the shipped one stays as is
    shutil.copytree(REPO / "checkpoints" / "demo", demo)
    r = subprocess.run([sys.executable, str(REPO / "analyses" / "run_all.py"), "--fast", "--run", str(demo),
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    verdicts = [line for line in r.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert len(verdicts) == 7, r.stdout
    assert not any(": error " in line for line in verdicts), r.stdout
    assert (tmp_path / "transience.html").exists() and (tmp_path / "minimal_model.html").exists()
