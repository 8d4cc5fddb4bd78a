import os
import shutil
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from werkzeug.serving import make_server

import coopinterp as ci
from coopinterp.analysis.ablation import ablate, ablated_token_loss
from coopinterp.app import Explorer, curves_figure, make_app, position_labels, render, render_attention
from coopinterp.app.kinds import TokenScorer
from coopinterp.app.page import cell_id
from coopinterp.cli import app as cli
from coopinterp.config import ModelConfig
from coopinterp.errors import CheckpointError, ConfigError
from coopinterp.runs import open_run
from coopinterp.task import accuracy, loss

CHROMEDRIVER = "/usr/bin/chromedriver"
NEOX = Path(__file__).parent.parent / "checkpoints" / "induction_neox"


def ablate_cli(run, heads: str, step: int, mode: str, n: int, seed: int = 0, *options) -> dict[str, list[str]]:
    """What `coopinterp ablate` prints: batch -> its row's cells."""
    result = CliRunner().invoke(cli, ["ablate", str(run), "--heads", heads, "--step", str(step), "--mode", mode,
                                      "--n", str(n), "--seed", str(seed), *options], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if "│" in line]
    return {row[0]: row[1:] for row in rows}


@pytest.fixture(scope="module")
def explorer(tiny_run):
    return Explorer(tiny_run, n=128)


@pytest.fixture(scope="module")
def markov_run(tmp_path_factory):
    config = ci.preset("markov-tiny")
    config = replace(config, train=replace(config.train, steps=20, n_checkpoints=2))
    return ci.train(config, tmp_path_factory.mktemp("runs") / "markov", progress=False, device="cpu")


@pytest.fixture(scope="module")
def neox():
    return Explorer(open_run(NEOX), n=16)


def test_results_match_ablate_and_the_clean_model(explorer, tiny_run):
    step = tiny_run.steps[-1]
    heads = ((0, 1), (1, 2))
    clean, ablated = explorer.update(step, heads, "mean")
    model = tiny_run.model(step)
    for ev, batch in explorer.batches.items():
        with torch.no_grad():
            logits = model(batch)
        assert clean[ev]["acc"] == pytest.approx(accuracy(logits, batch).item())
        assert clean[ev]["loss"] == pytest.approx(loss(logits, batch).item(), rel=1e-4)
        (expected,) = ablate(model, batch, [list(heads)], "mean")
        assert ablated[ev]["acc"] == pytest.approx(accuracy(expected, batch).item())
        assert ablated[ev]["loss"] == pytest.approx(loss(expected, batch).item(), rel=1e-4)


def test_patterns_under_ablation(explorer, tiny_run):
    step = tiny_run.steps[-1]
    clean = torch.stack([explorer.attention(step, (), "mean", "icl", 3, (1, h))[0] for h in range(4)])
    assert explorer.attention(step, (), "mean", "icl", 3, (0, 0))[1] == position_labels(2) == ["x0", "l0", "x1",
                                                                                                "l1", "xq"]
    assert torch.allclose(clean.sum(-1), torch.ones(4, 5), atol=1e-5) and clean.triu(1).abs().max() == 0
    with torch.no_grad():
        _, cache = tiny_run.model(step).run_with_cache(explorer.batches["icl"])
    assert torch.allclose(clean, cache["blocks.1.attn.hook_pattern"][3], atol=1e-6)  # sequence 3, not another
    layer0 = ((0, 0), (0, 1), (0, 2), (0, 3))
    ablated = explorer.attention(step, layer0, "mean", "icl", 3, (1, 0))[0]
    assert not torch.allclose(ablated, clean[0], atol=1e-3)  # layer 1 reads what layer 0 wrote
    assert torch.equal(explorer.attention(step, layer0, "mean", "icl", 3, (0, 2))[0],
                       explorer.attention(step, (), "mean", "icl", 3, (0, 2))[0])  # a head's own pattern is upstream
    assert torch.equal(explorer.attention(step, ((1, 0),), "mean", "icl", 3, (1, 0))[0], clean[0])


def test_render_and_errors(explorer, tiny_run):
    step = tiny_run.steps[-1]
    table, curves = render(explorer, step, ((1, 3),), "zero")
    body = table[1].children
    assert [row.children[0].children for row in body] == ["train", "icl", "ciwl", "flip", "iwl"]
    assert body[0].children[2].id == "ablated-acc-train"
    assert curves.to_plotly_json()["operations"]  # a Patch, not a whole figure
    assert explorer.heads(["1.3", "0.2", "1.3"]) == ((0, 2), (1, 3))
    with pytest.raises(ConfigError, match="no head 2.0"):
        explorer.heads(["2.0"])
    with pytest.raises(ConfigError, match="unknown ablation mode"):
        explorer.update(step, ((0, 0),), "bogus")
    with pytest.raises(ConfigError, match="sequence 128 is not in icl"):
        explorer.attention(step, (), "mean", "icl", 128, (0, 0))
    with pytest.raises(ConfigError, match="n must be"):
        Explorer(tiny_run, n=1)
    with pytest.raises(ConfigError, match="applies to token models"):
        Explorer(tiny_run, n=8, source="repeated")


