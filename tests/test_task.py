import dataclasses
import math

import pytest
import torch

import coopinterp as ci
from coopinterp.task import accuracy, exemplar_bank, loss, sample_train

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


FAMILIES = ci.TaskConfig(n_classes=96, n_labels=24, exemplars_per_class=6, dim=8, eps=0.4, family_size=4)


def test_direct_path_levers_at_defaults_draw_nothing():
    # Fingerprints of the bank, one batch per evaluator and the training stream, taken before the levers existed.
    assert round(float(exemplar_bank(FAMILIES).double().sum()), 4) == 142.5367
    before = {"train": (43.8715, 1425), "icl": (43.8715, 1397), "ciwl": (86.9589, 1526), "flip": (43.8715, 1425),
              "iwl": (86.9589, 1559)}
    for ev, (exemplar_sum, label_sum) in before.items():
        b = batch(ev, n=64, seed=3, task=FAMILIES)
        assert (round(float(b.exemplars.double().sum()), 4), int(b.labels.sum())) == (exemplar_sum, label_sum), ev
    g = torch.Generator().manual_seed(5)
    sample_train(FAMILIES, 64, g)
    assert int(torch.randint(10**6, (1,), generator=g)) == 404783  # the stream drew nothing extra


def test_shared_mean_adds_one_vector_to_every_exemplar():
    plain = exemplar_bank(FAMILIES)
    shifted = exemplar_bank(dataclasses.replace(FAMILIES, shared_mean=3.0))
    shift = shifted - plain  # [K, E, D]
    g = torch.Generator().manual_seed(0)
    for shape in ((96, 1, 8), (96, 6, 8), (24, 1, 8)):  # prototypes, noise, family directions
        torch.randn(shape, generator=g)
    torch.testing.assert_close(shift, (3.0 * torch.randn(8, generator=g)).expand_as(shift))  # drawn last


def test_p_same_family_draws_training_distractors_from_the_query_family():
    task = dataclasses.replace(FAMILIES, p_same_family=1.0)
    b = batch("train", n=500, task=task)
    cls, _ = same_class(b, task)
    distractor = cls[torch.arange(500), 1 - b.same_class_pair]
    assert (distractor // 4 == cls[:, 2] // 4).all() and (distractor != cls[:, 2]).all()
    assert (b.labels[:, 0] != b.labels[:, 1]).all()
    half = dataclasses.replace(FAMILIES, p_same_family=0.5)
    cls, _ = same_class(b := batch("train", n=2000, task=half), half)
    mates = (cls[torch.arange(2000), 1 - b.same_class_pair] // 4 == cls[:, 2] // 4).float().mean().item()
    assert 0.45 < mates < 0.58  # p plus the 3/95 chance of a random mate
    for ev in ("icl", "ciwl", "flip", "iwl"):  # only the training distribution changes
        assert torch.equal(batch(ev, task=task).exemplars, batch(ev, task=FAMILIES).exemplars)


@pytest.mark.parametrize("change, message", [
    ({"shared_mean": -1.0}, "shared_mean"), ({"p_same_family": 1.5}, "p_same_family"),
    ({"p_same_family": 0.3, "family_size": 1}, "family_size > 1"),
    ({"p_same_family": 0.3, "holdout_classes": 6}, "multiple of family_size"),
    ({"p_same_family_from": -1}, "p_same_family_from")])
def test_direct_path_levers_are_validated(change, message):
    with pytest.raises(ci.ConfigError, match=message):
        dataclasses.replace(FAMILIES, **change).validate()


def test_the_demo_training_stream_is_unchanged_by_the_levers():
    # The shipped demo's task; fingerprint of its third training batch and of the stream after it, taken at c926814.
    demo = ci.TaskConfig(eps=0.7, family_size=8)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        b = sample_train(demo, 32, g, step)
    assert (round(float(b.exemplars.double().sum()), 4), int(b.labels.sum()), int(b.target.sum())) == \
        (60.9299, 395111, 191268)
    assert int(torch.randint(10**6, (1,), generator=g)) == 833325


def test_p_same_family_from_holds_family_mates_back_until_its_step():
    task = dataclasses.replace(FAMILIES, p_same_family=1.0, p_same_family_from=100)
    draws = {}
    for step in (99, 100, None):
        g = torch.Generator().manual_seed(7)
        b = sample_train(task, 2000, g, step)
        cls, _ = same_class(b, task)
        distractor = cls[torch.arange(2000), 1 - b.same_class_pair]
        draws[step] = (b, (distractor // 4 == cls[:, 2] // 4).float().mean().item(), g.get_state())
    assert draws[99][1] < 0.06 and draws[100][1] == 1.0  # before: mates only by chance (3/95); from: always
    g = torch.Generator().manual_seed(7)  # from its step on, the schedule's batch is the unscheduled one
    assert torch.equal(sample_train(dataclasses.replace(task, p_same_family_from=0), 2000, g).exemplars,
                       draws[100][0].exemplars)
    assert torch.equal(draws[None][0].exemplars, draws[100][0].exemplars)
    assert torch.equal(draws[99][2], draws[100][2])  # either side draws as many numbers: the stream stays aligned
