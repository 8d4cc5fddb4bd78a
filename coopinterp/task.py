"""The synthetic exemplar-label task: exemplar bank, the five evaluators, in-context scoring.

A sequence is `[x_0, l_0, x_1, l_1, ..., x_q]`: context exemplar i at position 2i, its label at 2i+1,
the query exemplar at 2N. Every sampler is vectorised torch code driven by one `torch.Generator`,
so a batch is a pure function of (task, evaluator, n, seed).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .config import check
from .errors import ConfigError


@dataclass(frozen=True)
class TaskConfig:
    """The synthetic exemplar-label task's config section (docs/reference.md, "The task")."""

    n_classes: int = 12_800
    n_labels: int | None = None  # None: one label per class (L = K); else k -> k mod L
    exemplars_per_class: int = 20
    dim: int = 64
    eps: float = 0.5  # within-class noise relative to the class prototype
    # Families (Omniglot's characters x rotations): F consecutive classes share a family direction and differ
    # by `family_delta`, so the full K-way map is hard to memorise while two-way choices stay easy. 1: none.
    family_size: int = 1
    family_delta: float = 0.15
    # Levers on the query's direct path (docs/direct_path_search.md); at their defaults they draw nothing.
    shared_mean: float = 0.0  # a component common to every exemplar, in units of the class part (ResNet-like mean)
    p_same_family: float = 0.0  # chance that a training sequence's distractor class is from the query's family
    p_same_family_from: int = 0  # the training step from which p_same_family applies (0 before; e.g. after ICL forms)
    context_pairs: int = 2
    holdout_classes: int = 0  # the last H classes never appear in training
    p_bursty: float = 1.0  # with N > 2: share of sequences that hold the query's class
    zipf_alpha: float = 0.0  # 0: uniform classes; > 0: class rank r drawn with p ~ r^-alpha
    match_query: bool = False  # persistent-ICL intervention on the training distribution
    seed: int = 0  # seeds the exemplar bank
    kind: str = "exemplar"  # the task section's tag (coopinterp.tasks)

    @property
    def labels(self) -> int:
        return self.n_labels or self.n_classes

    @property
    def train_classes(self) -> int:
        return self.n_classes - self.holdout_classes

    @property
    def seq_len(self) -> int:
        return 2 * self.context_pairs + 1

    def validate(self) -> None:
        L = self.labels
        check(self.n_classes >= 3, f"n_classes must be >= 3, got {self.n_classes}")
        check(3 <= L <= self.n_classes, f"n_labels must be in [3, n_classes], got {L}")
        check(self.n_classes % L == 0, f"n_classes ({self.n_classes}) must be a multiple of n_labels ({L})")
        check(self.exemplars_per_class >= 2, f"exemplars_per_class must be >= 2, got {self.exemplars_per_class}")
        check(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        check(self.eps >= 0 and math.isfinite(self.eps), f"eps must be finite and >= 0, got {self.eps}")
        check(self.family_size >= 1 and self.n_classes % self.family_size == 0,
              f"family_size must be >= 1 and divide n_classes ({self.n_classes}), got {self.family_size}")
        check(self.family_delta > 0 and math.isfinite(self.family_delta),
              f"family_delta must be finite and > 0, got {self.family_delta}")
        check(self.shared_mean >= 0 and math.isfinite(self.shared_mean),
              f"shared_mean must be finite and >= 0, got {self.shared_mean}")
        check(0.0 <= self.p_same_family <= 1.0, f"p_same_family must be in [0, 1], got {self.p_same_family}")
        check(self.p_same_family_from >= 0, f"p_same_family_from must be >= 0, got {self.p_same_family_from}")
        if self.p_same_family > 0:  # family mates must be training classes with labels of their own
            check(self.family_size > 1 and L >= self.family_size and self.holdout_classes % self.family_size == 0,
              "p_same_family > 0 needs family_size > 1, n_labels >= family_size and holdout_classes a "
              "multiple of family_size")
        check(self.context_pairs >= 2, f"context_pairs must be >= 2, got {self.context_pairs}")
        check(self.holdout_classes == 0 or 3 <= self.holdout_classes <= self.n_classes - 3,
              f"holdout_classes must be 0 or in [3, n_classes - 3], got {self.holdout_classes}")
        check(0.0 <= self.p_bursty <= 1.0, f"p_bursty must be in [0, 1], got {self.p_bursty}")
        check(self.zipf_alpha >= 0, f"zipf_alpha must be >= 0, got {self.zipf_alpha}")


EVALUATORS = ("train", "icl", "ciwl", "flip", "iwl")


@dataclass
class Batch:
    """A batch of sequences plus what each evaluator scores as correct."""

    exemplars: Float[Tensor, "n pairs_plus_1 dim"]  # context exemplars, then the query
    labels: Int[Tensor, "n pairs"]  # context labels
    query_label: Int[Tensor, " n"]  # the query's true label
    target: Int[Tensor, " n"]  # what this evaluator scores as correct
    target_pair: Int[Tensor, " n"]  # context pair holding `target`, -1 if absent
    same_class_pair: Int[Tensor, " n"]  # context pair of the query's class, -1 if none
    evaluator: str

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device) for t in (self.exemplars, self.labels, self.query_label, self.target,
                                                self.target_pair, self.same_class_pair)), self.evaluator)

    def label_positions(self) -> Int[Tensor, " pairs"]:
        return torch.arange(self.labels.shape[1]) * 2 + 1


