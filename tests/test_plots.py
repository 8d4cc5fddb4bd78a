import itertools
import math
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import plotly.graph_objects as go
import plotly.io
import pytest
from plotly.colors import get_colorscale
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from coopinterp import plots, tables
from coopinterp.cli import app
from coopinterp.errors import CoopError

STEPS = (0, 100, 300, 1000, 3000, 10000)
ICL = (0.5, 0.7, 0.95, 0.9, 0.7, 0.6)  # peaks at 300
CIWL = (0.5, 0.6, 0.6, 0.65, 0.8, 0.9)  # first above ICL after the peak at 3000
HEADS = 3


def synthetic(analyses=("behavior", "attention", "ablation", "composition", "path_patching"), layers=2, heads=HEADS,
              effects=None):
    """A small hand-built table with known phases and known per-head values; `effects` maps (layer, head) to the
    change in ICL accuracy its ablation causes (default: -0.1 * head)."""
    rows = []
    for i, step in enumerate(STEPS):
        base = dict(run="synth", step=step, seqs_seen=32 * step)
        if "behavior" in analyses:
            for ev, v in (("train", 1.0), ("icl", ICL[i]), ("ciwl", CIWL[i]), ("flip", 1 - CIWL[i]), ("iwl", 0.1)):
                rows += [dict(base, analysis="behavior", metric="acc", evaluator=ev, value=v),
                         dict(base, analysis="behavior", metric="loss", evaluator=ev, value=2 - v)]
        for layer in range(layers):
            for head in range(heads):
                value = 0.1 * head + layer + i / 100  # identifies layer, head and step
                if "attention" in analyses:
                    for metric, ev in (("prev_token_score", "train"), ("self_score", "train"),
                                       ("induction_strength", "flip"), ("skip_trigram_score", "ciwl")):
                        rows.append(dict(base, analysis="attention", metric=metric, evaluator=ev, layer=layer,
                                         head=head, value=value - 0.5 * (metric == "induction_strength")))
                if "ablation" in analyses:
                    effect = -0.1 * head if effects is None else effects.get((layer, head), 0.001 * head)
                    for ev, clean in (("icl", ICL[i]), ("ciwl", CIWL[i])):
                        rows.append(dict(base, analysis="ablation", metric="acc", evaluator=ev, layer=layer,
                                         head=head, component="mean", value=clean + effect))
        for m in "qkv":
            if "composition" in analyses:
                rows.append(dict(base, analysis="composition", metric=f"{m}_composition_baseline", value=0.12))
                rows += [dict(base, analysis="composition", metric=f"{m}_composition", src_layer=sl, src_head=s,
                              layer=dl, head=d, value=0.5 * (s == d))
                         for sl in range(layers) for dl in range(sl + 1, layers) for s in range(heads)
                         for d in range(heads)]
            if "path_patching" in analyses:
                for ev, clean in (("train", 1.0), ("icl", ICL[i]), ("ciwl", CIWL[i])):
                    rows += [dict(base, analysis="path_patching", metric="acc", evaluator=ev, src_layer=0,
                                  src_head=s, layer=1, head=d, component=m,
                                  value=clean - 0.5 if (m, s, d) == ("k", None, None) else clean)
                             for s in [*range(heads), None] for d in [*range(heads), None]]
    return tables.table(rows)


@pytest.fixture(scope="module")
def table():
    return synthetic()


def vlines(fig):
    return sorted({s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1 and s.yref.endswith("domain")})


def head_lines_of(fig, panel):
    """label -> trace of the per-head lines on one subplot (`panel`: its x axis); grey lines ("other heads") are
    named by their hover text, which starts with the head's label."""
    return {t.hovertemplate.split("<br>")[0]: t for t in fig.data
            if t.xaxis == panel and t.hovertemplate and t.hovertemplate.startswith("L")}


