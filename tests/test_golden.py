"""Golden values: every analysis's rows on a fixed tiny checkpoint (the `tiny` preset's last step), on the
planted GPT-2 of test_outside.py and on the `markov-tiny` preset's last step, against tests/golden.json.

The analysis cache trusts an analysis's declared version: a change to its rows under the same version would serve
stale tables. This test fails then, naming the analysis to bump; an analysis, metric or row that vanished from the
output (or appeared in it) is named too. After a deliberate change (version bumped), write
the new values with `python tests/test_golden.py` and commit golden.json.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import coopinterp as ci
import coopinterp.analysis as an
from coopinterp.errors import ConfigError
from coopinterp.runs import open_run

GOLDEN = Path(__file__).with_name("golden.json")
N, SEED = 32, 0
OPTIONS = {"llc": {"chains": 2, "draws": 4, "burnin": 2, "batch_size": 16}}
SOURCES = {"edges": "induction", "circuit": "induction"}  # the analyses that read contrastive pairs
NATIVE_REFUSED = ("edges", "circuit")  # per-head hooks the Markov model's native bridge lacks (test below)
KEYS = ["metric", "evaluator", "layer", "head", "src_layer", "src_head", "component"]


def rows_of(run, step: int, cache_dir: Path, refused: tuple[str, ...] = ()) -> dict[str, dict]:
    out = {}
    for name, record in an.registry().items():
        if not record.applies(run.model_kinds) or name in refused:
            continue
        df = an.analyze(run, [name], steps=[step], n=N, seed=SEED, progress=False, cache_dir=cache_dir,
                        options={name: OPTIONS[name]} if name in OPTIONS else None, recompute=True,
                        source=SOURCES.get(name))
        df = df[KEYS + ["value"]].astype(object).where(df[KEYS + ["value"]].notna(), None)
        records = sorted(df.values.tolist(), key=lambda r: json.dumps(r[:-1], default=str))
        out[name] = {"version": record.version, "rows": records}
    return out


def current(tiny_run_path: Path, planted_path: Path, markov_path: Path, cache_dir: Path) -> dict:
    tiny, markov = ci.load_run(tiny_run_path), ci.load_run(markov_path)
    planted = open_run(planted_path)
    return {"tiny": rows_of(tiny, tiny.steps[-1], cache_dir / "tiny"),
            "planted_gpt2": rows_of(planted, planted.steps[-1], cache_dir / "planted"),
            "markov_tiny": rows_of(markov, markov.steps[-1], cache_dir / "markov", NATIVE_REFUSED)}


def describe(key: list) -> str:
    """A row's key (KEYS, without the value) as `metric evaluator=... layer=...`."""
    return " ".join([str(key[0])] + [f"{k}={v}" for k, v in zip(KEYS[1:], key[1:]) if v is not None])


def row_differences(model_name: str, old: list[list], new: list[list]) -> tuple[list[str], bool]:
    """What vanished from (or appeared in) an analysis's rows, by metric and then by row, and whether any row
    differs at all (a vanished or new row, or a value beyond tolerance)."""
    old_by_key = {json.dumps(r[:-1], default=str): r for r in old}
    new_by_key = {json.dumps(r[:-1], default=str): r for r in new}
    old_metrics, new_metrics = {r[0] for r in old}, {r[0] for r in new}
    problems = []
    for metric in sorted(old_metrics - new_metrics, key=str):
        n = sum(r[0] == metric for r in old)
        problems.append(f"{model_name}: metric {metric} vanished from the output ({n} golden rows)")
    for metric in sorted(new_metrics - old_metrics, key=str):
        problems.append(f"{model_name}: metric {metric} is new (no golden rows)")
    lost = [old_by_key[k] for k in old_by_key if k not in new_by_key and old_by_key[k][0] in new_metrics]
    extra = [new_by_key[k] for k in new_by_key if k not in old_by_key and new_by_key[k][0] in old_metrics]
    for what, rows in (("vanished from the output", lost), ("is new", extra)):
        if rows:
            shown = "; ".join(describe(r[:-1]) for r in rows[:3]) + (f" (and {len(rows) - 3} more)" if len(rows) > 3
                                                                     else "")
            problems.append(f"{model_name}: {len(rows)} row(s) {what}: {shown}")
    duplicated = len(old_by_key) != len(old) or len(new_by_key) != len(new)
    changed = any(not ((a[-1] is None) == (b[-1] is None)
                       and (a[-1] is None or np.isclose(a[-1], b[-1], atol=1e-4, rtol=1e-4)))
                  for k, a in old_by_key.items() if (b := new_by_key.get(k)) is not None)
    return problems, bool(problems) or duplicated or changed or len(old) != len(new)