@functools.lru_cache(maxsize=4)
def _bank(n_classes: int, per_class: int, dim: int, eps: float, family_size: int, family_delta: float,
          shared_mean: float, seed: int, device: str) -> Float[Tensor, "K E D"]:
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(n_classes, 1, dim, generator=g)
    noise = torch.randn(n_classes, per_class, dim, generator=g)
    if family_size > 1:  # drawn after the rest, so a task without families keeps its old bank
        family = torch.randn(n_classes // family_size, 1, dim, generator=g).repeat_interleave(family_size, 0)
        prototypes = (family + family_delta * prototypes) / math.sqrt(1 + family_delta**2)
    bank = (prototypes + eps * noise) / math.sqrt(1 + eps**2)
    if shared_mean > 0:  # drawn last, so a task without it keeps its old bank
        bank = bank + shared_mean * torch.randn(dim, generator=g)
    return bank.to(device)


def exemplar_bank(task: TaskConfig, device: torch.device | str = "cpu") -> Float[Tensor, "K E D"]:
    """K classes x E exemplars: e_kj = (mu_k + eps*eta_kj) / sqrt(1 + eps^2) + s*c, class part coordinates ~N(0, 1).

    With families of F classes, mu_k = (m_f + delta*u_k) / sqrt(1 + delta^2) for class k in family f = k // F.
    c ~ N(0, I) is one vector common to every exemplar, s = `shared_mean` (0: none).
    """
    return _bank(task.n_classes, task.exemplars_per_class, task.dim, task.eps, task.family_size, task.family_delta,
                 task.shared_mean, task.seed, str(torch.device(device)))


class _Sampler:
    """Draws classes, labels and exemplar indices for one batch from one generator."""

    def __init__(self, task: TaskConfig, n: int, gen: torch.Generator, holdout: bool):
        self.task, self.n, self.gen = task, n, gen
        self.device = gen.device
        self.L = task.labels
        lo, hi = (task.train_classes, task.n_classes) if holdout else (0, task.train_classes)
        self.lo, self.hi = lo, hi
        self.class_probs = None
        if task.zipf_alpha > 0:
            ranks = torch.arange(1, hi - lo + 1, device=self.device, dtype=torch.float64)
            self.class_probs = ranks.pow(-task.zipf_alpha)

    def ints(self, high: int, size: tuple[int, ...] | None = None) -> Tensor:
        return torch.randint(high, size or (self.n,), generator=self.gen, device=self.device)

    def classes(self) -> Int[Tensor, " n"]:
        if self.class_probs is None:
            return self.lo + self.ints(self.hi - self.lo)
        return self.lo + torch.multinomial(self.class_probs, self.n, replacement=True, generator=self.gen)

    def classes_avoiding(self, *taken: Tensor) -> Int[Tensor, " n"]:
        """Classes whose label differs from the labels of every class in `taken` (rejection sampling)."""
        c = self.classes()
        for _ in range(1000):
            clash = torch.zeros_like(c, dtype=torch.bool)
            for t in taken:
                clash |= (c % self.L) == (t % self.L)
            if not clash.any():
                return c
            c = torch.where(clash, self.classes(), c)
        raise ConfigError("could not sample context classes with distinct labels; use more labels or classes")

    def family_mates(self, c: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        """Another class of the same family as each class in c (uniform over the other F - 1)."""
        F_ = self.task.family_size
        return c - c % F_ + (c % F_ + 1 + self.ints(F_ - 1)) % F_

    def other_exemplar(self, j: Tensor) -> Tensor:
        """An exemplar index different from j."""
        return (j + 1 + self.ints(self.task.exemplars_per_class - 1, tuple(j.shape))) % self.task.exemplars_per_class


def _sample(task: TaskConfig, evaluator: str, n: int, gen: torch.Generator, holdout: bool,
            step: int | None = None) -> Batch:
    if evaluator not in EVALUATORS:
        raise ConfigError(f"unknown evaluator {evaluator!r}; choose from {', '.join(EVALUATORS)}")
    s = _Sampler(task, n, gen, holdout)
    N, E, L, dev = task.context_pairs, task.exemplars_per_class, task.labels, s.device
    rows = torch.arange(n, device=dev)

    query_class = s.classes()
    j_query = s.ints(E)
    # Pairs of the "first" context class: one of them (N=2), half of them (bursty N>2).
    n_first = max(1, N // 2)
    first_pairs = torch.rand(n, N, generator=gen, device=dev).argsort(1)[:, :n_first]
    is_first = torch.zeros(n, N, dtype=torch.bool, device=dev).scatter_(1, first_pairs, True)
    lead_pair = first_pairs.min(1).values  # the first pair of the first class

    if evaluator in ("ciwl", "iwl"):
        class_a = s.classes_avoiding(query_class)
        class_b = s.classes_avoiding(query_class, class_a)
    else:
        class_a = query_class
        class_b = s.classes_avoiding(query_class)
        if evaluator == "train" and task.p_same_family > 0:  # distractor from the query's own family
            mate = torch.rand(n, generator=gen, device=dev) < task.p_same_family
            if step is not None and step < task.p_same_family_from:  # not yet; same draws, so the stream stays aligned
                mate.zero_()
            class_b = torch.where(mate, s.family_mates(query_class), class_b)
    ctx_class = torch.where(is_first, class_a[:, None], class_b[:, None])
    j_ctx = s.ints(E, (n, N))
    if evaluator not in ("ciwl", "iwl"):  # same-class context exemplars differ from the query
        j_ctx = torch.where(is_first, s.other_exemplar(j_query[:, None].expand(n, N)), j_ctx)

    if evaluator == "train" and N > 2 and task.p_bursty < 1:
        # Non-bursty sequences: N context classes with distinct labels, the query's class only by chance.
        plain = torch.rand(n, generator=gen, device=dev) >= task.p_bursty
        drawn: list[Tensor] = []
        for _ in range(N):
            drawn.append(s.classes_avoiding(*drawn))
        ctx_class = torch.where(plain[:, None], torch.stack(drawn, 1), ctx_class)
        j_ctx = torch.where(plain[:, None] & (ctx_class == query_class[:, None]),
                            s.other_exemplar(j_query[:, None].expand(n, N)), j_ctx)

    labels = ctx_class % L
    query_label = query_class % L
    if evaluator == "icl":  # two fresh labels for the two context classes
        label_a = s.ints(L)
        label_b = (label_a + 1 + s.ints(L - 1)) % L
        labels = torch.where(is_first, label_a[:, None], label_b[:, None])
    elif evaluator == "ciwl":  # the first class carries the query's true label
        labels = torch.where(is_first, query_label[:, None], labels)
    elif evaluator == "flip":  # swap the two classes' labels
        labels = torch.where(is_first, (class_b % L)[:, None], (class_a % L)[:, None])

    if evaluator == "train" and task.match_query:  # persistent ICL: query = its in-context exemplar
        has_same = ctx_class == query_class[:, None]
        first_same = torch.where(has_same.any(1), has_same.float().argmax(1), torch.zeros_like(query_class))
        j_query = torch.where(has_same.any(1), j_ctx[rows, first_same], j_query)

    same = ctx_class == query_class[:, None]
    same_class_pair = torch.where(same.any(1), same.float().argmax(1), torch.full_like(query_class, -1))
    if evaluator in ("icl", "flip"):
        target = labels[rows, lead_pair]
    else:
        target = query_label
    holds = labels == target[:, None]
    target_pair = torch.where(holds.any(1), holds.float().argmax(1), torch.full_like(target, -1))

    bank = exemplar_bank(task, dev)
    exemplars = torch.cat([bank[ctx_class, j_ctx], bank[query_class, j_query][:, None]], 1)
    return Batch(exemplars, labels, query_label, target, target_pair, same_class_pair, evaluator)


def make_batch(task: TaskConfig, evaluator: str, n: int = 512, seed: int = 0, holdout: bool = False,
               device: torch.device | str = "cpu") -> Batch:
    """A deterministic batch of `n` sequences for one evaluator (docs/reference.md, "Evaluators")."""
    if n < 1:
        raise ConfigError(f"batch size n must be >= 1, got {n}")
    if holdout and task.holdout_classes == 0:
        raise ConfigError("holdout batches need a task with holdout_classes > 0")
    gen = torch.Generator(device=device).manual_seed(seed)
    return _sample(task, evaluator, n, gen, holdout)


def sample_train(task: TaskConfig, n: int, gen: torch.Generator, step: int | None = None) -> Batch:
    """The training distribution at optimizer step `step` (None: its final form, after `p_same_family_from`),
    drawn from the training stream's generator."""
    return _sample(task, "train", n, gen, holdout=False, step=step)


def predictions(logits: Float[Tensor, "... n labels"], batch: Batch) -> Int[Tensor, "... n"]:
    """In-context prediction: argmax over the labels present in the context (full argmax for `iwl`)."""
    if batch.evaluator == "iwl":
        return logits.argmax(-1)
    labels = batch.labels.expand(*logits.shape[:-1], -1)
    return labels.gather(-1, logits.gather(-1, labels).argmax(-1, keepdim=True)).squeeze(-1)


def accuracy(logits: Float[Tensor, "... n labels"], batch: Batch) -> Float[Tensor, "..."]:
    """In-context accuracy, over any leading dims of `logits` (e.g. one per ablated head)."""
    return (predictions(logits, batch) == batch.target).float().mean(-1)


def loss(logits: Float[Tensor, "... n labels"], batch: Batch) -> Float[Tensor, "..."]:
    """Cross-entropy at the query over all labels, against the evaluator's target."""
    target = batch.target.expand(logits.shape[:-1])
    return F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none").reshape(target.shape).mean(-1)


def eval_batches(task: TaskConfig, n: int, seed: int, device: str = "cpu") -> dict[str, Batch]:
    """One batch per evaluator, each analysis reads the ones it needs; drawn on the CPU, so that every device
    sees the same sequences."""
    return {ev: make_batch(task, ev, n, seed=seed + i).to(device) for i, ev in enumerate(EVALUATORS)}