def assert_lines_are_rows(fig, panel, rows, x="step"):
    """Every head of `rows` (one metric, one evaluator) is one line on `panel` and nothing else is: its x the
    checkpoints after step 0 (log axis), its y the rows' values there, in step order."""
    rows = rows[rows.step > 0].sort_values("step")
    want = {plots.head_label(int(layer), int(head)): g for (layer, head), g in rows.groupby(["layer", "head"])}
    drawn = head_lines_of(fig, panel)
    assert set(drawn) == set(want), panel
    for label, g in want.items():
        assert list(drawn[label].x) == list(g[x]), (panel, label)
        assert list(drawn[label].y) == pytest.approx(list(g.value), abs=1e-12), (panel, label)


def per_head_rows(table, analysis, metric, **equal):
    rows = table[(table.analysis == analysis) & (table.metric == metric) & table.layer.notna()
                 & table["head"].notna() & table.src_head.isna()]
    for column, value in equal.items():
        rows = rows[rows[column] == value]
    assert len(rows), (analysis, metric, equal)
    return rows


def assert_heatmap_is_rows(fig, rows):
    """A head x checkpoint heatmap's cell (row of head LxHy, column of step s) is that head's value at s."""
    hm, labels = fig.data[0], list(fig.layout.yaxis.ticktext)
    steps = [int(t.replace(",", "")) for t in fig.layout.xaxis.ticktext]
    assert hm.z.shape == (len(labels), len(steps)) and len(rows) == hm.z.size
    for layer, head, step, value in zip(rows.layer, rows["head"], rows.step, rows.value):
        assert hm.z[labels.index(plots.head_label(int(layer), int(head))), steps.index(int(step))] == \
            pytest.approx(value, abs=1e-12)


def test_phases_found_from_behavior(table):
    marks = plots.phases(table)
    assert [(m.name, m.step, m.seqs_seen) for m in marks] == [("icl_peak", 300, 9600), ("ciwl_overtakes", 3000, 96000)]
    assert "0.95" in marks[0].label


def test_no_phase_marks_without_icl_or_behavior(table):
    flat = table.copy()
    flat.loc[(flat.analysis == "behavior") & (flat.evaluator == "icl"), "value"] = 0.5
    assert plots.phases(flat) == []
    assert plots.phases(table[table.analysis != "behavior"]) == []


def test_behavior_figure_log_axis_without_step0_and_phase_lines(table):
    fig = plots.behavior_figure(table)
    assert [t.name for t in fig.data] == ["train", "icl", "ciwl", "flip", "iwl"]
    assert list(fig.data[1].x) == list(STEPS[1:]) and list(fig.data[1].y) == list(ICL[1:])
    assert fig.layout.xaxis.type == "log" and "training step" in fig.layout.xaxis.title.text
    assert fig.layout.yaxis.title.text == "accuracy"
    assert vlines(fig) == [300, 3000]
    labels = [a.text for a in fig.layout.annotations]
    assert any("ICL peak" in t for t in labels) and "CIWL overtakes ICL" in labels
    # plotly places annotations on log axes by log10(x)
    assert sorted(a.x for a in fig.layout.annotations) == pytest.approx([2.477, 3.477], abs=1e-3)
    seqs = plots.behavior_figure(table, x="seqs_seen")
    assert "sequences seen" in seqs.layout.xaxis.title.text and vlines(seqs) == [9600, 96000]


def test_holdout_evaluators_dashed(table):
    extra = table[(table.analysis == "behavior") & (table.evaluator == "icl")].copy()
    extra["evaluator"] = "icl/holdout"
    extra["value"] -= 0.25  # held-out classes: lower than icl, so that the two lines cannot be confused
    both = tables.concat([table, extra])
    fig = plots.behavior_figure(both)
    holdout = [t for t in fig.data if t.name == "icl holdout"]
    assert len(holdout) == 1 and holdout[0].line.dash == "dash"
    assert list(holdout[0].x) == list(STEPS[1:]) and list(holdout[0].y) == pytest.approx([v - 0.25 for v in ICL[1:]])
    assert {t.name for t in fig.data} == {"train", "icl", "ciwl", "flip", "iwl", "icl holdout"}
    for trace in fig.data:  # every line is its evaluator's accuracy rows after step 0
        rows = both[(both.analysis == "behavior") & (both.metric == "acc") & (both.step > 0)
                    & (both.evaluator == trace.name.replace(" ", "/"))].sort_values("step")
        assert list(trace.x) == list(rows.step) and list(trace.y) == pytest.approx(list(rows.value)), trace.name