def test_app_opens_at_a_chosen_step_with_heads_ticked(explorer, tiny_run):
    app = make_app(explorer, step=tiny_run.steps[1], heads=[(0, 1), (1, 2)])
    found = {c.id: c.value for c in app.layout._traverse() if getattr(c, "id", None) in ("step", "heads-0", "heads-1")}
    assert found == {"step": 1, "heads-0": ["0.1"], "heads-1": ["1.2"]}
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        make_app(explorer, step=7)


def test_the_head_grid_follows_the_model(tiny_config, tmp_path):
    """A model of 3 layers x 12 heads gets a 3 x 12 grid of ablation boxes and 36 heads to show the pattern of."""
    model = ModelConfig(n_layers=3, n_heads=12, d_model=96, d_head=8)
    config = replace(tiny_config, model=model, train=replace(tiny_config.train, steps=2, n_checkpoints=2))
    explorer = Explorer(ci.train(config, tmp_path / "wide", progress=False, device="cpu"), n=8)
    found = {c.id: c.options for c in make_app(explorer).layout._traverse()
             if str(getattr(c, "id", "")).startswith(("heads-", "pattern-head"))}
    assert sorted(found) == ["heads-0", "heads-1", "heads-2", "pattern-head"]
    assert all(len(found[f"heads-{layer}"]) == 12 for layer in range(3)) and len(found["pattern-head"]) == 36
    assert found["pattern-head"][-1] == {"label": "L2H11", "value": "2.11"}


def test_a_markov_run_shows_what_ablate_prints(markov_run):
    """Each mode's numbers, on the run's own evaluators, are the strings `coopinterp ablate` prints."""
    explorer = Explorer(markov_run, n=16, seed=3)
    assert isinstance(explorer.scorer, TokenScorer) and (explorer.cfg.n_layers, explorer.cfg.n_heads) == (2, 2)
    step = markov_run.steps[-1]
    losses = {}
    for mode in ("zero", "mean", "resample"):
        clean, ablated = explorer.update(step, ((0, 1), (1, 0)), mode)
        printed = ablate_cli(markov_run.path, "0.1,1.0", step, mode, 16, 3)
        assert sorted(printed) == sorted(ablated) == ["markov_id", "markov_ood"]
        for ev, (c, a, change) in printed.items():
            assert (f"{clean[ev]['loss']:.4f}", f"{ablated[ev]['loss']:.4f}") == (c, a)
            assert f"{ablated[ev]['loss'] - clean[ev]['loss']:+.4f}" == change
        losses[mode] = ablated["markov_id"]["loss"]
    assert len(set(losses.values())) == 3  # the modes differ
    table, curves = render(explorer, step, ((1, 0),), "zero")
    assert table[1].children[1].children[2].id == cell_id("ablated", "loss", "markov_ood")
    assert [t.name for t in curves_figure(explorer).data] == ["markov_id", "markov_ood", "ablated, chosen step"]
    marks = [op for op in curves.to_plotly_json()["operations"] if op["location"] == ["data", -1, "y"]]
    assert marks[0]["params"]["value"] == [explorer.update(step, ((1, 0),), "zero")[1][ev]["loss"]
                                           for ev in ("markov_id", "markov_ood")]  # the logged curves are losses


