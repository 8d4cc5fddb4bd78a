"""The `trajectory` analysis (essential dynamics): curvature, turns and cusps on hand-built paths with known answers,
PCA on synthetic outputs, the outputs it reads from a trained model, its cross-step cache, and its figures' marks."""
import math

import pytest
import torch

from safetensors.torch import load_file

import coopinterp as ci
from coopinterp.analysis import trajectory as tr
from coopinterp.tables import table as tidy
from coopinterp.plots.catalogue import figures
from coopinterp.plots.marks import stages
from coopinterp.plots.trajectory import trajectory_figure


def corner(n: int = 8) -> torch.Tensor:
    """n points east along x, then n north along y: a right-angle turn at index n - 1."""
    east = torch.stack([torch.arange(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], 1)
    north = torch.stack([torch.full((n,), n - 1.0, dtype=torch.float64),
                         torch.arange(1, n + 1, dtype=torch.float64)], 1)
    return torch.cat([east, north])


def test_curvature_of_a_circle_is_one_over_its_radius_in_a_plane_and_in_space():
    angles = torch.tensor([0.0, 0.3, 0.5, 1.1, 1.2, 2.0, 2.9, 3.3], dtype=torch.float64)  # uneven spacing
    r = 2.5
    circle = torch.stack([r * angles.cos(), r * angles.sin()], 1)
    k = tr.curvature(circle)
    assert math.isnan(k[0]) and math.isnan(k[-1])
    torch.testing.assert_close(k[1:-1], torch.full((6,), 1 / r, dtype=torch.float64))
    assert (tr.curvature(circle.flip(0))[1:-1] < 0).all()  # clockwise: negative in a plane
    basis = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    torch.testing.assert_close(tr.curvature(circle @ basis.T + 3.0)[1:-1], torch.full((6,), 1 / r, dtype=torch.float64))


def test_a_corner_is_the_one_boundary_and_a_reversal_is_a_cusp():
    path = corner()
    turns = tr.turning_angles(path)
    torch.testing.assert_close(turns[7], torch.tensor(90.0, dtype=torch.float64))
    assert turns[1:-1].nan_to_num().abs().max() == turns[7] and (turns[1:7] == 0).all()
    options = tr.Options(smooth=0.0)
    assert tr.boundaries(path, turns, options).nonzero().flatten().tolist() == [7]
    smoothed = tr.gaussian_smooth(path, 1.0)  # smoothing rounds the corner but keeps its place
    assert tr.boundaries(smoothed, tr.turning_angles(smoothed), options).nonzero().flatten().tolist() == [7]
    assert not tr.boundaries(path, turns, tr.Options(min_turn=95.0)).any()

    there_and_back = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [2, 0.1], [1, 0.1], [0, 0.1]])
    rows = tr.trajectory_rows({step: p[None] for step, p in enumerate(there_and_back)}, tr.Options(smooth=0.0))
    flagged = {(r["metric"], r["step"]) for r in rows if r["metric"] in ("boundary", "cusp") and r["value"] == 1}
    assert flagged == {("boundary", 3), ("cusp", 3)}


def test_turns_on_tiny_moves_are_not_boundaries():
    path = torch.cat([corner(), torch.tensor([[7.0, 8.001], [7.001, 8.001]], dtype=torch.float64)])
    turns = tr.turning_angles(path)
    assert turns[16] == pytest.approx(90.0)  # a right angle on a move of 1e-3
    assert tr.boundaries(path, turns, tr.Options(smooth=0.0)).nonzero().flatten().tolist() == [7]
    assert tr.boundaries(path, turns, tr.Options(smooth=0.0, min_move=0.0)).nonzero().flatten().tolist() == [7, 16]


def test_speed_peaks_at_a_jump_and_sums_to_one():
    path = torch.tensor([[0.0, 0], [0.1, 0], [0.2, 0], [5.2, 0], [5.3, 0], [5.3, 0.1]], dtype=torch.float64)
    got = tr.speed(path)
    torch.testing.assert_close(got, torch.tensor([0, 0.1, 0.1, 5, 0.1, 0.1], dtype=torch.float64) / 5.4)
    assert int(got.argmax()) == 3


def test_pca_recovers_a_planted_path_and_its_variance_shares():
    t = torch.arange(41, dtype=torch.float64) * 2 * math.pi / 41
    a, b = 3 * t.cos(), t.sin()  # centred, uncorrelated: variances 4.5 and 0.5; |a| largest at t = 0 alone
    u, v = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0].T
    points = a[:, None] * u + b[:, None] * v + 7.0
    coords, explained = tr.principal_components(points, 4)
    assert coords.shape == (41, 4)
    torch.testing.assert_close(explained[:2], torch.tensor([0.9, 0.1], dtype=torch.float64))
    assert explained[2:].abs().max() < 1e-12
    torch.testing.assert_close(coords[:, 0], a)  # the sign puts the largest coordinate (+3 at t = 0) positive
    torch.testing.assert_close(coords[:, 1].abs(), b.abs())


