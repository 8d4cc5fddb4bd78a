"""Contrastive sources (contrast.py, sources.py): induction pairs built from repeated tokens, contrast files of token
ids (.npz) and of texts (.jsonl), the logit- and probability-difference metrics, and `--source induction` through
every default analysis of an outside run."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coopinterp.cli import app
from coopinterp.contrast import ContrastBatch, contrasts, logit_diff, prob_diff
from coopinterp.errors import ConfigError
from coopinterp.sources import ModelShape, parse, source_key, token_batches
from coopinterp.tasks.markov import TASK as MARKOV, MarkovTaskConfig

NEOX = Path(__file__).parents[1] / "checkpoints" / "induction_neox"


def one(spec: str, shape: ModelShape, n: int = 8, seed: int = 0, tokenizer=None):
    (batch,) = token_batches(spec, shape, n, seed, tokenizer).values()
    return batch


def test_induction_pairs_resample_the_first_copy_only():
    shape = ModelShape(d_vocab=4, n_ctx=13, bos=0)  # three tokens besides BOS: chance clashes are common
    batch = one("induction", shape, n=64)
    pairs, L = batch.contrast, 6
    assert batch.evaluator == pairs.evaluator == "induction" and (batch.first, batch.period) == (1, L)
    assert torch.equal(batch.tokens, one("repeated", shape, n=64).tokens)  # the clean prompts are `repeated`'s
    assert torch.equal(pairs.clean, batch.tokens)
    assert torch.equal(pairs.corrupted[:, L + 1:], pairs.clean[:, L + 1:]) and (pairs.corrupted[:, 0] == 0).all()
    assert (pairs.corrupted[:, 1:L + 1] != pairs.clean[:, 1:L + 1]).any()
    assert (pairs.corrupted[:, 1:] != 0).all()  # fresh tokens never draw BOS
    assert (pairs.position == 2 * L - 1).all()  # the second-to-last position, predicting the last token
    assert torch.equal(pairs.answer, pairs.clean[:, -1])
    assert torch.equal(pairs.wrong, pairs.corrupted[:, L])  # what induction reads in the corrupted first copy
    assert (pairs.wrong != pairs.answer).all()
    again, other = one("induction", shape, n=64), one("induction", shape, n=64, seed=1)
    assert torch.equal(again.contrast.corrupted, pairs.corrupted)
    assert not torch.equal(other.contrast.corrupted, pairs.corrupted)
    short = one("induction:3", shape)
    assert short.evaluator == "induction:3" and short.tokens.shape == (8, 7)


def test_induction_reaches_the_markov_task():
    section = MarkovTaskConfig(n_states=5, markov_len=12)
    (batch,) = MARKOV.batches(section, "induction", 4, 0, "cpu").values()
    assert batch.first == 0 and batch.tokens.shape == (4, 12) and len(contrasts({"x": batch})["x"]) == 4
    assert MARKOV.source_key("induction") == "induction"


def test_logit_and_probability_differences():
    logits = torch.zeros(2, 3, 4)
    logits[0, 1] = torch.tensor([0.0, 2.0, -1.0, 0.0])
    logits[1, 2] = torch.tensor([3.0, 0.0, 1.0, 0.0])
    batch = ContrastBatch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
                          answer=torch.tensor([1, 2]), wrong=torch.tensor([2, 0]), position=torch.tensor([1, 2]),
                          evaluator="x")
    assert logit_diff(logits, batch).tolist() == [3.0, -2.0]
    at = logits[[0, 1], [1, 2]]
    assert torch.equal(logit_diff(at, batch), logit_diff(logits, batch))  # logits already read at the position
    p0, p1 = at[0].softmax(-1), at[1].softmax(-1)
    torch.testing.assert_close(prob_diff(logits, batch), torch.stack([p0[1] - p0[2], p1[2] - p1[0]]))


def save_npz(path: Path, **arrays) -> Path:
    base = dict(clean=np.array([[1, 2, 3], [4, 5, 6]]), corrupted=np.array([[1, 0, 3], [4, 0, 6]]),
                answer=np.array([7, 8]), wrong=np.array([8, 7]))
    np.savez(path, **{**base, **arrays})
    return path


def test_npz_pairs_and_their_key(tmp_path):
    shape = ModelShape(d_vocab=10, n_ctx=8, bos=None)
    path = save_npz(tmp_path / "pairs.npz")
    batch = one(f"contrast:{path}", shape)
    assert batch.evaluator == "contrast:pairs.npz" and torch.equal(batch.tokens, batch.contrast.clean)
    assert batch.contrast.position.tolist() == [2, 2] and batch.contrast.wrong.tolist() == [8, 7]
    assert one(f"contrast:{save_npz(tmp_path / 'p.npz', position=np.array([0, 1]))}", shape).contrast.position.tolist() \
        == [0, 1]
    assert len(one(f"contrast:{path}", shape, n=1)) == 1
    key = source_key(f"contrast:{path}")
    assert key.startswith("contrast:pairs.npz:") and source_key(f"contrast:{path}") == key
    save_npz(path, answer=np.array([7, 9]))
    assert source_key(f"contrast:{path}") != key  # keyed by content


@pytest.mark.parametrize("arrays, message", [
    (dict(corrupted=np.array([[1, 0], [4, 0]])), "corrupted is [2, 2], clean [2, 3] wants [2, 3]"),
    (dict(answer=np.array([7, 8, 9])), "answer is [3]"),
    (dict(wrong=np.array([8, 10])), "wrong holds ids outside the vocabulary 0..9"),
    (dict(clean=np.array([[1, 2, 3], [4, 5, -1]])), "clean holds ids outside"),
    (dict(position=np.array([0, 3])), "position outside the prompts' 0..2"),
    (dict(clean=np.zeros((2, 9), int), corrupted=np.zeros((2, 9), int)), "prompts of 9 tokens; the model takes 1 to 8"),
    (dict(answer=np.array([7.0, 8.0])), "answer must hold integers"),
    (dict(wrong=np.array(["a", "b"], dtype=object)), "cannot read contrast file"),  # pickled: refused
])
def test_bad_npz_files_are_one_line_errors(tmp_path, arrays, message):
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")) as e:
        one(f"contrast:{path}", ModelShape(d_vocab=10, n_ctx=8, bos=None))
    assert "\n" not in str(e.value)


def test_npz_without_an_answer_and_other_sources_fail_in_one_line(tmp_path):
    np.savez(tmp_path / "half.npz", clean=np.zeros((2, 3), int), corrupted=np.zeros((2, 3), int))
    with pytest.raises(ConfigError, match="lacks array\\(s\\) answer, wrong"):
        one(f"contrast:{tmp_path / 'half.npz'}", ModelShape(10, 8, None))
    for spec, message in [("contrast:x.txt", "must be a .npz"), ("induction:x", "takes a block length"),
                          ("contrast:", "unknown data source"), ("inductive", "unknown data source")]:
        with pytest.raises(ConfigError, match=message):
            parse(spec)
    with pytest.raises(ConfigError, match="not found"):
        source_key(f"contrast:{tmp_path / 'none.npz'}")


def word_tokenizer():
    """A stand-in with a Hugging Face tokenizer's call: whitespace words of a small vocabulary as ids, a word outside
    it split into letters (so "Bobby" is five tokens), as a subword tokenizer splits rare words."""
    words = ["<unk>", "when", "Mary", "and", "John", "went", "to", "the", "store", "gave", "a", "drink", "B", "o", "b",
             "y", "Tom"]

    def tokenize(text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [words.index(w) for word in text.split() for w in ([word] if word in words else word)]}
    return tokenize


def write_jsonl(path: Path, *records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


PAIR = {"clean": "when Mary and John went to the store John gave a drink to",
        "corrupted": "when Mary and John went to the store Tom gave a drink to", "answer": "Mary", "wrong": "John"}


def test_jsonl_pairs_are_tokenised_by_the_checkpoints_tokenizer(tmp_path):
    shape, tok = ModelShape(d_vocab=17, n_ctx=20, bos=None), word_tokenizer()
    path = write_jsonl(tmp_path / "ioi.jsonl", PAIR, "", {**PAIR, "answer": "John", "wrong": "Mary"})
    batch = one(f"contrast:{path}", shape, tokenizer=tok)
    pairs = batch.contrast
    assert batch.evaluator == "contrast:ioi.jsonl" and pairs.clean.shape == (2, 13)
    assert pairs.answer.tolist() == [2, 4] and pairs.wrong.tolist() == [4, 2] and pairs.position.tolist() == [12, 12]
    assert pairs.clean[0, 8] == 4 and pairs.corrupted[0, 8] == 16  # John -> Tom
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        one(f"contrast:{path}", shape)


@pytest.mark.parametrize("records, message", [
    ([PAIR, {**PAIR, "answer": "Bobby"}], "ioi.jsonl line 2: answer 'Bobby' is 5 tokens, not one"),
    ([{**PAIR, "corrupted": "when Mary and John went to the store gave a drink to"}],
     "line 1: clean and corrupted tokenise to 13 and 12 tokens"),
    ([PAIR, PAIR, {**PAIR, "clean": "John gave a drink to", "corrupted": "Tom gave a drink to"}],
     "line 3: 5 tokens, the file's first pair 13; every pair of a file must tokenise to one length"),
    ([PAIR, "{not json"], "line 2 is not JSON"),
    ([{"clean": "a", "corrupted": "a"}], "line 1 must be an object with string clean, corrupted, answer and wrong"),
])
def test_bad_jsonl_lines_are_named(tmp_path, records, message):
    path = write_jsonl(tmp_path / "ioi.jsonl", *records)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        one(f"contrast:{path}", ModelShape(d_vocab=17, n_ctx=20, bos=None), tokenizer=word_tokenizer())
    assert "\n" not in str(e.value)


def test_analyze_an_outside_run_on_induction_pairs(tmp_path):
    """The default analyses of a NeoX run read the induction source's clean prompts; the evaluator is `induction`."""
    shutil.copytree(NEOX / "step1500", tmp_path / "run" / "step1500")
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "run"), "--source", "induction", "--n", "2",
                                      "--no-progress", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    df = pd.read_csv(out)
    assert {"behavior", "attention", "ablation"} <= set(df.analysis)
    assert set(df.evaluator.dropna()) == {"induction"}
