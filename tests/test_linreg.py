"""The linreg task (linear attention on in-context linear regression): the forward against the paper's matrix formula,
the plateau theory L(m) at hand-set PCR_m weights, the eigen-overlaps of hand-set heads, and a tiny run end to end."""
import dataclasses

import pytest
import torch

import coopinterp as ci
from coopinterp import plots
from coopinterp.analysis.linreg import head_rows, pcr_coefficients, pcr_predictions, plateau_losses, rows
from coopinterp.errors import ConfigError
from coopinterp.tasks.linreg import LinearAttention, LinregTaskConfig, covariance, sample, spectrum

SEPARATE = LinregTaskConfig(dim=4, context=31, heads=4, rank=1)


def draw(task: LinregTaskConfig, n: int, seed: int = 0):
    return sample(task, n, torch.Generator().manual_seed(seed))


def random_model(task: LinregTaskConfig) -> LinearAttention:
    model = LinearAttention(task, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.7, generator=torch.Generator().manual_seed(p.numel()))
    return model.double()


@pytest.mark.parametrize("task", [LinregTaskConfig(dim=3, context=5, attention="merged", heads=2, rank=None),
                                  LinregTaskConfig(dim=3, context=5, heads=3, rank=2)])
def test_forward_is_the_paper_matrix_formula_and_heads_ablate_through_the_hook(task):
    model = random_model(task)
    X = draw(task, 6).seqs.double()
    N = task.context
    kq = model.W_KQ if task.attention == "merged" else model.W_K.transpose(1, 2) @ model.W_Q
    per_head = [model.W_V[h] @ X @ X.transpose(1, 2) @ kq[h] @ X / N for h in range(task.heads)]
    attn = X + sum(per_head)
    assert torch.allclose(model(X), attn[:, -1, -1], atol=1e-10)
    C, query = X @ X.transpose(1, 2) / N, X[..., -1]
    assert torch.allclose(model.fast_predict(C, query), attn[:, -1, -1], atol=1e-10)

    def drop_head_1(result, hook):
        result[:, 1] = 0.0
        return result

    ablated = model.run_with_hooks(X, fwd_hooks=[("hook_result", drop_head_1)])
    assert torch.allclose(ablated, (attn - per_head[1])[:, -1, -1], atol=1e-10)
    assert not torch.allclose(ablated, model(X))


def test_sequences_follow_the_task():
    task = LinregTaskConfig(dim=3, context=4, heads=3)
    values, vectors = spectrum(task)
    assert torch.allclose(values, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) / 6)
    assert torch.allclose(covariance(task) @ vectors, vectors * values, atol=1e-12)
    batch = draw(task, 40_000)
    x = batch.seqs[:, :3].transpose(1, 2).reshape(-1, 3).double()
    assert torch.allclose(x.T @ x / len(x), covariance(task), atol=0.01)
    assert (batch.seqs[:, 3, -1] == 0).all()
    w = torch.linalg.lstsq(batch.seqs[:2, :3, :3].transpose(1, 2), batch.seqs[:2, 3, :3, None]).solution
    assert torch.allclose((batch.seqs[:2, :3, -1] * w[..., 0]).sum(1), batch.targets[:2], atol=1e-4)