def test_reduction_keeps_the_answer_then_fixed_columns():
    logp = torch.randn(6, 40).log_softmax(-1)
    answers = torch.randint(0, 40, (6, 1))
    out = tr.reduced(logp, answers, tr.Options(columns=5))
    assert out.shape == (6, 6)
    torch.testing.assert_close(out[:, 0], logp.gather(1, answers)[:, 0])
    assert torch.equal(out[:, 1:], tr.reduced(logp.clone(), answers.flip(0), tr.Options(columns=5))[:, 1:])
    assert not torch.equal(out[:, 1:], tr.reduced(logp, answers, tr.Options(columns=5, seed=1))[:, 1:])
    assert torch.equal(tr.reduced(logp, answers, tr.Options(columns=40)), logp)  # no wider than columns: all


def test_any_model_with_outputs_is_read_through_them():
    class Regression:
        model_kinds = ("linear", "outputs")

        def outputs(self, batches):
            return torch.arange(6.0).reshape(3, 2) * len(batches)

    got = tr.ANALYSIS.compute(Regression(), {"a": None, "b": None}, tr.ANALYSIS.parse(None))
    torch.testing.assert_close(got, torch.arange(6.0).reshape(3, 2) * 2)


def test_options_are_checked():
    with pytest.raises(ci.ConfigError, match="cusp_turn"):
        tr.ANALYSIS.parse({"min_turn": 90, "cusp_turn": 45})


def test_end_to_end_outputs_rows_and_the_cross_step_cache(tiny_run, tmp_path):
    cache = tmp_path / "cache"
    table = ci.analyze(tiny_run, "trajectory", n=16, progress=False, cache_dir=cache)
    steps = list(tiny_run.steps)
    assert sorted(table.step.unique()) == steps
    pcs = table[table.metric == "pc"]
    k = min(3, len(steps) - 1)
    assert len(pcs) == k * len(steps) and set(table.analysis) == {"trajectory"}
    explained = table[table.metric == "explained_variance"].drop_duplicates("component").value
    assert len(explained) == k and explained.is_monotonic_decreasing and explained.sum() <= 1 + 1e-9
    shares = " ".join(f"{v:.2f}" for v in explained)
    assert tr.ANALYSIS.headline(table[table.step == steps[-1]]) == f"PCs explain {shares}"

    # the step arrays are the model's log-probabilities at the query over its 16 labels, on the same batches;
    # with fewer columns kept, those of the context labels and the true label come first
    step_files = sorted((cache / "trajectory").glob("step_*.safetensors"))
    assert len(step_files) == len(steps)
    batches = tiny_run.batches(None, 16, 0)
    last = tiny_run.model(steps[-1])
    logp = torch.cat([last(batches[ev]).log_softmax(-1) for ev in sorted(batches)])
    torch.testing.assert_close(load_file(str(step_files[-1]))["values"], logp, atol=1e-4, rtol=1e-4)
    answers = torch.cat([torch.cat([batches[ev].labels, batches[ev].query_label[:, None]], 1)
                         for ev in sorted(batches)])
    narrow = tr.ANALYSIS.compute(last, batches, tr.ANALYSIS.parse({"columns": 4}))
    assert narrow.shape == (len(logp), 3 + 4)
    torch.testing.assert_close(narrow[:, :3], logp.gather(1, answers), atol=1e-4, rtol=1e-4)

    # a second call reads everything back; other steps or another width recompute only the run-level rows
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "trajectory").iterdir()}
    again = ci.analyze(tiny_run, "trajectory", n=16, progress=False, cache_dir=cache)
    assert {p: p.stat().st_mtime_ns for p in (cache / "trajectory").iterdir()} == stamps
    assert again.equals(table)
    fewer = ci.analyze(tiny_run, "trajectory", steps=steps[1:], n=16, progress=False, cache_dir=cache)
    assert sorted(fewer.step.unique()) == steps[1:]
    new = set((cache / "trajectory").iterdir()) - set(stamps)
    assert len(new) == 1 and next(iter(new)).name.startswith("run.")
    assert all(p.stat().st_mtime_ns == s for p, s in stamps.items())
    wider = ci.analyze(tiny_run, "trajectory", n=16, progress=False, cache_dir=cache,
                       options={"trajectory": {"smooth": 3.0}})
    assert len(set((cache / "trajectory").iterdir()) - set(stamps)) == 2
    assert all(p.stat().st_mtime_ns == s for p, s in stamps.items())
    assert not wider[wider.metric == "pc_smooth"].value.equals(table[table.metric == "pc_smooth"].value)


def test_figures_mark_the_boundaries(tiny_run):
    rows = tr.trajectory_rows({step: p[None] for step, p in enumerate(corner().float())}, tr.Options(smooth=0.0))
    table = tidy({**r, "run": "r", "seqs_seen": 10 * r["step"], "analysis": "trajectory"} for r in rows)
    assert [(m.step, m.seqs_seen, m.dash) for m in stages(table)] == [(7, 70, "dash")]
    fig = trajectory_figure(table)
    marked = [t for t in fig.data if t.name == "stage boundary"]
    assert len(marked) == 3 and all(list(t.text) == ["7"] for t in marked)  # one per plane of PC1-PC3
    assert list(marked[0].x) == pytest.approx([float(table[(table.metric == "pc_smooth") & (table.step == 7) &
                                                            (table.component == "pc1")].value.iloc[0])])
    drawn, _ = figures(table)
    lines = [s for s in drawn["trajectory_turns"].layout.shapes if s.line.dash == "dash"]
    assert lines and {s.x0 for s in lines} == {7}
