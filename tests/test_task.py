import math

import pytest
import torch

import coopinterp as ci
from coopinterp.task import accuracy, exemplar_bank, loss

TASK = ci.TaskConfig(n_classes=96, n_labels=24, exemplars_per_class=6, dim=8, eps=0.4)


def batch(ev, n=400, seed=0, task=TASK, **kw):
    return ci.make_batch(task, ev, n=n, seed=seed, **kw)


def same_class(b, task=TASK):
    """Class of every exemplar, recovered by matching against the bank."""
    bank = exemplar_bank(task).flatten(0, 1)
    idx = torch.cdist(b.exemplars.flatten(0, 1), bank).argmin(-1)
    return (idx // task.exemplars_per_class).view(b.exemplars.shape[:2]), idx.view(b.exemplars.shape[:2])


def test_bank_scale_and_determinism():
    bank = exemplar_bank(ci.TaskConfig(n_classes=200, dim=64, eps=0.5))
    assert bank.shape == (200, 20, 64)
    assert abs(bank.std().item() - 1.0) < 0.02  # coordinates ~N(0, 1)
    assert abs(bank.norm(dim=-1).mean().item() - math.sqrt(64)) < 0.3
    assert torch.equal(bank, exemplar_bank(ci.TaskConfig(n_classes=200, dim=64, eps=0.5)))


def test_families_share_a_direction_and_leave_the_plain_bank_unchanged():
    plain = ci.TaskConfig(n_classes=400, dim=64, eps=0.5)
    g = torch.Generator().manual_seed(0)
    prototypes, noise = torch.randn(400, 1, 64, generator=g), torch.randn(400, 20, 64, generator=g)
    torch.testing.assert_close(exemplar_bank(plain), (prototypes + 0.5 * noise) / math.sqrt(1.25))
    fam = ci.TaskConfig(n_classes=400, dim=64, eps=0.0, family_size=8, family_delta=0.15)
    means = torch.nn.functional.normalize(exemplar_bank(fam)[:, 0], dim=-1)
    cos = means @ means.T
    same = torch.arange(400)[:, None] // 8 == torch.arange(400)[None] // 8
    off_diagonal = same & ~torch.eye(400, dtype=torch.bool)
    assert abs(cos[off_diagonal].mean().item() - 1 / (1 + 0.15**2)) < 0.02  # shared family direction
    assert cos[~same].abs().mean().item() < 0.15  # unrelated families: ~1/sqrt(64)
    assert abs(exemplar_bank(fam).std().item() - 1.0) < 0.05


@pytest.mark.parametrize("ev", ci.EVALUATORS)
def test_batch_shapes_and_determinism(ev):
    b = batch(ev)
    assert b.exemplars.shape == (400, 3, 8) and b.labels.shape == (400, 2)
    for t in (b.query_label, b.target, b.target_pair, b.same_class_pair):
        assert t.shape == (400,)
    b2 = batch(ev)
    assert torch.equal(b.exemplars, b2.exemplars) and torch.equal(b.labels, b2.labels)
    assert not torch.equal(b.exemplars, batch(ev, seed=1).exemplars)


def test_train_sequences():
    b = batch("train")
    cls, idx = same_class(b)
    rows = torch.arange(len(b))
    assert torch.equal(b.labels, cls[:, :2] % 24)
    assert torch.equal(b.query_label, cls[:, 2] % 24)
    assert (b.same_class_pair >= 0).all()
    assert torch.equal(cls[rows, b.same_class_pair], cls[:, 2])
    assert (idx[rows, b.same_class_pair] != idx[:, 2]).all()  # query is a different exemplar
    assert (b.labels[:, 0] != b.labels[:, 1]).all()  # no two context classes share a label
    assert torch.equal(b.target, b.query_label)
    assert 0.4 < (b.same_class_pair == 0).float().mean() < 0.6  # random order


def test_flip_target_next_to_same_class_exemplar_and_true_label_next_to_distractor():
    b = batch("flip")
    cls, _ = same_class(b)
    rows = torch.arange(len(b))
    assert torch.equal(b.target_pair, b.same_class_pair)
    assert torch.equal(b.labels[rows, b.same_class_pair], b.target)
    assert torch.equal(b.labels[rows, 1 - b.same_class_pair], b.query_label)  # true label sits by the distractor
    assert torch.equal(b.labels[rows, b.same_class_pair], cls[rows, 1 - b.same_class_pair] % 24)


def test_ciwl_query_class_absent_but_its_label_present():
    b = batch("ciwl")
    cls, _ = same_class(b)
    assert (cls[:, :2] != cls[:, 2:3]).all()
    assert ((cls[:, :2] % 24) != (cls[:, 2:3] % 24)).all()
    assert (b.same_class_pair == -1).all()
    rows = torch.arange(len(b))
    assert torch.equal(b.labels[rows, b.target_pair], b.query_label)
    assert torch.equal(b.target, b.query_label)


def test_icl_relabels_and_target_is_label_next_to_same_class():
    b = batch("icl")
    cls, _ = same_class(b)
    rows = torch.arange(len(b))
    assert (b.labels[:, 0] != b.labels[:, 1]).all()
    assert torch.equal(b.target, b.labels[rows, b.same_class_pair])
    assert (b.labels != cls[:, :2] % 24).any()  # labels were replaced


def test_iwl_query_label_absent():
    b = batch("iwl")
    assert (b.labels != b.query_label[:, None]).all()
    assert (b.target_pair == -1).all() and torch.equal(b.target, b.query_label)


def test_match_query_and_holdout():
    task = ci.TaskConfig(n_classes=96, n_labels=24, exemplars_per_class=6, dim=8, match_query=True,
                         holdout_classes=24)
    b = batch("train", task=task)
    rows = torch.arange(len(b))
    assert torch.equal(b.exemplars[rows, b.same_class_pair], b.exemplars[:, 2])
    cls, _ = same_class(b, task)
    assert (cls < 72).all()
    h = batch("icl", task=task, holdout=True)
    hcls, _ = same_class(h, task)
    assert (hcls >= 72).all()
    with pytest.raises(ci.ConfigError, match="holdout"):
        batch("icl", holdout=True)


def test_bursty_zipf_longer_context():
    task = ci.TaskConfig(n_classes=96, n_labels=24, exemplars_per_class=6, dim=8, context_pairs=8,
                         p_bursty=0.5, zipf_alpha=1.0)
    b = batch("train", n=2000, task=task)
    assert b.exemplars.shape == (2000, 9, 8) and b.labels.shape == (2000, 8)
    has_query = (b.same_class_pair >= 0).float().mean().item()
    assert 0.5 <= has_query < 0.9  # bursty half always holds the query's class
    cls, _ = same_class(b, task)
    counts = torch.bincount(cls[:, -1], minlength=96)
    assert counts[0] > 5 * counts[50]  # Zipfian class frequencies


def test_unknown_evaluator():
    with pytest.raises(ci.ConfigError, match="unknown evaluator 'nope'"):
        batch("nope")


def test_accuracy_and_loss_restrict_to_context_labels():
    b = batch("flip", n=4)
    logits = torch.zeros(4, 24)
    logits[torch.arange(4), b.target] = 5.0
    assert accuracy(logits, b).item() == 1.0
    # a huge logit on a label absent from the context does not count for in-context accuracy
    absent = [next(l for l in range(24) if l not in b.labels[i]) for i in range(4)]
    logits[torch.arange(4), absent] = 50.0
    assert accuracy(logits, b).item() == 1.0
    assert loss(logits, b).item() > 40
    stacked = torch.stack([logits, -logits])
    assert accuracy(stacked, b).shape == (2,)