def test_layer_figures_one_line_per_head_and_metric(table):
    fig = plots.layer0_figure(table)
    assert len(fig.data) == 2 * HEADS
    assert [t.name for t in fig.data[:HEADS]] == ["L0H0", "L0H1", "L0H2"]
    assert list(fig.data[2].y) == pytest.approx([0.2 + i / 100 for i in range(1, len(STEPS))])
    assert fig.layout.yaxis.title.text == "attention weight"
    assert len(vlines(fig)) == 2 and len([s for s in fig.layout.shapes if s.x0 == 300]) == 2  # both subplots
    fig1 = plots.layer1_figure(table)
    assert [t.name for t in fig1.data[:HEADS]] == ["L1H0", "L1H1", "L1H2"]
    assert fig1.data[0].y[0] == pytest.approx(0.51)  # induction strength of L1H0 at step 100
    assert fig1.layout.yaxis.title.text.startswith("attention difference")  # a difference, not a weight
    for figure, layer, panels in ((fig, 0, ("prev_token_score", "self_score")),
                                  (fig1, 1, ("induction_strength", "skip_trigram_score"))):
        for panel, metric in zip(("x", "x2"), panels):
            assert_lines_are_rows(figure, panel, per_head_rows(table, "attention", metric, layer=layer))
    assert list(head_lines_of(fig1, "x2")["L1H2"].y) == pytest.approx([1.2 + i / 100 for i in range(1, len(STEPS))])


def test_head_heatmap_shape_values_and_phase_columns(table):
    fig = plots.head_heatmap(table, "attention", "induction_strength")
    hm = fig.data[0]
    assert list(fig.layout.yaxis.ticktext) == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert hm.z.shape == (2 * HEADS, len(STEPS)) and hm.z[4, 2] == pytest.approx(0.62)
    assert_heatmap_is_rows(fig, per_head_rows(table, "attention", "induction_strength"))
    assert list(fig.layout.xaxis.ticktext) == [f"{s:,}" for s in STEPS]
    assert vlines(fig) == [2, 4]  # columns of steps 300 and 3000
    late = plots.head_heatmap(table, "attention", "self_score", marks=[plots.Phase("late", 99_000, 0, "late")])
    assert vlines(late) == []  # after the last checkpoint: no column to mark
    with pytest.raises(CoopError, match="several evaluators"):
        plots.head_heatmap(tables.concat([table, table.assign(evaluator="other")]), "attention", "self_score")


def test_ablation_figure_is_change_from_clean(table):
    fig = plots.ablation_figure(table)
    by_name = {(t.name, t.xaxis): t for t in fig.data}
    assert list(by_name[("L1H2", "x")].y) == pytest.approx([-0.2] * (len(STEPS) - 1))
    assert by_name[("L0H0", "x")].line.dash == "dot" and by_name[("L1H0", "x")].line.dash == "solid"
    for panel, ev, clean in (("x", "icl", ICL), ("x2", "ciwl", CIWL)):  # ablated minus the clean accuracy
        rows = per_head_rows(table, "ablation", "acc", evaluator=ev)
        rows = rows.assign(value=rows.value - rows.step.map(dict(zip(STEPS, clean))))
        assert_lines_are_rows(fig, panel, rows)
    assert "ablated − clean" in fig.layout.yaxis.title.text
    raw = plots.ablation_figure(table[table.analysis != "behavior"])
    assert raw.data[0].y[0] == pytest.approx(ICL[1]) and "with the head ablated" in raw.layout.yaxis.title.text


