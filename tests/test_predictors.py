"""The four Markov predictors against brute-force loops over positions, chains and counts on tiny cases."""
import math

import pytest
import torch

from coopinterp import predictors
from coopinterp.tasks import markov


def brute_force(tokens: list[int], P: torch.Tensor, alpha: float) -> dict[str, list[list[float]]]:
    """Every predictor at every position, written as plain loops over the definitions."""
    K, V, _ = P.shape
    pi = markov.stationary(P).tolist()
    P = P.tolist()
    out = {name: [] for name in predictors.NAMES}
    for t in range(len(tokens)):
        ctx = tokens[: t + 1]
        like_uni = [math.prod(pi[k][x] for x in ctx) for k in range(K)]
        like_bi = [pi[k][ctx[0]] * math.prod(P[k][a][b] for a, b in zip(ctx, ctx[1:])) for k in range(K)]
        out["uni_ret"].append([sum(like_uni[k] * pi[k][v] for k in range(K)) / sum(like_uni) for v in range(V)])
        out["bi_ret"].append([sum(like_bi[k] * P[k][ctx[-1]][v] for k in range(K)) / sum(like_bi)
                              for v in range(V)])
        out["uni_inf"].append([(ctx.count(v) + alpha) / (len(ctx) + V * alpha) for v in range(V)])
        row = [sum(1 for a, b in zip(ctx, ctx[1:]) if a == ctx[-1] and b == v) for v in range(V)]
        out["bi_inf"].append([(row[v] + alpha) / (sum(row) + V * alpha) for v in range(V)])
    return out


@pytest.mark.parametrize("K, V, T, alpha", [(1, 2, 5, 1.0), (3, 3, 7, 0.5), (4, 2, 6, 2.0)])
def test_predictors_match_brute_force(K, V, T, alpha):
    P = markov.dirichlet_chains(K, V, 1.0, K * 100 + V)
    tokens = markov.sample_sequences(P, torch.arange(5) % K, T, torch.Generator().manual_seed(0))
    got = predictors.predictors(tokens, P, alpha)
    for i, seq in enumerate(tokens.tolist()):
        want = brute_force(seq, P, alpha)
        for j, name in enumerate(predictors.NAMES):
            assert torch.allclose(got[j, i], torch.tensor(want[name], dtype=torch.float64), atol=1e-12), name


def test_retrieval_chunks_agree(monkeypatch):
    P = markov.dirichlet_chains(5, 3, 1.0, 1)
    tokens = markov.sample_sequences(P, torch.arange(9) % 5, 8, torch.Generator().manual_seed(2))
    whole = predictors.retrieved(tokens, P)
    monkeypatch.setattr(predictors, "BUDGET", 1)  # one sequence per chunk
    for a, b in zip(whole, predictors.retrieved(tokens, P)):
        assert torch.allclose(a, b, atol=1e-14)


def test_one_chain_retrieves_itself_and_counts_converge():
    P = markov.dirichlet_chains(1, 3, 1.0, 5)
    tokens = markov.sample_sequences(P, torch.zeros(4, dtype=torch.long), 3000, torch.Generator().manual_seed(3))
    uni_ret, uni_inf, bi_ret, bi_inf = predictors.predictors(tokens, P, 1.0)
    assert torch.allclose(bi_ret, P[0][tokens])  # K = 1: the posterior is certain
    assert torch.allclose(uni_ret, markov.stationary(P)[0].expand_as(uni_ret))
    assert (bi_inf[:, -1] - P[0][tokens[:, -1]]).abs().max() < 0.06  # counts approach the true row
    assert (uni_inf[:, -1] - markov.stationary(P)[0]).abs().max() < 0.05


def test_kl_known_values():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert predictors.kl(p, q).item() == pytest.approx(math.log(2))
    assert predictors.kl(q, q).item() == 0.0
