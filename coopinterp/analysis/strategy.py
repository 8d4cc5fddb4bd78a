"""Which algorithm a Markov-task model runs: its distance to the four exact predictors (predictors.py), and the mix
of them that best matches it.

Per evaluation batch of the Markov task (`markov_id`: chains of the training set S; `markov_ood`: fresh chains),
over every position of every sequence (M = the model's next-token distribution):
- `kl` (component = predictor): mean KL(M || predictor).
- `rel_distance` (component = unigram | bigram): (KL(M || retrieved) - KL(M || inferred)) / (KL(M || retrieved) +
  KL(M || inferred)), in [-1, 1]: -1 the model is the retrieving predictor, +1 the inferring one (a normalised form
  of Park et al. 2024's relative distance between the two).
- `mix_weight` (component = predictor): the weights w (non-negative, summing to 1) of the mix sum_a w_a p_a that
  minimises the mean KL(M || mix) (Wurgaft et al. 2025's reading: the model as a weighted mix of a memorising and a
  generalising predictor), found by EM on the mixing weights, which decreases that KL at every iteration.
- `mix_residual_kl`: the mean KL(M || best mix) left over: near 0 when a mix explains the model, large when none does.
"""
from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..tasks.markov import MarkovBatch
from ..token_model import TokenModel
from ..predictors import NAMES, kl, predictors
from ..sources import TokenBatch
from .forwards import LOGITS_BUDGET
from .record import Analysis

NEWTON_STEPS = 100  # at most; a fit takes ~10-30
TOL = 1e-12


def _objective(w: Float[Tensor, " A"], model_probs: Float[Tensor, "n T V"],
               preds: Float[Tensor, "A n T V"]) -> Float[Tensor, ""]:
    """Mean cross-entropy of the mix under the model's distribution (KL(model || mix) up to the model's entropy)."""
    return -(model_probs * torch.einsum("a,antv->ntv", w, preds).log()).sum(-1).mean()


def _newton_step(g: Float[Tensor, " A"], H: Float[Tensor, "A A"], free: Bool[Tensor, " A"]) -> Float[Tensor, " A"]:
    """The Newton step on the free weights that keeps their sum (the KKT system), 0 on the others."""
    F = free.nonzero().squeeze(1)
    k = len(F)
    kkt = torch.zeros(k + 1, k + 1, dtype=g.dtype, device=g.device)
    kkt[:k, :k] = H[F][:, F] + 1e-12 * H.diagonal().mean() * torch.eye(k, dtype=g.dtype, device=g.device)
    kkt[:k, k] = kkt[k, :k] = 1.0
    d = torch.zeros_like(g)
    d[F] = torch.linalg.solve(kkt, torch.cat([-g[F], torch.zeros(1, dtype=g.dtype, device=g.device)]))[:k]
    return d


def fit_mixture(model_probs: Float[Tensor, "n T V"],
                preds: Float[Tensor, "A n T V"]) -> tuple[Float[Tensor, " A"], Float[Tensor, ""]]:
    """Weights on the simplex minimising the mean KL(model || sum_a w_a preds_a), and that KL.

    The objective is convex in w: an active-set Newton method with the exact 4 x 4 Hessian (weights at 0 stay out
    of the step while their gradient says so), backtracking and feasibility-limited steps; quadratic convergence,
    where EM or plain gradient steps crawl when two predictors nearly coincide."""
    A, N = preds.shape[0], model_probs.shape[0] * model_probs.shape[1]
    w = torch.full((A,), 1.0 / A, dtype=preds.dtype, device=preds.device)
    f = _objective(w, model_probs, preds)
    for _ in range(NEWTON_STEPS):
        mix = torch.einsum("a,antv->ntv", w, preds)
        g = -torch.einsum("ntv,antv->a", model_probs / mix, preds) / N
        H = torch.einsum("ntv,antv,bntv->ab", model_probs / mix**2, preds, preds) / N
        free = w > 0
        free = free | (g < g[free].mean())  # a weight at 0 whose gradient pulls it in is freed ...
        while True:
            d = _newton_step(g, H, free)
            stuck = free & (w == 0) & (d < 0)  # ... unless the step would push it out again
            if not stuck.any():
                break
            free = free & ~stuck
        shrinking = d < 0
        t = min(1.0, (w[shrinking] / -d[shrinking]).min().item()) if shrinking.any() else 1.0
        while t > 1e-12:
            new = w + t * d
            new = torch.where(new > 1e-12, new, 0.0)  # a weight the step drives to its bound sits exactly at 0
            new = new / new.sum()
            f_new = _objective(new, model_probs, preds)
            if f_new <= f + 1e-4 * t * (g @ d):
                break
            t /= 2
        else:
            break
        done = (new - w).abs().max() < TOL or f - f_new < TOL * TOL
        w, f = new, f_new
        if done:
            break
    return w, kl(model_probs, torch.einsum("a,antv->ntv", w, preds)).mean()


@torch.no_grad()
def model_probs(model: TokenModel, batch: TokenBatch) -> Float[Tensor, "n T V"]:
    chunks = batch.tokens.split(max(1, LOGITS_BUDGET // (batch.tokens.shape[1] * model.cfg.d_vocab)))
    return torch.cat([model.bridge(c).double().softmax(-1) for c in chunks])


def batch_rows(model: TokenModel, batch: MarkovBatch) -> list[dict]:
    ev = batch.evaluator
    probs = model_probs(model, batch)
    preds = predictors(batch.tokens, batch.chains, batch.alpha).to(probs.device)
    kls = dict(zip(NAMES, kl(probs.expand_as(preds), preds).mean((1, 2)).tolist()))
    out = [{"metric": "kl", "evaluator": ev, "component": a, "value": v} for a, v in kls.items()]
    for family, short in (("unigram", "uni"), ("bigram", "bi")):
        ret, inf = kls[f"{short}_ret"], kls[f"{short}_inf"]
        out.append({"metric": "rel_distance", "evaluator": ev, "component": family, "value": (ret - inf) / (ret + inf)})
    weights, residual = fit_mixture(probs, preds)
    out += [{"metric": "mix_weight", "evaluator": ev, "component": a, "value": w}
            for a, w in zip(NAMES, weights.tolist())]
    out.append({"metric": "mix_residual_kl", "evaluator": ev, "value": residual.item()})
    return out


def rows(model: TokenModel, batches: dict[str, TokenBatch]) -> list[dict]:
    """Rows of every Markov batch (other token sources have no chains to compare with)."""
    return [row for batch in batches.values() if isinstance(batch, MarkovBatch) for row in batch_rows(model, batch)]


def headline(rows: pd.DataFrame) -> str:
    w = rows[rows.metric == "mix_weight"]
    parts = []
    for ev, g in w.groupby("evaluator", sort=False):
        top = g.loc[g.value.idxmax()]
        residual = rows[(rows.metric == "mix_residual_kl") & (rows.evaluator == ev)].value
        parts.append(f"{ev}: {top.component} {top.value:.2f} (residual KL {residual.iloc[0]:.3f})")
    return "  ".join(parts)


ANALYSIS = Analysis("strategy", 1, {"markov": rows}, "Markov task: KL to the four algorithms (unigram/bigram x retrieved/inferred), "
                    "relative distance, best-fitting mix weights and its residual KL", headline=headline)
