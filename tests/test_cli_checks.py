"""The CLI on first contact: literal extras in help and errors, --out and --port checked before any work, train
without a preset, runs with one damaged checkpoint, and the app evaluating what the CLI evaluates."""
import inspect
import os
import shutil
import socket

import pytest
import typer.main
from rich.text import Text
from typer.testing import CliRunner

import coopinterp as ci
from coopinterp.app import Explorer, make_app, serve
from coopinterp.cli import app
from coopinterp.cli.common import check_out
from coopinterp.cli.plots import analyze_run
from coopinterp.errors import CoopError


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_help_shows_extras_literally():
    for command, extra in (("analyze", "coopinterp[devinterp]"), ("sweep", "coopinterp[ray]")):
        result = invoke(command, "--help", env={"COLUMNS": "300"})
        assert result.exit_code == 0 and extra in result.output, result.output


def test_help_texts_are_not_markup():
    """rich renders help as markup, so a `[word]` in a help text vanishes unless escaped as `\\[word]`."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for text in [command.help] + [p.help for p in command.params]:
            if text:
                assert Text.from_markup(text).plain == text.replace("\\[", "["), (name, text)


def test_errors_print_brackets_literally(tmp_path):
    one_line_error(invoke("info", tmp_path / "[run]"), f"run directory not found: {tmp_path / '[run]'}")


def test_app_on_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("app", "checkpoints/demo", "--port", port)
    one_line_error(result, f"port {port} on 127.0.0.1 is in use: pass --port")
    assert result.stdout == ""  # nothing said about serving


@pytest.fixture
def files(tmp_path):
    """A folder holding a file, a folder named like a table, and a grid; the tests run in it."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "folder.html").mkdir()
    (tmp_path / "grid.json").write_text('{"base": "tiny", "grid": {"train.seed": [0]}}')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


@pytest.mark.parametrize("args, message", [
    (("analyze", "RUN", "--out", "t.xlsx"), "--out t.xlsx must end in .parquet or .csv"),
    (("analyze", "RUN", "--out", "folder.csv"), "--out folder.csv is a directory; give a file path"),
    (("analyze", "RUN", "--out", "afile/t.csv"), "afile is a file, not a directory"),
    (("analyze", "RUN", "--out", "afile/deeper/t.csv"), "afile is a file, not a directory"),
    (("plot", "RUN", "--out", "afile"), "--out afile is a file; give a folder"),
    (("report", "RUN", "--out", "report.pdf"), "--out report.pdf must end in .html"),
    (("report", "RUN", "--out", "folder.html"), "--out folder.html is a directory"),
    (("config", "--out", "run.yaml"), "--out run.yaml must end in .json"),
    (("config", "--out", "afile/run.json"), "afile is a file, not a directory"),
    (("minimal", "--out", "afile"), "--out afile is a file; give a folder"),
    (("sweep", "grid.json", "--out", "afile"), "--out afile is a file; give a folder"),
    (("train", "--preset", "tiny", "--out", "afile"), "--out afile is a file; give a folder"),
    (("import-tl", "afile", "--out", "afile/run", "--config", "x.json"), "afile is a file, not a directory"),
])
def test_out_is_checked_before_any_work(args, message, files, tiny_run):
    before, run_before = listing(files), listing(tiny_run.path)
    one_line_error(invoke(*(tiny_run.path if a == "RUN" else a for a in args)), message)
    assert listing(files) == before and listing(tiny_run.path) == run_before  # nothing written


def test_out_in_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the tests run as root, who may write anywhere
    with pytest.raises(CoopError, match=f"--out {tmp_path / 'new' / 't.csv'}: {tmp_path} is not writable"):
        check_out(tmp_path / "new" / "t.csv", (".csv",))


def test_train_needs_a_preset_or_a_config(tmp_path):
    result = invoke("train", "--out", tmp_path / "run")
    one_line_error(result, "train needs --preset (")
    assert all(name in result.stderr for name in ci.PRESETS) and "or --config FILE" in result.stderr
    one_line_error(invoke("train", "--out", tmp_path / "run", "--preset", "tiny", "--config", "x.json"),
                   "give --preset or --config, not both")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, tiny_run):
    """A copy of the tiny run, every table cached, then one checkpoint (not the last) truncated."""
    run = ci.load_run(shutil.copytree(tiny_run.path, tmp_path_factory.mktemp("damaged") / "tiny"))
    ci.analyze(run, progress=False)
    bad = ci.checkpoints.checkpoint_path(run.path, run.steps[2])
    bad.write_bytes(bad.read_bytes()[:200])
    return run, bad


def test_info_goes_on_past_a_damaged_checkpoint(damaged):
    run, bad = damaged
    result = invoke("info", run.path)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"warning: checkpoint {bad} is corrupt or truncated (" + \
        result.stderr.strip().split(" (", 1)[1]
    assert f"{run.steps[2]} (damaged)" in result.stdout and "task" in result.stdout
    assert f"evaluators at step {run.steps[-1]}" in result.stdout
    one_line_error(invoke("info", run.path, "--check"), f"checkpoint {bad} is corrupt or truncated")


def test_plot_uses_the_cached_tables_of_a_damaged_checkpoint(damaged, tmp_path, capsys):
    run, bad = damaged
    result = invoke("plot", run.path, "--out", tmp_path / "figs", "--format", "html", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"warning: checkpoint {bad} is corrupt or truncated" in result.stderr
    assert "its cached tables are used" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "figs" / "circuit_evolution.html").is_file()
    table = analyze_run(run, None, 512, 0, progress=False)
    assert sorted(table.step.unique()) == run.steps and table.step.is_monotonic_increasing


def test_plot_leaves_out_a_damaged_checkpoint_without_cached_tables(damaged, tmp_path, capsys):
    run, bad = damaged
    copy = ci.load_run(shutil.copytree(run.path, tmp_path / "tiny"))
    for cached in (copy.path / "analysis").rglob(f"step_{copy.steps[2]:09d}*"):
        cached.unlink()
    table = analyze_run(copy, ["behavior"], 512, 0, progress=False)
    assert sorted(table.step.unique()) == [s for s in copy.steps if s != copy.steps[2]]
    assert f"step {copy.steps[2]} is left out (no cached tables)" in capsys.readouterr().err


def test_the_app_evaluates_what_the_cli_evaluates(tiny_run):
    group = typer.main.get_command(app)
    defaults = lambda command: {p.name: p.default for p in group.commands[command].params}  # noqa: E731
    for option in ("n", "seed"):
        expected = inspect.signature(ci.analyze).parameters[option].default
        assert defaults("app")[option] == defaults("ablate")[option] == defaults("analyze")[option] == expected
        assert inspect.signature(Explorer).parameters[option].default == expected
        assert inspect.signature(serve).parameters[option].default == expected
    page = str(make_app(Explorer(tiny_run)).layout)
    assert "evaluator batches of n=512 sequences drawn with seed 0" in page
