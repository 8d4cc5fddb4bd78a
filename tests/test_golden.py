"""Golden values: every analysis's rows on a fixed tiny checkpoint (the `tiny` preset's last step), on the
planted GPT-2 of test_outside.py and on the `markov-tiny` preset's last step, against tests/golden.json.

The analysis cache trusts an analysis's declared version: a change to its rows under the same version would serve
stale tables. This test fails then, naming the analysis to bump. After a deliberate change (version bumped), write
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
from coopinterp.runs import open_run

GOLDEN = Path(__file__).with_name("golden.json")
N, SEED = 32, 0
OPTIONS = {"llc": {"chains": 2, "draws": 4, "burnin": 2, "batch_size": 16}}
KEYS = ["metric", "evaluator", "layer", "head", "src_layer", "src_head", "component"]


def rows_of(run, step: int, cache_dir: Path) -> dict[str, dict]:
    out = {}
    for name, record in an.registry().items():
        if not record.applies(run.kind):
            continue
        df = an.analyze(run, [name], steps=[step], n=N, seed=SEED, progress=False, cache_dir=cache_dir,
                        options={name: OPTIONS[name]} if name in OPTIONS else None, recompute=True)
        df = df[KEYS + ["value"]].astype(object).where(df[KEYS + ["value"]].notna(), None)
        records = sorted(df.values.tolist(), key=lambda r: json.dumps(r[:-1], default=str))
        out[name] = {"version": record.version, "rows": records}
    return out


def current(tiny_run_path: Path, planted_path: Path, markov_path: Path, cache_dir: Path) -> dict:
    tiny, markov = ci.load_run(tiny_run_path), ci.load_run(markov_path)
    planted = open_run(planted_path)
    return {"tiny": rows_of(tiny, tiny.steps[-1], cache_dir / "tiny"),
            "planted_gpt2": rows_of(planted, planted.steps[-1], cache_dir / "planted"),
            "markov_tiny": rows_of(markov, markov.steps[-1], cache_dir / "markov")}


def check(got: dict, want: dict) -> list[str]:
    problems = []
    for model in want:
        for name, entry in got[model].items():
            old = want[model].get(name)
            if old is None:
                problems.append(f"{model}/{name}: no golden values yet (write them: python tests/test_golden.py)")
                continue
            same = len(old["rows"]) == len(entry["rows"]) and all(
                a[:-1] == b[:-1] and (a[-1] is None) == (b[-1] is None)
                and (a[-1] is None or np.isclose(a[-1], b[-1], atol=1e-4, rtol=1e-4))
                for a, b in zip(old["rows"], entry["rows"]))
            if not same and old["version"] == entry["version"]:
                problems.append(f"{model}/{name}: its rows changed but its version is still {entry['version']}: "
                                f"bump ANALYSIS.version in its module, then python tests/test_golden.py")
            elif entry["version"] != old["version"]:
                problems.append(f"{model}/{name}: version {old['version']} -> {entry['version']}: write the new "
                                "golden values with python tests/test_golden.py")
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


def test_a_changed_row_under_the_same_version_is_caught():
    want = json.loads(GOLDEN.read_text())
    edited = json.loads(json.dumps(want))
    edited["tiny"]["behavior"]["rows"][0][-1] += 0.01
    assert check(edited, want) == ["tiny/behavior: its rows changed but its version is still "
                                   f"{want['tiny']['behavior']['version']}: bump ANALYSIS.version in its module, "
                                   "then python tests/test_golden.py"]
    edited["tiny"]["behavior"]["version"] += 1
    assert "write the new golden values" in check(edited, want)[0]


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