def check(got: dict, want: dict) -> list[str]:
    """Every difference between the current rows and the golden ones, naming what it is about: an analysis or a
    metric (or single rows) that vanished from the output or appeared in it, then values that changed; a change
    under an unchanged version says to bump it."""
    problems = []
    for model in want:
        if model not in got:
            problems.append(f"{model}: the model's rows vanished from the output (golden analyses: "
                            f"{', '.join(want[model])})")
            continue
        for name, old in want[model].items():
            if name not in got[model]:
                metrics = ", ".join(sorted({str(r[0]) for r in old["rows"]}))
                problems.append(f"{model}/{name}: the analysis vanished from the output (golden: "
                                f"{len(old['rows'])} rows of {metrics})")
        for name, entry in got[model].items():
            old = want[model].get(name)
            if old is None:
                problems.append(f"{model}/{name}: no golden values yet (write them: python tests/test_golden.py)")
                continue
            named, differs = row_differences(f"{model}/{name}", old["rows"], entry["rows"])
            if entry["version"] != old["version"]:
                problems.append(f"{model}/{name}: version {old['version']} -> {entry['version']}: write the new "
                                "golden values with python tests/test_golden.py")
                problems += named
            elif differs:
                problems += named
                problems.append(f"{model}/{name}: its rows changed but its version is still {entry['version']}: "
                                f"bump ANALYSIS.version in its module, then python tests/test_golden.py")
    return problems


@pytest.fixture(scope="module")
def planted_path(tmp_path_factory):
    from test_outside import planted_gpt2, _save

    root = tmp_path_factory.mktemp("golden_planted")
    _save(planted_gpt2(), root / "step100")
    return root


@pytest.fixture(scope="module")
def markov_path(tmp_path_factory):
    return ci.train(ci.preset("markov-tiny"), tmp_path_factory.mktemp("golden_markov") / "run", progress=False,
                    device="cpu").path


def test_every_analysis_matches_its_golden_values(tiny_run, planted_path, markov_path, tmp_path):
    want = json.loads(GOLDEN.read_text())
    problems = check(current(tiny_run.path, planted_path, markov_path, tmp_path), want)
    assert not problems, "\n".join(problems)


def test_edges_refuse_the_native_bridge_in_one_line(markov_path, tmp_path):
    run = ci.load_run(markov_path)
    for name in NATIVE_REFUSED:
        with pytest.raises(ConfigError, match="need per-head results and q/k/v inputs"):
            an.analyze(run, [name], steps=[run.steps[-1]], n=4, progress=False, cache_dir=tmp_path, source="induction")


def test_a_changed_row_under_the_same_version_is_caught():
    want = json.loads(GOLDEN.read_text())
    edited = json.loads(json.dumps(want))
    edited["tiny"]["behavior"]["rows"][0][-1] += 0.01
    assert check(edited, want) == ["tiny/behavior: its rows changed but its version is still "
                                   f"{want['tiny']['behavior']['version']}: bump ANALYSIS.version in its module, "
                                   "then python tests/test_golden.py"]
    edited["tiny"]["behavior"]["version"] += 1
    assert "write the new golden values" in check(edited, want)[0]


def test_a_vanished_analysis_metric_or_row_is_named():
    """What vanished from the output is reported by name: a whole analysis of one model (even one whose rows all
    matched before), a metric of an analysis, single rows of a metric; and what appeared."""
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(want))
    assert check(got, want) == []
    del got["markov_tiny"]["strategy"]
    strategy = want["markov_tiny"]["strategy"]
    assert check(got, want) == [f"markov_tiny/strategy: the analysis vanished from the output (golden: "
                                f"{len(strategy['rows'])} rows of kl, mix_residual_kl, mix_weight, rel_distance)"]
    got = json.loads(json.dumps(want))
    rows = got["markov_tiny"]["strategy"]["rows"]
    got["markov_tiny"]["strategy"]["rows"] = [r for r in rows if r[0] != "mix_residual_kl"]
    assert check(got, want) == ["markov_tiny/strategy: metric mix_residual_kl vanished from the output (2 golden rows)",
                                "markov_tiny/strategy: its rows changed but its version is still "
                                f"{strategy['version']}: bump ANALYSIS.version in its module, then "
                                "python tests/test_golden.py"]
    got = json.loads(json.dumps(want))
    attention = got["planted_gpt2"]["attention"]["rows"]
    dropped = next(r for r in attention if r[0] == "copying_score" and r[2] == 1 and r[3] == 1)
    attention.remove(dropped)
    attention.append(["copying_score", None, 7, 0, None, None, None, 0.5])
    problems = check(got, want)
    assert problems[:2] == ["planted_gpt2/attention: 1 row(s) vanished from the output: copying_score layer=1 head=1",
                            "planted_gpt2/attention: 1 row(s) is new: copying_score layer=7 head=0"]
    assert len(problems) == 3 and "its rows changed" in problems[2]
    del got["planted_gpt2"]
    assert check(got, want)[0].startswith("planted_gpt2: the model's rows vanished from the output")


if __name__ == "__main__":  # write tests/golden.json from the current code
    import tempfile

    torch.set_num_threads(1)  # as in the test session (conftest.py): sums in the same order
    sys.path.insert(0, str(Path(__file__).parent))
    from test_outside import _save, planted_gpt2

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = ci.train(ci.preset("tiny"), tmp / "tiny", progress=False, device="cpu")
        _save(planted_gpt2(), tmp / "planted" / "step100")
        markov = ci.train(ci.preset("markov-tiny"), tmp / "markov", progress=False, device="cpu")
        values = current(tiny.path, tmp / "planted", markov.path, tmp / "cache")
    GOLDEN.write_text(json.dumps(values, indent=0, default=str) + "\n")
    print(f"wrote {GOLDEN}: " + ", ".join(f"{m}/{n} {len(e['rows'])} rows" for m, v in values.items()
                                          for n, e in v.items()))