def test_composition_slider_shows_one_step_at_a_time(table):
    fig = plots.composition_figure(table)
    assert len(fig.data) == 3 * len(STEPS)
    slider = fig.layout.sliders[0]
    assert [s.label.split(" ")[0] for s in slider.steps] == [f"{s:,}" for s in STEPS]
    assert "ICL peak" in slider.steps[2].label and "CIWL overtakes" in slider.steps[4].label
    far = plots.composition_figure(table, marks=[plots.Phase("late", 100_000, 0, "late")]).layout.sliders[0]
    assert not any("late" in s.label for s in far.steps)  # no checkpoint near it
    visible = slider.steps[1].args[0]["visible"]
    assert sum(visible) == 3 and visible[3:6] == [True] * 3
    # it opens at the checkpoint nearest the ICL peak (step index 2), not at the end
    assert [t.visible for t in fig.data].count(True) == 3 and fig.data[3 * 2].visible and slider.active == 2
    still = plots.static_figure(fig)
    assert not still.layout.sliders and still.layout.title.text.endswith(f"step {slider.steps[2].label}")
    assert far.active == len(STEPS) - 1  # no mark near a checkpoint: the last one
    assert "random ≈ 0.12" in fig.layout.annotations[0].text
    assert fig.data[0].z[1][1] == 0.5 and fig.data[0].z[0][1] == 0


def test_path_patching_change_with_all_rows(table):
    fig = plots.path_patching_figure(table, "train")
    k = fig.data[1]  # step 0, through K
    assert list(k.x)[0] == "all" and list(k.y)[0] == "all"
    assert k.z[0][0] == pytest.approx(-0.5) and k.z[1][1] == pytest.approx(0.0)
    assert fig.data[1].colorbar.title.text == "Δ accuracy"


def test_missing_analyses_are_skipped_with_a_reason():
    figs, skipped = plots.figures(synthetic(analyses=("behavior", "attention")))
    assert {"behavior", "circuit_evolution", "layer0_attention", "layer1_attention", "induction_heatmap"} <= set(figs)
    assert {"ablation", "composition", "path_patching"} <= set(skipped)
    assert "coopinterp analyze RUN --analyses composition" in skipped["composition"]
    with pytest.raises(plots.MissingAnalysis, match="no 'attention' rows"):
        plots.layer0_figure(synthetic(analyses=("behavior",)))


def test_metrics_feed_behavior_and_phases(table):
    metrics = table[table.analysis == "behavior"].copy()
    metrics.loc[(metrics.evaluator == "icl") & (metrics.step == 1000), "value"] = 0.99  # the peak moves
    figs, _ = plots.figures(table, metrics)
    assert 1000 in vlines(figs["behavior"]) and 1000 in vlines(figs["layer0_attention"])


def test_html_is_offline_and_report_embeds_plotlyjs_once(table, tmp_path):
    figs, skipped = plots.figures(synthetic(analyses=("behavior", "attention")))
    path = plots.write_html(figs["behavior"], tmp_path / "b.html")
    text = path.read_text()
    assert "<script src=" not in text and "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js inline
    report = plots.write_report(figs, tmp_path / "r.html", "coopinterp report: synth",
                                {"task": {"eps": 0.6}, "train": {"lr": 3e-4}}, skipped)
    html = report.read_text()
    banner = "plotly.js v"  # the bundle's licence banner, once per copy
    assert html.count(banner) == text.count(banner) == 1
    assert html.count("Plotly.newPlot") - get_plotlyjs().count("Plotly.newPlot") == len(figs)
    assert "<th>eps</th><td>0.6</td>" in html and "Skipped figures" in html and "<script src=" not in html


