"""Which algorithm a linear-attention model runs on the linreg task, against the plateau theory of Zhang, Singh,
Latham & Saxe 2025 (arXiv 2501.16265, eq. 19).

Principal-component regression with m components (PCR_m) is the in-context estimator the plateaus are made of.
With λ_1 ≥ ... ≥ λ_D the eigenvalues of Λ, u_d its unit eigenvectors and β̂ = (1/N) Σ_{n≤N} y_n x_n = Λ̂ w (Λ̂ the
context's second moment), it predicts

    ŷ_m = Σ_{d≤m} c_d (u_dᵀ β̂)(u_dᵀ x_q),   c_d = 1 / (λ_d (1 + 1/N) + tr Λ / N).

Since E[Λ̂²] = Λ² (1 + 1/N) + Λ tr Λ / N (Gaussian x), each term removes λ_d² c_d from the loss E[(y_q - ŷ)²] = tr Λ
at m = 0, and c_d is the best coefficient of that term, so

    L(m) = tr Λ - Σ_{d≤m} λ_d / (1 + (1 + tr Λ / λ_d) / N),

the paper's eq. 19 in the task's convention (squared error, no factor 1/2). An ATTN_S head of rank one computes one
term exactly (value reading y, key u_d, query c_d u_d); PCR_D is also the best ATTN_M (its converged loss).

Rows, per evaluation batch (`evaluator`) and checkpoint:
- `loss`: the model's mean squared error on the batch (fresh sequences).
- `plateau_loss` (component = m, 0..D): L(m), the theory; `pcr_loss` (component = m): PCR_m's loss on the batch.
- `pcr_distance` (component = m): mean over sequences of (ŷ_model - ŷ_m)²: 0 where the model is PCR_m.
Per head (`layer` 0, `head` h), from the weights, with component = d (1..D, the d-th largest eigenvalue):
- `kq_overlap`: (u_dᵀ A u_d)² / ‖A‖_F², A the x-block of the head's W^KQ (W^Kᵀ W^Q for separate heads): 1 for a head
  whose key-query matrix is u_d u_dᵀ, the shares over d sum to at most 1.
- `key_overlap`, `query_overlap` (separate heads): ‖W u_d‖² / ‖W‖_F² over the x-columns of the head's W^K (W^Q):
  the share of the key's (query's) weight along u_d; they sum to 1 over d.
- `value_weight` (no component): W^V[y, y], the head's value weight that the PCR solution uses.
"""
from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..tasks.linreg import LinearAttention, LinregBatch, LinregTaskConfig, spectrum
from .record import Analysis


def pcr_coefficients(task: LinregTaskConfig) -> Float[Tensor, " D"]:
    """c_d = 1 / (λ_d (1 + 1/N) + tr Λ / N), descending λ."""
    values, _ = spectrum(task)
    N = task.context
    return 1.0 / (values * (1 + 1 / N) + values.sum() / N)


def plateau_losses(task: LinregTaskConfig) -> Float[Tensor, " m"]:
    """L(m) for m = 0..D (the paper's eq. 19): tr Λ - Σ_{d≤m} λ_d / (1 + (1 + tr Λ / λ_d) / N)."""
    values, _ = spectrum(task)
    gains = values / (1 + (1 + values.sum() / values) / task.context)
    return values.sum() - torch.cat([gains.new_zeros(1), gains.cumsum(0)])


def pcr_predictions(task: LinregTaskConfig, seqs: Float[Tensor, "n row col"]) -> Float[Tensor, "n m"]:
    """ŷ_m for m = 0..D on each sequence (float64)."""
    _, vectors = spectrum(task)
    seqs = seqs.double()
    D, N = task.dim, task.context
    beta = torch.einsum("ndc,nc->nd", seqs[:, :D, :N], seqs[:, D, :N]) / N
    terms = pcr_coefficients(task) * (beta @ vectors) * (seqs[:, :D, -1] @ vectors)
    return torch.cat([terms.new_zeros(len(seqs), 1), terms.cumsum(1)], dim=1)


def share(W: Float[Tensor, "... D"], vectors: Float[Tensor, "D D"]) -> Float[Tensor, " D"]:
    """‖W u_d‖² / ‖W‖_F² for each eigenvector u_d (rows of W over the x-coordinates)."""
    along = (W.double() @ vectors).pow(2).reshape(-1, vectors.shape[1]).sum(0)
    return along / along.sum().clamp(min=1e-300)


def head_rows(model: LinearAttention) -> list[dict]:
    _, vectors = spectrum(model.task)
    D = model.task.dim
    out = []
    for h, A in enumerate(model.kq().detach().double()[:, :D, :D]):
        diag = torch.einsum("id,ij,jd->d", vectors, A, vectors)
        parts = {"kq_overlap": diag.pow(2) / A.pow(2).sum().clamp(min=1e-300)}
        if not model.merged:
            parts |= {"key_overlap": share(model.W_K[h, :, :D], vectors),
                      "query_overlap": share(model.W_Q[h, :, :D], vectors)}
        out += [{"metric": metric, "layer": 0, "head": h, "component": str(d + 1), "value": v}
                for metric, values in parts.items() for d, v in enumerate(values.tolist())]
        out.append({"metric": "value_weight", "layer": 0, "head": h, "value": model.W_V[h, D, D].item()})
    return out


@torch.no_grad()
def batch_rows(model: LinearAttention, batch: LinregBatch) -> list[dict]:
    ev, task = batch.evaluator, model.task
    pred = model(batch.seqs).double()
    targets = batch.targets.double()
    pcr = pcr_predictions(task, batch.seqs)
    out = [{"metric": "loss", "evaluator": ev, "value": (pred - targets).pow(2).mean().item()}]
    for metric, values in (("plateau_loss", plateau_losses(task)),
                           ("pcr_loss", (pcr - targets[:, None]).pow(2).mean(0)),
                           ("pcr_distance", (pcr - pred[:, None]).pow(2).mean(0))):
        out += [{"metric": metric, "evaluator": ev, "component": str(m), "value": v}
                for m, v in enumerate(values.tolist())]
    return out


def rows(model: LinearAttention, batches: dict[str, LinregBatch]) -> list[dict]:
    return [row for batch in batches.values() for row in batch_rows(model, batch)] + head_rows(model)


def headline(rows: pd.DataFrame) -> str:
    loss = rows[rows.metric == "loss"].value.iloc[0]
    distance = rows[rows.metric == "pcr_distance"]
    nearest = distance.loc[distance.value.idxmin()]
    plateau = rows[(rows.metric == "plateau_loss") & (rows.component == nearest.component)].value.iloc[0]
    return f"loss {loss:.4f}; nearest PCR_m m={nearest.component} (distance {nearest.value:.2g}, L(m) {plateau:.4f})"


ANALYSIS = Analysis("linreg", 1, {"linreg": rows}, "linreg task: loss against the plateau theory L(m), distance to "
                    "principal-component regression PCR_m for m = 0..D, each head's overlap with Λ's eigenvectors",
                    headline=headline)
