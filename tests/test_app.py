import os
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from werkzeug.serving import make_server

import coopinterp as ci
from coopinterp.analysis.ablation import ablate, all_heads
from coopinterp.app import Explorer, attention_figure, make_app, position_labels, render
from coopinterp.config import ModelConfig
from coopinterp.errors import CheckpointError
from coopinterp.errors import ConfigError
from coopinterp.task import accuracy, loss

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def explorer(tiny_run):
    return Explorer(tiny_run, n=128)


def test_results_match_ablate_and_the_clean_model(explorer, tiny_run):
    step = tiny_run.steps[-1]
    heads = ((0, 1), (1, 2))
    clean, ablated, _ = explorer.update(step, heads, "mean")
    model = tiny_run.model(step)
    for ev, batch in explorer.batches.items():
        with torch.no_grad():
            logits = model(batch)
        assert clean[ev]["acc"] == pytest.approx(accuracy(logits, batch).item())
        assert clean[ev]["loss"] == pytest.approx(loss(logits, batch).item(), rel=1e-4)
        (expected,) = ablate(model, batch, [list(heads)], "mean")
        assert ablated[ev]["acc"] == pytest.approx(accuracy(expected, batch).item())
        assert ablated[ev]["loss"] == pytest.approx(loss(expected, batch).item(), rel=1e-4)


def test_patterns_of_the_example_under_ablation(explorer, tiny_run):
    step = tiny_run.steps[-1]
    clean = explorer.patterns(step, (), "mean")
    n_layers, n_heads, T = clean.shape[0], clean.shape[1], clean.shape[-1]
    assert (n_layers, n_heads, T) == (2, 4, 5) and position_labels(2) == ["x0", "l0", "x1", "l1", "xq"]
    assert torch.allclose(clean.sum(-1), torch.ones(n_layers, n_heads, T), atol=1e-5)
    assert clean.triu(1).abs().max() == 0  # causal
    with torch.no_grad():
        _, cache = tiny_run.model(step).run_with_cache(explorer.batches["train"])
    assert torch.allclose(clean[1], cache["blocks.1.attn.hook_pattern"][0], atol=1e-6)
    ablated = explorer.patterns(step, ((0, 0), (0, 1), (0, 2), (0, 3)), "mean")
    assert torch.equal(ablated[0], clean[0])  # a head's own pattern is upstream of its ablation
    assert not torch.allclose(ablated[1], clean[1], atol=1e-3)  # layer 1 reads what layer 0 wrote
    assert torch.equal(explorer.patterns(step, ((1, 0),), "mean"), clean)  # nothing reads the last layer


def test_render_patches_and_errors(explorer, tiny_run):
    step = tiny_run.steps[-1]
    table, curves, attention = render(explorer, step, ((1, 3),), "zero")
    body = table[1].children
    assert [row.children[0].children for row in body] == ["train", "icl", "ciwl", "flip", "iwl"]
    assert body[0].children[2].id == "acc-train"
    assert curves.to_plotly_json()["operations"]  # a Patch, not a whole figure
    assert explorer.heads(["1.3", "0.2", "1.3"]) == ((0, 2), (1, 3))
    with pytest.raises(ConfigError, match="no head 2.0"):
        explorer.heads(["2.0"])
    with pytest.raises(ConfigError, match="unknown ablation mode"):
        explorer.update(step, ((0, 0),), "bogus")
    with pytest.raises(ConfigError, match="n must be"):
        Explorer(tiny_run, n=1)


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


def test_toggling_a_head_changes_the_shown_accuracy(explorer, tiny_run, browser, tmp_path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = tiny_run.model(tiny_run.steps[-1])
    heads = all_heads(model.cfg)
    batch = explorer.batches["train"]
    acc = accuracy(ablate(model, batch, [[]] + [[h] for h in heads], "mean"), batch)
    layer, head = heads[int((acc[1:] - acc[0]).abs().argmax())]  # the head whose ablation matters most
    assert abs(acc[1 + heads.index((layer, head))] - acc[0]) > 0.01, "no head of the tiny run matters"

    server = make_server("127.0.0.1", free_port(), make_app(explorer).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        # Dash re-renders the table on every update: an element read mid-render is stale, so retry those reads.
        wait = WebDriverWait(browser, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        cell = lambda: browser.find_element(By.ID, "acc-train").text  # noqa: E731
        wait.until(lambda d: cell() == f"{acc[0]:.3f}")
        t0 = time.perf_counter()
        box = f'#heads-{layer} input[value="{layer}.{head}"]'
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, box).click() or True)
        expected = f"{acc[1 + heads.index((layer, head))]:.3f}"
        wait.until(lambda d: cell() == expected)
        assert time.perf_counter() - t0 < 10
        wait.until(lambda d: f"L{layer}H{head} ✕" in d.find_element(By.ID, "attention").text)
        browser.save_screenshot(str(tmp_path / "app.png"))
        assert (tmp_path / "app.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        server.shutdown()
        thread.join(5)


def test_app_opens_at_a_chosen_step_with_heads_ticked(explorer, tiny_run):
    app = make_app(explorer, step=tiny_run.steps[1], heads=[(0, 1), (1, 2)])
    found = {c.id: c.value for c in app.layout._traverse() if getattr(c, "id", None) in ("step", "heads-0", "heads-1")}
    assert found == {"step": 1, "heads-0": ["0.1"], "heads-1": ["1.2"]}
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        make_app(explorer, step=7)



def test_the_head_grid_follows_the_model(tiny_config, tmp_path):
    """A model of 3 layers x 12 heads gets a 3 x 12 grid of ablation boxes and of pattern heatmaps."""
    model = ModelConfig(n_layers=3, n_heads=12, d_model=96, d_head=8)
    config = replace(tiny_config, model=model, train=replace(tiny_config.train, steps=2, n_checkpoints=2))
    explorer = Explorer(ci.train(config, tmp_path / "wide", progress=False, device="cpu"), n=8)
    fig = attention_figure(explorer)
    assert len(fig.data) == 3 * 12 and fig.layout.annotations[-1].text == "L2H11"
    boxes = {c.id: c.options for c in make_app(explorer).layout._traverse()
             if str(getattr(c, "id", "")).startswith("heads-")}
    assert sorted(boxes) == ["heads-0", "heads-1", "heads-2"] and all(len(o) == 12 for o in boxes.values())