def test_png_export_needs_no_system_browser(tmp_path):
    """PNGs come from the pip-installed kaleido alone: run with a PATH whose every program but the browsers is
    there (a folder of links to /usr/bin and /bin, without chromium or chrome)."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for folder in (Path("/usr/bin"), Path("/bin")):
        for program in folder.iterdir():
            if "chrom" not in program.name and not (bare / program.name).exists():
                (bare / program.name).symlink_to(program)
    code = ("import coopinterp.plots as p, plotly.graph_objects as go; "
            f"print(p.write_pngs({{'fig': go.Figure(go.Scatter(y=[1, 3, 2]))}}, {str(tmp_path)!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PATH": str(bare), "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-500:]
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_failure_warns_and_the_command_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no renderer")
    monkeypatch.setattr(plotly.io, "to_image", broken)
    table = tmp_path / "t.parquet"
    tables.write_table(synthetic(analyses=("behavior",)), table)
    r = cli("plot", str(table), "--out", str(tmp_path / "figs"))
    assert r.exit_code == 0, r.output
    assert "warning: no PNGs written: PNG export failed (RuntimeError: no renderer); PNG needs kaleido" in r.output
    assert (tmp_path / "figs" / "behavior.html").exists() and not (tmp_path / "figs" / "behavior.png").exists()


def cli(*args):
    """The CLI in-process (a subprocess would pay torch's import again)."""
    return CliRunner().invoke(app, list(args))


def test_cli_plot_and_report_on_a_run(tiny_run, tmp_path):
    run = tmp_path / "run"  # a copy: analyze caches under RUN/analysis and the fixture run is shared
    shutil.copytree(tiny_run.path, run, ignore=shutil.ignore_patterns("analysis"))
    r = cli("plot", str(run), "--out", str(tmp_path / "figs"), "--format", "html",
            "--analyses", "behavior,attention,ablation", "--no-progress")
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "behavior.html" in written and "layer1_attention.html" in written and "ablation.html" in written
    assert "skipped composition" in r.output and "composition.html" not in written
    r = cli("report", str(run), "--out", str(tmp_path / "report.html"), "--analyses", "behavior,attention",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert "n_classes" in (tmp_path / "report.html").read_text()


def test_cli_plot_table_and_errors(tmp_path):
    path = tables.write_table(synthetic(analyses=("behavior",)), tmp_path / "t.parquet")
    r = cli("plot", str(path), "--out", str(tmp_path / "o"), "--format", "html")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "behavior.html").is_file() and "skipped layer0_attention" in r.output
    for args, message in ((("plot", str(path), "--out", "o", "--x", "foo"), "--x must be step or seqs_seen"),
                          (("plot", str(path), "--out", "o", "--format", "gif"), "--format: unknown value(s) gif"),
                          (("plot", str(tmp_path / "none.parquet"), "--out", "o"), "not found"),
                          (("report", str(tmp_path), "--out", "r.html"), "holds no checkpoint folders")):
        r = cli(*args)
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def llc_rows(layers=2, heads=HEADS):
    """LLC rows with known values: the whole model's LLC 10 * (i + 1) ± 1, head (l, h)'s rLLC 10^-(i % 3) * (h + 1)."""
    rows = []
    for i, step in enumerate(STEPS):
        base = dict(run="synth", step=step, seqs_seen=32 * step, analysis="llc", evaluator="train")
        rows += [dict(base, metric="llc", value=10.0 * (i + 1)), dict(base, metric="llc_std", value=1.0)]
        rows += [dict(base, metric="rllc", layer=layer, head=h, value=10.0 ** -(i % 3) * (h + 1))
                 for layer in range(layers) for h in range(heads)]
    return tables.table(rows)


def test_llc_figures(table):
    both = tables.concat([table, llc_rows()])
    figs, _ = plots.figures(both)
    fig = figs["llc"]
    whole = next(t for t in fig.data if t.name == "LLC")
    assert list(whole.x) == list(STEPS[1:]) and list(whole.y) == [20.0, 30.0, 40.0, 50.0, 60.0]  # step 0 off log x
    assert list(whole.error_y.array) == [1.0] * 5
    head_lines = {t.name for t in fig.data if t.yaxis == "y3"}
    assert head_lines == {plots.head_label(layer, h) for layer in range(2) for h in range(HEADS)}
    assert_lines_are_rows(fig, "x3", per_head_rows(both, "llc", "rllc"))
    assert list(head_lines_of(fig, "x3")["L1H2"].y) == pytest.approx([0.3, 0.03, 3.0, 0.3, 0.03])
    assert len(vlines(fig)) == 2  # the ICL peak and the CIWL takeover
    heat = figs["rllc_heatmap"].data[0]
    assert heat.z[0, 1] == pytest.approx(-1.0) and heat.customdata[1, 1, 1] == pytest.approx(0.2)  # log10, value
    rllc = per_head_rows(both, "llc", "rllc")
    labels, steps = list(figs["rllc_heatmap"].layout.yaxis.ticktext), list(STEPS)
    for layer, head, step, value in zip(rllc.layer, rllc["head"], rllc.step, rllc.value):
        row, col = labels.index(plots.head_label(int(layer), int(head))), steps.index(step)
        assert heat.customdata[row, col, 1] == pytest.approx(value) and heat.z[row, col] == pytest.approx(
            math.log10(value))
    assert {"llc", "rllc_heatmap"} <= set(plots.figures(table)[1])  # no llc rows: skipped with a reason


@pytest.fixture(scope="module")
def wide():
    """3 layers x 12 heads, every analysis; ablating L2H7 or L0H3 moves ICL a lot, every other head barely."""
    effects = {(2, 7): -0.4, (0, 3): 0.2}
    return tables.concat([synthetic(layers=3, heads=12, effects=effects), llc_rows(3, 12)])


def test_every_figure_scales_to_3_layers_of_12_heads(wide):
    figs, skipped = plots.figures(wide)
    assert skipped == {}
    assert {f"layer{layer}_attention" for layer in range(3)} <= set(figs)
    # the middle layer is read by layer 2 and reads layer 0: both its label-position and its query signatures
    middle = figs["layer1_attention"]
    assert {t.xaxis for t in middle.data} == {"x", "x2", "x3", "x4"}
    assert {t.xaxis for t in figs["layer0_attention"].data} == {"x", "x2"}
    for panel, metric in zip(("x", "x2", "x3", "x4"), ("prev_token_score", "self_score", "induction_strength",
                                                        "skip_trigram_score")):
        assert_lines_are_rows(middle, panel, per_head_rows(wide, "attention", metric, layer=1))
    heat = figs["induction_heatmap"]
    assert heat.data[0].z.shape == (36, len(STEPS)) and len(heat.layout.yaxis.ticktext) == 36
    assert len([s for s in heat.layout.shapes if s.y0 == s.y1]) == 2  # a rule between each pair of layers
    assert_heatmap_is_rows(heat, per_head_rows(wide, "attention", "induction_strength"))
    composition = figs["composition"].data[0]
    assert composition.z.shape == (24, 24)  # layers 0-1 write, layers 1-2 read
    assert list(composition.y[:2]) == ["L0H0", "L0H1"] and list(composition.x[-1:]) == ["L2H11"]
    # each cell is its own row: values that name their writer, reader, mode and step, drawn one step at a time
    coded = wide[wide.analysis == "composition"].copy()
    pair = coded.src_layer.notna()
    coded.loc[pair, "value"] = (coded.src_layer * 1000 + coded.src_head * 100 + coded.layer * 10 + coded["head"]
                                + coded.metric.map({"q_composition": 0.1, "k_composition": 0.2, "v_composition": 0.3})
                                + coded.step / 1e6)[pair]
    fig = plots.composition_figure(coded)
    assert len(fig.data) == 3 * len(STEPS)
    for i, trace in enumerate(fig.data):
        step, mode = STEPS[i // 3], "qkv"[i % 3]
        rows = coded[(coded.step == step) & (coded.metric == f"{mode}_composition")]
        y, x = list(trace.y), list(trace.x)
        for sl, s, dl, d, value in zip(rows.src_layer, rows.src_head, rows.layer, rows["head"], rows.value):
            assert trace.z[y.index(plots.head_label(int(sl), int(s)))][x.index(plots.head_label(int(dl), int(d)))] \
                == pytest.approx(value, abs=1e-9), (step, mode, sl, s, dl, d)
        assert sum(v == v for row in trace.z for v in row) == len(rows)  # every other cell empty (NaN)


def test_crowded_panels_colour_only_the_salient_heads(wide):
    fig = plots.ablation_figure(wide)
    coloured = {t.name for t in fig.data if t.name != "other heads"}
    assert coloured == {"L2H7", "L0H3"}
    for panel, ev, clean in (("x", "icl", ICL), ("x2", "ciwl", CIWL)):  # grey lines too: ablated minus clean
        rows = per_head_rows(wide, "ablation", "acc", evaluator=ev)
        assert_lines_are_rows(fig, panel, rows.assign(value=rows.value - rows.step.map(dict(zip(STEPS, clean)))))
    assert list(head_lines_of(fig, "x2")["L2H7"].y) == pytest.approx([-0.4] * (len(STEPS) - 1))
    assert list(head_lines_of(fig, "x")["L1H5"].y) == pytest.approx([0.005] * (len(STEPS) - 1))  # a grey one
    grey = [t for t in fig.data if t.name == "other heads"]
    assert len(grey) == 2 * (36 - 2) and sum(bool(t.showlegend) for t in grey) == 1  # one legend entry for them
    assert "grey: the other heads" in fig.layout.legend.title.text
    legend_entries = [t.name for t in fig.data if t.showlegend is not False]
    assert len(legend_entries) == 3  # two salient heads and "other heads", not 36
    layer_figure = plots.layer_figure(synthetic(("behavior", "attention")), 1)
    assert all(t.name != "other heads" for t in layer_figure.data)  # 3 heads a panel: all coloured


def test_head_colours_are_distinct_for_any_model():
    def lab(color):  # CIE L*a*b* of an sRGB hex colour
        rgb = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        xyz = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.9505, 0.2126 * r + 0.7152 * g + 0.0722 * b, \
            (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.089
        fx, fy, fz = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz]
        return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)

    for n_layers, n_heads in ((2, 8), (3, 12), (6, 8), (12, 12)):
        colors = {(layer, h): plots.head_color(layer, h, n_layers, n_heads)
                  for layer in range(n_layers) for h in range(n_heads)}
        assert len(set(colors.values())) == n_layers * n_heads
        for layer in range(n_layers):  # heads of one layer, the lines compared most, differ clearly
            same = [lab(colors[layer, h]) for h in range(n_heads)]
            assert min(math.dist(a, b) for a, b in itertools.combinations(same, 2)) > 15
    assert plots.head_color(1, 3) != plots.head_color(1, 4)


def is_diverging_at_zero(trace):
    """A diverging scale (red at one end, blue at the other) whose midpoint is 0."""
    rdbu = [color for _, color in get_colorscale("RdBu")]
    colors = [color for _, color in trace.colorscale]
    symmetric = trace.zmin is not None and trace.zmax is not None and trace.zmin == -trace.zmax
    return colors in (rdbu, rdbu[::-1]) and (trace.zmid == 0 or symmetric)


def test_signed_heatmaps_use_a_diverging_scale_centred_on_zero(wide):
    figs, _ = plots.figures(wide)
    for name in ("induction_heatmap", "ablation_heatmap_icl", "path_patching", "path_patching_icl"):
        assert all(is_diverging_at_zero(t) for t in figs[name].data), name
        assert all(t.zmid == 0 and t.zmin == -t.zmax for t in figs[name].data), name
    for name in ("composition", "rllc_heatmap"):  # scores >= 0 and log values: sequential
        assert not any(is_diverging_at_zero(t) for t in figs[name].data), name
    auto = plots.head_heatmap(wide, "attention", "prev_token_score")  # all >= 0 here: sequential
    assert not is_diverging_at_zero(auto.data[0])
    signed = plots.head_heatmap(wide.assign(value=wide.value - 1.5), "attention", "prev_token_score")
    assert is_diverging_at_zero(signed.data[0])


def test_ablation_heatmap_shows_the_change_from_clean(wide):
    fig = plots.ablation_heatmap(wide, "icl")
    z, labels = fig.data[0].z, list(fig.layout.yaxis.ticktext)
    assert z[labels.index("L2H7")] == pytest.approx([-0.4] * len(STEPS))
    assert z[labels.index("L0H3")] == pytest.approx([0.2] * len(STEPS))


def test_path_patching_prints_its_cells(wide):
    fig = plots.path_patching_figure(wide, "icl")
    k = fig.data[1]
    assert fig.data[0].texttemplate == "%{text}" and k.text[0][0] == "-0.50" and k.text[1][1] == ""


def test_every_figure_has_a_caption_under_it_in_the_report(wide, tmp_path):
    figs, _ = plots.figures(wide)
    html = plots.report_html(figs, "coopinterp report: wide")
    for name, fig in figs.items():
        caption = plots.caption(fig)
        assert caption.endswith(".") and caption.count(". ") == 0, name  # one sentence
        start = html.index(f'id="fig-{name}"')
        end = min([html.index(f'<h2 id="{n}"', start) for n in figs if f'<h2 id="{n}"' in html[start:]] or [len(html)])
        assert escape(caption) in html[start:end], name  # under its own figure, before the next one
    page = plots.write_html(figs["behavior"], tmp_path / "b.html").read_text()
    assert escape(plots.caption(figs["behavior"])) in page  # the figure's own page carries it too


def test_phase_labels_sit_above_the_data_and_apart(table):
    apart = plots.behavior_figure(table)  # marks at 300 and 3000: one row of labels
    assert {a.yshift for a in apart.layout.annotations} == {0}
    close = plots.behavior_figure(table, marks=[plots.Phase("a", 300, 0, "ICL peak: acc 0.95"),
                                                plots.Phase("b", 330, 0, "CIWL overtakes ICL")])
    assert sorted(a.yshift for a in close.layout.annotations) == [-16, 0]  # the second label a row down
    for fig, rows in ((apart, 1), (close, 2)):  # headroom above accuracy 1.02 for the label rows
        lo, hi = fig.layout.yaxis.range
        plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
        assert (hi - 1.02) / (hi - lo) * plot_px >= 16 * rows
        assert all(not a.bgcolor for a in fig.layout.annotations)


def test_log_axes_tick_at_powers_of_ten(wide):
    figs, _ = plots.figures(wide)
    for name, fig in figs.items():
        for axis in [fig.layout[k] for k in fig.layout if k.startswith(("xaxis", "yaxis"))]:
            if axis.type == "log":
                assert axis.dtick == 1, name


def test_the_catalogue_is_built_from_the_figure_records(monkeypatch):
    """A figure declared in a plot module's FIGURES is drawn where its analysis has rows, with no other change;
    an exemplar table does not draw a token figure."""
    from coopinterp.plots import catalogue
    from coopinterp.plots.figure import Figure

    names = [f.name for f in catalogue.catalogue()]
    assert names.index("behavior") < names.index("circuit_evolution") < names.index("composition")
    planted = Figure("planted", "attention", lambda v: go.Figure(layout=dict(title=str(len(v.table)))))
    declared = catalogue.catalogue()
    monkeypatch.setattr(catalogue, "catalogue", lambda: (planted,) + declared)
    table = synthetic(analyses=("behavior", "attention"))
    figs, _ = plots.figures(table)
    assert figs["planted"].layout.title.text == str(len(table)) and "token_loss" not in figs
    figs, _ = plots.figures(synthetic(analyses=("behavior",)))
    assert "planted" not in figs  # a figure for any table needs its analysis's rows
