"""The four algorithms of the Markov task as exact next-token predictors (Park et al. 2024's decomposition).

At every position t of a sequence x_0 .. x_{T-1}, each predictor gives p(x_{t+1} | x_0 .. x_t):

- `uni_ret` (unigram, retrieved): the posterior-weighted stationary distribution of the chains of S, the context read
  as i.i.d. draws: w_k ∝ prod_{i<=t} pi_k(x_i), prediction sum_k w_k pi_k.
- `bi_ret` (bigram, retrieved): the Bayesian posterior over the K chains of S (uniform prior, the first state from
  the chain's stationary distribution): w_k ∝ pi_k(x_0) prod_{i<t} P_k(x_i, x_{i+1}), prediction sum_k w_k P_k(x_t, .).
  On in-distribution sequences this is the Bayes-optimal predictor.
- `uni_inf` (unigram, inferred): the Dirichlet(alpha)-posterior mean of the context's state frequencies,
  (count(v) + alpha) / (t + 1 + V alpha).
- `bi_inf` (bigram, inferred): the Dirichlet(alpha)-posterior mean of the row of x_t from the context's transitions,
  (count(x_t -> v) + alpha) / (count(x_t -> .) + V alpha): the Bayes-optimal predictor on fresh chains (OOD).

Everything is float64; retrieval runs in chunks of sequences so that K x chunk x T stays under `BUDGET` numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .tasks.markov import stationary

NAMES = ("uni_ret", "uni_inf", "bi_ret", "bi_inf")
BUDGET = 1 << 23  # numbers per retrieval chunk (64 MB of float64)


def unigram_inferred(tokens: Int[Tensor, "n T"], V: int, alpha: float) -> Float[Tensor, "n T V"]:
    counts = F.one_hot(tokens, V).double().cumsum(1)  # counts[:, t] over x_0 .. x_t
    return (counts + alpha) / (counts.sum(-1, keepdim=True) + V * alpha)


def bigram_inferred(tokens: Int[Tensor, "n T"], V: int, alpha: float) -> Float[Tensor, "n T V"]:
    n, T = tokens.shape
    pairs = F.one_hot(tokens[:, :-1] * V + tokens[:, 1:], V * V).double().cumsum(1)  # transitions up to x_{i+1}
    seen = torch.cat([torch.zeros(n, 1, V * V, dtype=torch.float64, device=tokens.device), pairs], 1)  # i < t
    rows = seen.view(n, T, V, V).gather(2, tokens[:, :, None, None].expand(n, T, 1, V)).squeeze(2)
    return (rows + alpha) / (rows.sum(-1, keepdim=True) + V * alpha)


def _posterior(loglik: Float[Tensor, "K n T"]) -> Float[Tensor, "K n T"]:
    return torch.softmax(loglik, 0)  # the uniform prior over S cancels


def retrieved(tokens: Int[Tensor, "n T"], chains: Float[Tensor, "K V V"]) -> tuple[Float[Tensor, "n T V"],
                                                                                   Float[Tensor, "n T V"]]:
    """(uni_ret, bi_ret) of every position."""
    chains = chains.to(tokens.device, torch.float64)
    K, V, _ = chains.shape
    pi = stationary(chains.cpu()).to(tokens.device)
    log_pi, log_P = pi.log(), chains.log()
    uni, bi = [], []
    for chunk in tokens.split(max(1, BUDGET // (K * tokens.shape[1] * V))):
        # unigram: every token an i.i.d. draw from pi_k
        ll_uni = log_pi[:, chunk].cumsum(-1)  # K n T
        uni.append(torch.einsum("knt,kv->ntv", _posterior(ll_uni), pi))
        # bigram: the first state from pi_k, then transitions
        steps = log_P[:, chunk[:, :-1], chunk[:, 1:]]  # K n T-1
        ll_bi = torch.cat([log_pi[:, chunk[:, :1]], steps], -1).cumsum(-1)
        bi.append(torch.einsum("knt,kntv->ntv", _posterior(ll_bi), chains[:, chunk]))
    return torch.cat(uni), torch.cat(bi)


def predictors(tokens: Int[Tensor, "n T"], chains: Float[Tensor, "K V V"], alpha: float) -> Float[Tensor, "4 n T V"]:
    """The four predictors at every position, in the order of NAMES."""
    V = chains.shape[-1]
    uni_ret, bi_ret = retrieved(tokens, chains)
    return torch.stack([uni_ret, unigram_inferred(tokens, V, alpha), bi_ret, bigram_inferred(tokens, V, alpha)])


def kl(p: Float[Tensor, "*batch V"], q: Float[Tensor, "*batch V"]) -> Float[Tensor, "*batch"]:
    """KL(p || q) over the last dim (0 log 0 = 0)."""
    return torch.where(p > 0, p * (p.clamp(min=1e-300).log() - q.log()), 0.0).sum(-1)