def test_white_spectrum_is_identity_over_d_and_old_configs_read_as_the_paper_one():
    white = LinregTaskConfig(dim=3, context=4, heads=3, spectrum="white")
    values, vectors = spectrum(white)
    assert torch.equal(values, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(covariance(white), torch.eye(3, dtype=torch.float64) / 3, atol=1e-12)
    x = draw(white, 40_000).seqs[:, :3].transpose(1, 2).reshape(-1, 3).double()
    assert torch.allclose(x.T @ x / len(x), torch.eye(3, dtype=torch.float64) / 3, atol=0.01)
    assert torch.equal(spectrum(dataclasses.replace(white, spectrum="paper"))[1], vectors)  # same rotation
    merged, merged_white = ci.preset("linreg-merged").to_dict(), ci.preset("linreg-merged-white").to_dict()
    assert merged_white["task"] == {**merged["task"], "spectrum": "white"} and merged_white["train"] == merged["train"]
    old = ci.preset("linreg-merged").to_dict()
    del old["task"]["spectrum"]  # a run.json written before the field existed
    assert ci.RunConfig.from_dict(old).task.spectrum == "paper"
    with pytest.raises(ConfigError, match="spectrum must be one of"):
        ci.preset("linreg-tiny").replace(task={"spectrum": "pink"})


def test_merged_optimum_for_white_spectrum_has_the_loss_d_plus_1_over_n_plus_d_plus_1():
    """ATTN_M's converged loss for Λ = I / D: one head with W^KQ's x-block c I, c = 1 / (λ (1 + (1 + D) / N)),
    is PCR_D, whose loss is L(D) = (D + 1) / (N + D + 1) (tr Λ = 1)."""
    task = LinregTaskConfig(dim=4, context=31, attention="merged", heads=1, rank=None, spectrum="white")
    D, N = task.dim, task.context
    L = plateau_losses(task)
    assert L[-1].item() == pytest.approx((D + 1) / (N + D + 1))
    model = LinearAttention(task).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_V[0, D, D] = 1.0
        model.W_KQ[0, :D, :D] = torch.eye(D) / ((1 / D) * (1 + (1 + D) / N))
    batch = draw(task, 30_000, seed=4)
    errors = (model(batch.seqs.double()) - batch.targets.double()).pow(2)
    assert abs(errors.mean() - L[-1]) < 4 * errors.std() / len(errors) ** 0.5, (errors.mean().item(), L[-1].item())


def pcr_model(task: LinregTaskConfig, m: int) -> LinearAttention:
    """ATTN_S with rank-1 heads set to PCR_m: head d < m reads y (value), u_d (key), c_d u_d (query); others zero."""
    model = LinearAttention(task).double()
    _, vectors = spectrum(task)
    D, c = task.dim, pcr_coefficients(task)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for d in range(m):
            model.W_V[d, D, D] = 1.0
            model.W_K[d, 0, :D] = vectors[:, d]
            model.W_Q[d, 0, :D] = c[d] * vectors[:, d]
    return model


def test_plateau_loss_is_measured_at_the_pcr_fixed_points():
    batch = draw(SEPARATE, 30_000, seed=1)
    L = plateau_losses(SEPARATE)
    assert L[0] == pytest.approx(1.0) and (L.diff() < 0).all()
    for m in range(SEPARATE.dim + 1):
        errors = (pcr_model(SEPARATE, m)(batch.seqs.double()) - batch.targets.double()).pow(2)
        se = errors.std() / len(errors) ** 0.5
        assert abs(errors.mean() - L[m]) < 4 * se, (m, errors.mean().item(), L[m].item(), se.item())


def test_pcr_coefficients_are_the_least_squares_ones():
    batch = draw(SEPARATE, 100_000, seed=2)
    terms = pcr_predictions(SEPARATE, batch.seqs).diff(dim=1) / pcr_coefficients(SEPARATE)  # feature of each d
    fitted = torch.linalg.lstsq(terms, batch.targets.double()[:, None]).solution[:, 0]
    assert torch.allclose(fitted, pcr_coefficients(SEPARATE), rtol=0.01)


def test_analysis_rows_name_the_pcr_the_model_runs():
    model = pcr_model(SEPARATE, 2).float()
    table = {(r["metric"], r.get("component")): r["value"]
             for r in rows(model, {"linreg": draw(SEPARATE, 4_000, seed=3)}) if "head" not in r}
    distances = [table["pcr_distance", str(m)] for m in range(5)]
    assert distances[2] < 1e-10 and min(distances[:2] + distances[3:]) > 1e-3
    assert table["loss", None] == pytest.approx(table["pcr_loss", "2"], rel=1e-5)
    assert table["plateau_loss", "2"] == pytest.approx(plateau_losses(SEPARATE)[2].item())


def test_eigen_overlap_of_hand_set_heads():
    model = pcr_model(SEPARATE, 3)
    _, u = spectrum(SEPARATE)
    with torch.no_grad():
        model.W_K[2, 0, :4] = (u[:, 0] + u[:, 2]) / 2 ** 0.5
    found = {(r["metric"], r["head"], r.get("component")): r["value"] for r in head_rows(model)}
    assert found["key_overlap", 1, "2"] == pytest.approx(1.0) and found["query_overlap", 1, "2"] == pytest.approx(1.0)
    assert found["kq_overlap", 1, "2"] == pytest.approx(1.0) and found["kq_overlap", 1, "1"] == pytest.approx(0.0)
    assert [found["key_overlap", 2, str(d)] for d in range(1, 5)] == pytest.approx([0.5, 0.0, 0.5, 0.0], abs=1e-12)
    assert found["value_weight", 0, None] == 1.0

    merged = LinearAttention(dataclasses.replace(SEPARATE, attention="merged", rank=None, heads=1)).double()
    with torch.no_grad():
        merged.W_KQ[0, :4, :4] = torch.outer(u[:, 0], u[:, 0]) - torch.outer(u[:, 3], u[:, 3])
    found = {(r["metric"], r.get("component")): r["value"] for r in head_rows(merged)}
    assert [found["kq_overlap", str(d)] for d in range(1, 5)] == pytest.approx([0.5, 0.0, 0.0, 0.5], abs=1e-12)
    assert ("key_overlap", "1") not in found


def test_tiny_preset_trains_resumes_analyzes_and_plots(tmp_path):
    config = ci.preset("linreg-tiny")
    run = ci.train(config, tmp_path / "run", progress=False, device="cpu")
    short = config.replace(train={"steps": 25})
    ci.train(short, tmp_path / "split", progress=False, device="cpu")
    resumed = ci.train(config, tmp_path / "split", progress=False, device="cpu")
    last = run.steps[-1]
    for name, w in run.model(last).weights().items():
        assert torch.equal(w, resumed.model(last).weights()[name]), name
    losses = run.metrics[run.metrics.evaluator == "linreg_train"].sort_values("step").value
    assert losses.iloc[-1] < 0.8 * losses.iloc[0]
    table = ci.analyze(run, ["linreg"], n=64, progress=False)
    assert set(table.step) == set(run.steps)
    assert set(table.metric) >= {"loss", "plateau_loss", "pcr_distance", "kq_overlap", "key_overlap"}
    figs, _ = plots.figures(table, run.metrics)
    assert {"linreg_loss", "linreg_eigen_overlap", "linreg_pcr_distance"} <= set(figs)
    lines = sorted(shape.y0 for shape in figs["linreg_loss"].layout.shapes)
    assert lines == pytest.approx(sorted(plateau_losses(config.task).tolist()))  # one dashed line per L(m)
    assert torch.equal(run.model(last).outputs(run.batches(None, 5, 0))[:, 0],
                       run.model(last)(run.batches(None, 5, 0)["linreg"].seqs))


def test_online_training_draws_fresh_sequences_and_resumes_exactly(tmp_path):
    config = ci.preset("linreg-tiny").replace(task={"online": True})
    run = ci.train(config, tmp_path / "run", progress=False, device="cpu")
    ci.train(config.replace(train={"steps": 25}), tmp_path / "split", progress=False, device="cpu")
    resumed = ci.train(config, tmp_path / "split", progress=False, device="cpu")
    fixed = ci.train(ci.preset("linreg-tiny"), tmp_path / "fixed", progress=False, device="cpu")
    last = run.steps[-1]
    assert torch.equal(run.model(last).W_K, resumed.model(last).W_K)
    assert not torch.equal(run.model(last).W_K, fixed.model(last).W_K)
    assert set(run.metrics.evaluator) == {"linreg"}  # no fixed training set to log


@pytest.mark.parametrize("change, message", [
    ({"task": {"attention": "merged"}}, "rank applies to attention 'separate' only"),
    ({"task": {"rank": 1, "heads": 1}}, "rank \\* heads must be >= dim"),
    ({"task": {"attention": "softmax"}}, "attention must be one of"),
])
def test_bad_linreg_configs_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ci.preset("linreg-tiny").replace(**change)


def test_the_shared_model_section_and_other_sources_are_refused(tmp_path):
    config = ci.preset("linreg-tiny")
    with pytest.raises(ConfigError, match="leave the `model` section at its defaults"):
        ci.train(config.replace(model={"n_heads": 4, "d_head": 16}), tmp_path / "r", progress=False, device="cpu")
    with pytest.raises(ConfigError, match="reads only its own sequences"):
        ci.analyze(ci.train(config, tmp_path / "ok", progress=False, device="cpu"), ["linreg"], source="repeated",
                   progress=False)
