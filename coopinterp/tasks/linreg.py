"""In-context linear regression with linear attention (Zhang, Singh, Latham & Saxe, ICML 2025, arXiv 2501.16265).

A sequence is the (D+1) x (N+1) matrix X = [[x_1 ... x_N, x_q], [y_1 ... y_N, 0]] with x ~ N(0, Λ), a task vector
w ~ N(0, I_D) drawn per sequence and y = wᵀx (no noise); the model reads its prediction of y_q = wᵀx_q at the
query's y slot and is scored by the squared error (the mean of (y_q - ŷ_q)², no factor 1/2: the paper's plateau
formula, analysis/linreg.py's `plateau_losses`, uses the same convention). Λ = Q diag(1, ..., D) Qᵀ / tr, Q a random rotation fixed by the
task seed (so tr Λ = 1); `spectrum="white"` makes it I / D instead (the reference code's --white_cov, the case of the
paper's ATTN_M time course). Training is the paper's: full-batch gradient descent on P = `train.batch_size` fixed
sequences drawn from the training seed (`online`: P fresh sequences every step instead).

The model (`LinearAttention`) is multi-head linear self-attention without softmax,

    ATTN(X) = X + Σ_h W^V_h X Xᵀ W^KQ_h X / N,

with W^KQ_h a (D+1) x (D+1) matrix of its own (ATTN_M, `attention="merged"`) or W^K_hᵀ W^Q_h with key and query of
rank R (ATTN_S, `"separate"`). The prediction is ATTN(X) at the query's y slot, so only the query column is computed:
each head writes W^V_h (X Xᵀ / N) W^KQ_h x̃_q (x̃_q the query column, its y slot 0) through the transformer-lens
HookPoint `hook_result` [batch, head, row], where a head can be read or ablated. docs/linreg.md has the settings.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..config import ModelConfig, RunConfig, TrainConfig, check
from ..errors import ConfigError
from ..learner import EVAL_SEED, Results, SeedModels
from ..model import check_weights_match

ATTENTIONS = ("merged", "separate")
SPECTRA = ("paper", "white")  # Λ's eigenvalues: ∝ D, D-1, ..., 1 (the paper's figures), or all equal (Λ = I / D)


@dataclass(frozen=True)
class LinregTaskConfig:
    """The linreg task's config section: the data (D, N, Λ's seed) and the model (docs/linreg.md). The shared
    `model` section does not apply and must stay at its defaults; P is `train.batch_size`."""

    dim: int = 4  # D: dimension of x
    context: int = 31  # N: (x, y) pairs before the query
    attention: str = "separate"  # "merged" (ATTN_M) or "separate" (ATTN_S)
    heads: int = 5  # H
    rank: int | None = 1  # R: rank of each head's key and query (separate only; None for merged)
    init_scale: float = 0.01  # merged: every weight ~ N(0, init²); separate: N(0, init² / entries of its matrix)
    online: bool = False  # P fresh sequences every step instead of one fixed set of P
    seed: int = 0  # seeds Λ's rotation
    spectrum: str = "paper"  # Λ's eigenvalues: "paper" ∝ D..1, or "white" (Λ = I / D); both with tr Λ = 1
    kind: str = "linreg"  # the task section's tag (coopinterp.tasks)

    @property
    def seq_len(self) -> int:
        return self.context + 1

    def validate(self) -> None:
        check(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        check(self.context >= 1, f"context must be >= 1, got {self.context}")
        check(self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        check(self.spectrum in SPECTRA, f"spectrum must be one of {SPECTRA}, got {self.spectrum!r}")
        check(self.heads >= 1, f"heads must be >= 1, got {self.heads}")
        check(self.init_scale > 0 and math.isfinite(self.init_scale), f"init_scale must be > 0, got {self.init_scale}")
        if self.attention == "merged":
            check(self.rank is None, "rank applies to attention 'separate' only; set it to null for 'merged'")
        else:
            check(self.rank is not None and self.rank >= 1, f"attention 'separate' needs rank >= 1, got {self.rank}")
            check(self.rank * self.heads >= self.dim,
                  f"rank * heads must be >= dim to learn every component, got {self.rank}*{self.heads} < {self.dim}")


EVALUATORS = ("linreg",)  # fresh sequences; the learner also logs "linreg_train", its fixed training set


@functools.lru_cache(maxsize=8)
def _rotation(dim: int, seed: int) -> Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return torch.from_numpy(q * np.sign(np.diag(r)))  # Haar-distributed


def spectrum(task: LinregTaskConfig) -> tuple[Float[Tensor, " D"], Float[Tensor, "D D"]]:
    """Λ's eigenvalues in descending order (λ_d = (D + 1 - d) / tr, d = 1..D; all 1 / D for spectrum "white") and
    its unit eigenvectors as columns in the same order, float64 (for "white", the same rotation's columns: any basis
    is one)."""
    D = task.dim
    if task.spectrum == "white":
        values = torch.full((D,), 1.0 / D, dtype=torch.float64)
    else:
        values = torch.arange(D, 0, -1, dtype=torch.float64) / (D * (D + 1) / 2)
    return values, _rotation(D, task.seed).flip(1).clone()


def covariance(task: LinregTaskConfig) -> Float[Tensor, "D D"]:
    """Λ = U diag(λ) Uᵀ (trace 1)."""
    values, vectors = spectrum(task)
    return vectors @ torch.diag(values) @ vectors.T


@dataclass(frozen=True)
class LinregBatch:
    """Sequences (query's y slot zeroed) and their targets y_q."""

    seqs: Float[Tensor, "n row col"]  # row: D x-coordinates then y; col: N context pairs then the query
    targets: Float[Tensor, " n"]
    evaluator: str

    def to(self, device: str) -> "LinregBatch":
        return LinregBatch(self.seqs.to(device), self.targets.to(device), self.evaluator)

    def __len__(self) -> int:
        return len(self.targets)


def sample(task: LinregTaskConfig, n: int, generator: torch.Generator, evaluator: str = "linreg") -> LinregBatch:
    """n sequences: x ~ N(0, Λ) per column, w ~ N(0, I) per sequence, y = wᵀx, the query's y set to 0."""
    device = generator.device
    values, vectors = spectrum(task)
    root = (vectors * values.sqrt()).float().to(device)  # Λ = root rootᵀ
    z = torch.randn(n, task.dim, task.seq_len, generator=generator, device=device)
    w = torch.randn(n, task.dim, generator=generator, device=device)
    x = root @ z
    y = torch.einsum("nd,ndc->nc", w, x)
    seqs = torch.cat([x, y[:, None]], dim=1)
    seqs[:, -1, -1] = 0.0
    return LinregBatch(seqs, y[:, -1].clone(), evaluator)


def eval_batches(task: LinregTaskConfig, n: int, seed: int, device: str = "cpu") -> dict[str, LinregBatch]:
    return {"linreg": sample(task, n, torch.Generator().manual_seed(seed)).to(device)}


def moments(seqs: Float[Tensor, "n row col"]) -> Float[Tensor, "n row row"]:
    """X Xᵀ / N over every column (the query's too), N the number of context columns."""
    return torch.einsum("nic,njc->nij", seqs, seqs) / (seqs.shape[-1] - 1)


class LinearAttention(HookedRootModule):
    """ATTN_M or ATTN_S of a linreg task section (`attention`, `heads`, `rank`, `init_scale`, `dim`; module
    docstring)."""

    model_kinds = ("linreg", "outputs")  # the linreg analysis, then the model-agnostic output analyses

    def __init__(self, task: LinregTaskConfig, seed: int = 0):
        super().__init__()
        self.task = task
        H, E = task.heads, task.dim + 1
        self.W_V = nn.Parameter(torch.empty(H, E, E))
        if task.attention == "merged":
            self.W_KQ = nn.Parameter(torch.empty(H, E, E))
        else:
            self.W_K = nn.Parameter(torch.empty(H, task.rank, E))
            self.W_Q = nn.Parameter(torch.empty(H, task.rank, E))
        self.hook_result = HookPoint()  # [batch, head, row]: each head's write to the query column
        self.setup()
        self.reset_parameters(seed)

    @property
    def merged(self) -> bool:
        return self.task.attention == "merged"

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """The reference code's initialisation: merged, every weight ~ N(0, init²); separate, N(0, init² / n) with n
        the entries of that matrix over all heads. Zeroed as there: the value's x -> y weights, and the y input of
        the key (separate) or of W^KQ's y row (merged), terms that only add noise to the prediction."""
        g = torch.Generator().manual_seed(seed)
        D, s = self.task.dim, self.task.init_scale
        for p in self.parameters():
            p.normal_(0.0, s if self.merged else s / p.numel() ** 0.5, generator=g)
        self.W_V[:, D, :D] = 0.0
        if self.merged:
            self.W_KQ[:, D, :D] = 0.0
        else:
            self.W_K[:, :, D] = 0.0

    def kq(self) -> Float[Tensor, "head row row"]:
        """Each head's merged key-query matrix W^KQ_h (W^K_hᵀ W^Q_h for separate heads)."""
        return self.W_KQ if self.merged else torch.einsum("hri,hrj->hij", self.W_K, self.W_Q)

    def predict(self, C: Float[Tensor, "n row row"], query: Float[Tensor, "n row"]) -> Float[Tensor, " n"]:
        """ŷ_q from the moments X Xᵀ / N and the query column."""
        if self.merged:
            kq_query = torch.einsum("hij,nj->nhi", self.W_KQ, query)
        else:
            kq_query = torch.einsum("hri,nhr->nhi", self.W_K, torch.einsum("hrj,nj->nhr", self.W_Q, query))
        context = torch.einsum("nij,nhj->nhi", C, kq_query)
        result = self.hook_result(torch.einsum("hoi,nhi->nho", self.W_V, context))
        return query[:, -1] + result[..., -1].sum(-1)

    def fast_predict(self, C: Float[Tensor, "n row row"], query: Float[Tensor, "n row"]) -> Float[Tensor, " n"]:
        """`predict` without the hook (training and logging): ŷ_q = Σ_ijk C_ij T_ijk x̃_q,k with the heads summed
        into T_ijk = Σ_h W^V_h[y, i] W^KQ_h[j, k], one matmul over the batch instead of one per head."""
        T = torch.einsum("hi,hjk->ijk", self.W_V[:, -1], self.kq())
        return query[:, -1] + ((C.flatten(1) @ T.flatten(0, 1)) * query).sum(-1)

    def forward(self, seqs: Float[Tensor, "n row col"]) -> Float[Tensor, " n"]:
        return self.predict(moments(seqs), seqs[..., -1])

    @torch.no_grad()
    def outputs(self, batches: dict) -> Float[Tensor, "n k"]:
        """The predictions on each evaluation batch, one column per batch (the `outputs` kind of model)."""
        return torch.stack([self(b.seqs) for b in batches.values()], dim=1)

    def weights(self) -> dict[str, Tensor]:
        """W_V and W_KQ (merged) or W_K, W_Q (separate), each [head, ...]: the checkpoint format."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    @torch.no_grad()
    def load_weights(self, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
        own = self.weights()
        check_weights_match(own, weights, source)
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=True)


def squared_error(pred: Float[Tensor, " n"], targets: Float[Tensor, " n"]) -> Float[Tensor, ""]:
    """The task's loss: mean (ŷ_q - y_q)², no factor 1/2."""
    return (pred - targets).pow(2).mean()


def check_model_section(config: RunConfig) -> None:
    check(config.model == ModelConfig(), "the linreg task's model is set by its task section (attention, heads, "
          "rank, init_scale); leave the `model` section at its defaults")


class LinregSeeds(SeedModels):
    """Linear-attention models of one config, one per seed, each trained by plain gradient descent (torch SGD
    without momentum) on its own fixed training set, or on its own stream of fresh sequences (`online`)."""

    def __init__(self, config: RunConfig, seeds: list[int], device: str):
        check_model_section(config)
        if config.train.forgetting != "none":
            raise ConfigError("forgetting resets the exemplar task's embeddings; the linreg task has none")
        self.config, self.seeds, self.device = config, seeds, device
        self.models = [LinearAttention(config.task, seed=s).to(device) for s in seeds]
        self.opts = [torch.optim.SGD(m.parameters(), lr=config.train.lr) for m in self.models]
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.train_sets = [] if config.task.online else [self._fixed(g) for g in self.gens]

    def _fixed(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """The fixed training set as what the forward reads: moments X Xᵀ / N, queries, targets."""
        batch = sample(self.config.task, self.config.train.batch_size, gen, "linreg_train")
        return moments(batch.seqs), batch.seqs[..., -1].clone(), batch.targets

    def _train_data(self, j: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.train_sets:
            return self.train_sets[j]
        batch = sample(self.config.task, self.config.train.batch_size, self.gens[j])
        return moments(batch.seqs), batch.seqs[..., -1], batch.targets

    @torch.no_grad()
    def evaluate(self, batches: dict[str, LinregBatch]) -> list[Results]:
        out = []
        for j, model in enumerate(self.models):
            results = {ev: {"loss": squared_error(model.fast_predict(moments(b.seqs), b.seqs[..., -1]), b.targets).item()}
                       for ev, b in batches.items()}
            if self.train_sets:
                C, query, targets = self.train_sets[j]
                results["linreg_train"] = {"loss": squared_error(model.fast_predict(C, query), targets).item()}
            out.append(results)
        return out

    def forget(self, step: int) -> None:
        raise ConfigError("the linreg task has no forgetting intervention")

    def train_step(self, step: int | None = None) -> None:
        for j, (model, opt) in enumerate(zip(self.models, self.opts)):
            C, query, targets = self._train_data(j)
            loss = squared_error(model.fast_predict(C, query), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _preset(name: str, task: LinregTaskConfig, **train) -> RunConfig:
    return RunConfig(task=task, train=TrainConfig(**train), name=name)


# The reference code (yedizhang/linattn-icl) leaves out the paper's 1/N; with it, its settings (lr η, init σ) give
# the same trajectory at lr η N^(2/k), init σ N^(1/k) for a product of k weight matrices (k = 2 merged, 3 separate;
# docs/linreg.md). The presets convert the repo's settings so, at N = 31.
N_PAPER = 31
SEPARATE_LR, SEPARATE_INIT = N_PAPER ** (2 / 3), N_PAPER ** (1 / 3)
PRESETS: dict[str, RunConfig] = {
    # ATTN_M, repo: --model attnM --head 8 --init 1e-6 (lr 1e-3, P 5,000, 6,001 epochs): one abrupt drop.
    "linreg-merged": _preset("linreg-merged", LinregTaskConfig(attention="merged", heads=8, rank=None,
                                                               init_scale=1e-6 * N_PAPER ** 0.5),
                             steps=6_000, batch_size=5_000, lr=1e-3 * N_PAPER, n_checkpoints=48, eval_every=20,
                             eval_n=4_096),
    # The same with Λ = I / D (repo: --white_cov), the case of the paper's ATTN_M time course (eq. 10): one drop,
    # from tr Λ = 1 to (D + 1) / (N + D + 1), at the step docs/linreg.md derives.
    "linreg-merged-white": _preset("linreg-merged-white",
                                   LinregTaskConfig(attention="merged", heads=8, rank=None, spectrum="white",
                                                    init_scale=1e-6 * N_PAPER ** 0.5),
                                   steps=6_000, batch_size=5_000, lr=1e-3 * N_PAPER, n_checkpoints=48,
                                   eval_every=20, eval_n=4_096),
    # ATTN_S rank 1, repo: --model attnS --head 5 --lr 0.02 (init 0.01, 10,001 epochs, P 5,000; P 80,000 as the
    # rank sweep): one drop per principal component, in order; the fourth (λ 0.1) comes at ~37,000 steps.
    "linreg-separate": _preset("linreg-separate", LinregTaskConfig(heads=5, rank=1, init_scale=0.01 * SEPARATE_INIT),
                               steps=50_000, batch_size=80_000, lr=0.02 * SEPARATE_LR, n_checkpoints=100,
                               eval_every=100, eval_n=4_096),
    # The rank sweep, repo: --head 9 --in_dim 8 --init 5e-3 --lr 0.02 (P 80,000, 20,001 epochs). For a CPU: P 10,000
    # and ten times the init (at 5e-3, rank 8 is still on its first plateau at step 17,700; docs/linreg.md).
    **{f"linreg-rank{r}": _preset(f"linreg-rank{r}", LinregTaskConfig(dim=8, heads=9, rank=r,
                                                                      init_scale=0.05 * SEPARATE_INIT),
                                  steps=30_000, batch_size=10_000, lr=0.02 * SEPARATE_LR, n_checkpoints=60,
                                  eval_every=50, eval_n=4_096)
       for r in (8, 4, 2, 1)},
    # Seconds, for tests: D 2, N 7, two rank-1 heads.
    "linreg-tiny": _preset("linreg-tiny", LinregTaskConfig(dim=2, context=7, heads=2, rank=1, init_scale=0.3),
                           steps=40, batch_size=256, lr=0.5, n_checkpoints=4, eval_every=10, eval_n=256),
}


class LinregTask:
    """The registry's view of the linreg task (tasks.Task): its own fresh sequences (`--source linreg`)."""

    kind = "linreg"
    section = LinregTaskConfig
    evaluators = EVALUATORS
    model_kinds = LinearAttention.model_kinds
    presets = PRESETS

    def build_model(self, config: RunConfig) -> LinearAttention:
        check_model_section(config)
        return LinearAttention(config.task, seed=config.train.seed)

    def batches(self, section: LinregTaskConfig, source: str | None, n: int, seed: int,
                device: str) -> dict[str, LinregBatch]:
        self.source_key(source)
        return eval_batches(section, n, seed, device)

    def source_key(self, source: str | None) -> str | None:
        check(source in (None, "linreg"), f"the linreg task reads only its own sequences (source 'linreg'), "
              f"not {source!r}")
        return None

    def learner(self, config: RunConfig, seeds: list[int] | None, device: str) -> LinregSeeds:
        return LinregSeeds(config, [config.train.seed] if seeds is None else seeds, device)

    def training_batches(self, config: RunConfig, device: str) -> dict[str, LinregBatch]:
        return eval_batches(config.task, config.train.eval_n, EVAL_SEED, device)

    def progress(self, results: list[Results]) -> str:
        return "  ".join(f"{ev} loss {sum(r[ev]['loss'] for r in results) / len(results):.4f}" for ev in results[0])


TASK = LinregTask()