def test_a_markov_pattern_and_repeated_tokens(markov_run):
    """A pattern is the model's own (rows sum to 1, causal); on repeated tokens the loss splits into the first copy
    and the repeat, each the loss over its own tokens."""
    explorer = Explorer(markov_run, n=8, source="repeated:5")
    step = markov_run.steps[-1]
    model, batch = markov_run.model(step), explorer.batches["repeated:5"]
    pattern, labels = explorer.attention(step, (), "mean", "repeated:5", 2, (1, 1))
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
    assert pattern.shape == (10, 10) and torch.allclose(pattern, cache["blocks.1.attn.hook_pattern"][2, 1])
    assert torch.allclose(pattern.sum(-1), torch.ones(10)) and pattern.triu(1).abs().max() == 0
    assert labels[:2] == [f"0:{batch.tokens[2, 0]}", f"1:{batch.tokens[2, 1]}"] and len(labels) == 10
    clean, ablated = explorer.update(step, ((0, 0),), "zero")
    values = [torch.zeros_like(v) for v in explorer.values(step, "repeated:5", "zero")]
    repeat = ablated_token_loss(model, replace(batch, first=4), [[], [(0, 0)]], values)  # predicting tokens 5-9
    first = ablated_token_loss(model, replace(batch, tokens=batch.tokens[:, :5]), [[], [(0, 0)]],
                               [v[:, :5] for v in values])  # predicting tokens 1-4
    for i, scores in enumerate((clean["repeated:5"], ablated["repeated:5"])):
        assert scores["loss_repeat"] == pytest.approx(repeat[i].item(), rel=1e-5)
        assert scores["loss_first"] == pytest.approx(first[i].item(), rel=1e-5)
        assert scores["loss"] == pytest.approx((4 * first[i].item() + 5 * repeat[i].item()) / 9, rel=1e-5)


def test_a_hugging_face_run(neox):
    """The shipped NeoX: a 2 x 4 grid; at its last step the induction circuit makes the repeat far easier than the
    first copy (random tokens: about log 127 nats), and a pattern row sums to 1."""
    assert (neox.cfg.n_layers, neox.cfg.n_heads) == (2, 4) and list(neox.batches) == ["repeated_tokens"]
    clean, _ = neox.update(1500, (), "mean")
    scores = clean["repeated_tokens"]
    assert scores["loss_first"] > 4 and scores["loss_repeat"] < 1.5
    pattern, labels = neox.attention(1500, ((0, 1),), "mean", "repeated_tokens", 0, (1, 2))
    assert pattern.shape == (63, 63) and torch.allclose(pattern.sum(-1), torch.ones(63))
    assert labels[0] == "0:0" and len(labels) == 63  # BOS (id 0), then the token ids: no tokenizer
    figure = render_attention(neox, 1500, ((0, 1),), "mean", "repeated_tokens", 0, (1, 2)).to_plotly_json()
    assert any("L0H1 mean-ablated upstream" in str(op) for op in figure["operations"])


def test_what_the_app_cannot_serve_is_one_line(tmp_path):
    app = lambda *args: CliRunner().invoke(cli, ["app", *map(str, args), "--port", str(free_port())])  # noqa: E731
    missing = app(NEOX, "--source", f"tokens:{tmp_path / 'none.npy'}")
    empty = app(tmp_path)
    for result, message in ((missing, f"data source file not found: {tmp_path / 'none.npy'}"),
                            (empty, f"{tmp_path} holds no checkpoint folders")):
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert message in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    """Headless Chromium. Without it the browser test skips with the reason, except where COOPINTERP_REQUIRE_BROWSER
    is set (.ci/run sets it after installing Chromium, so CI cannot skip the test)."""
    if shutil.which("chromium") is None or not Path(CHROMEDRIVER).is_file():
        message = "the app's browser test needs Chromium and its driver: apt-get install chromium chromium-driver"
        if os.environ.get("COOPINTERP_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1250,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_toggling_a_head_shows_what_ablate_prints(neox, browser, tmp_path):
    """On the NeoX run, ticking the head whose ablation matters most changes the shown loss to the loss `coopinterp
    ablate` prints for it (same step, mode, n and seed), and the change to its change."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    step, mode = 1000, "resample"
    heads = [(1, h) for h in range(4)]
    layer, head = max(heads, key=lambda h: neox.update(step, (h,), mode)[1]["repeated_tokens"]["loss"])
    (clean, ablated, change), = ablate_cli(NEOX, f"{layer}.{head}", step, mode, 16).values()
    assert abs(float(change)) > 0.1, "no head of the NeoX run matters"

    server = make_server("127.0.0.1", free_port(), make_app(neox, step=step).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        # Dash re-renders the table on every update: an element read mid-render is stale, so retry those reads.
        wait = WebDriverWait(browser, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        cell = lambda kind: browser.find_element(By.ID, cell_id(kind, "loss", "repeated_tokens")).text  # noqa: E731
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[value="resample"]').click() or True)
        wait.until(lambda d: cell("clean") == cell("ablated") == clean)
        box = f'#heads-{layer} input[value="{layer}.{head}"]'
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, box).click() or True)
        wait.until(lambda d: (cell("clean"), cell("ablated"), cell("delta")) == (clean, ablated, change))
        assert "no head upstream ablated" in browser.find_element(By.ID, "attention").text
        browser.save_screenshot(str(tmp_path / "app.png"))
        assert (tmp_path / "app.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        server.shutdown()
        thread.join(5)
