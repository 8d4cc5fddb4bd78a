"""The Markov-chain task (Park et al. 2024; Edelman et al. 2024): sequences from a finite mixture of chains.

A task of kind "markov" fixes, from its seed, a set S of K = `n_chains` Markov chains over V = `n_states` states,
every transition row drawn from Dirichlet(`dirichlet_alpha`). A training sequence picks a chain of S uniformly, its
first state from that chain's stationary distribution, then T - 1 transitions; an out-of-distribution (OOD)
sequence does the same with a fresh chain of its own, drawn from the same prior. The model is scored on the next
token at every position. Sampling is torch code driven by one `torch.Generator` (a training stream resumes
exactly); the chains come from numpy's Dirichlet sampler seeded by the task seed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .config import TaskConfig
from .errors import ConfigError
from .sources import TokenBatch

EVALUATORS = ("markov_id", "markov_ood")  # sequences from chains of S, and from fresh chains
OOD_STREAM = 1  # numpy seed-sequence branch of the fresh (OOD) chains, apart from S's


@dataclass(frozen=True)
class MarkovBatch(TokenBatch):
    """Token sequences of the Markov task, with what the exact predictors need: the training set S of chains and
    the Dirichlet prior (predictors.py)."""

    chains: Float[Tensor, "K V V"] | None = None
    alpha: float = 1.0


def check_markov(task: TaskConfig) -> None:
    if task.kind != "markov":
        raise ConfigError(f"this needs a task of kind 'markov', got {task.kind!r}")


def dirichlet_chains(n: int, states: int, alpha: float, seed: int | tuple[int, ...]) -> Float[Tensor, "n V V"]:
    """n transition matrices, each row ~ Dirichlet(alpha), float64."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(states, alpha), size=(n, states)))


@functools.lru_cache(maxsize=8)
def _chains(states: int, n: int, alpha: float, seed: int) -> Float[Tensor, "K V V"]:
    return dirichlet_chains(n, states, alpha, seed)


def chains(task: TaskConfig) -> Float[Tensor, "K V V"]:
    """The task's training set S: K transition matrices P[k, i, j] = p(next j | state i), float64."""
    check_markov(task)
    return _chains(task.n_states, task.n_chains, task.dirichlet_alpha, task.seed).clone()


def stationary(P: Float[Tensor, "*K V V"]) -> Float[Tensor, "*K V"]:
    """Each chain's stationary distribution pi (pi P = pi, sum 1): the solve of (P^T - I) pi = 0 with its last
    equation replaced by sum(pi) = 1 (unique for the dense chains a Dirichlet prior draws)."""
    V = P.shape[-1]
    A = P.transpose(-1, -2) - torch.eye(V, dtype=P.dtype)
    A[..., -1, :] = 1.0
    b = torch.zeros(*P.shape[:-1], dtype=P.dtype)
    b[..., -1] = 1.0
    return torch.linalg.solve(A, b).clamp(min=0)


def sample_sequences(P: Float[Tensor, "M V V"], which: Int[Tensor, " n"], T: int,
                     generator: torch.Generator) -> Int[Tensor, "n T"]:
    """n sequences of T states, sequence i from chain P[which[i]], started from its stationary distribution
    (inverse-CDF sampling: one uniform draw per token)."""
    device = generator.device
    cdf = P.to(device).cumsum(-1)[which]  # n V V
    start = stationary(P).to(device).cumsum(-1)[which]  # n V
    u = torch.rand(T, len(which), 1, generator=generator, device=device, dtype=P.dtype)
    V = P.shape[-1]
    tokens = torch.empty(T, len(which), dtype=torch.long, device=device)
    tokens[0] = (start <= u[0]).sum(-1).clamp(max=V - 1)  # the first state whose cumulative probability passes u
    rows = torch.arange(len(which), device=device)
    for t in range(1, T):
        tokens[t] = (cdf[rows, tokens[t - 1]] <= u[t]).sum(-1).clamp(max=V - 1)
    tokens = tokens.T.contiguous()
    return tokens


def sample_train(task: TaskConfig, n: int, generator: torch.Generator) -> Int[Tensor, "n T"]:
    """A training batch: each sequence from a chain of S chosen uniformly."""
    which = torch.randint(task.n_chains, (n,), generator=generator, device=generator.device)
    return sample_sequences(chains(task), which.cpu(), task.markov_len, generator)


def make_batch(task: TaskConfig, evaluator: str, n: int, seed: int) -> MarkovBatch:
    """n evaluation sequences (CPU): `markov_id` from chains of S, `markov_ood` each from a fresh chain (drawn from
    the prior with a stream of its own, a function of (task seed, seed))."""
    check_markov(task)
    if evaluator not in EVALUATORS:
        raise ConfigError(f"unknown Markov evaluator {evaluator!r}; choose from {', '.join(EVALUATORS)}")
    g = torch.Generator().manual_seed(seed)
    S = chains(task)
    if evaluator == "markov_id":
        tokens = sample_sequences(S, torch.randint(task.n_chains, (n,), generator=g), task.markov_len, g)
    else:
        fresh = dirichlet_chains(n, task.n_states, task.dirichlet_alpha, (task.seed, OOD_STREAM, seed))
        tokens = sample_sequences(fresh, torch.arange(n), task.markov_len, g)
    return MarkovBatch(tokens, evaluator, chains=S, alpha=task.dirichlet_alpha)


def eval_batches(task: TaskConfig, n: int, seed: int, device: str = "cpu") -> dict[str, MarkovBatch]:
    """One batch per evaluator (in- and out-of-distribution), drawn on the CPU."""
    return {ev: make_batch(task, ev, n, seed + i).to(device) for i, ev in enumerate(EVALUATORS)}
