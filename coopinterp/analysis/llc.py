"""The local learning coefficient (LLC) of a checkpoint and the refined LLC of each attention head, by SGLD.

    llc = nbeta * (E_w[L(w)] - L(w*)),  w ~ exp(-nbeta L(w) - localization/2 |w - w*|^2)  near the checkpoint w*

(Lau et al. 2023), estimated from SGLD chains started at w*. The refined LLC of a head (Wang et al. 2024) samples only
that head's W_Q, W_K, W_V and W_O (its rows of q, k, v and its columns of o); every other weight stays at w*. L is
the training loss (cross-entropy at the query) on fresh batches of the training distribution. A token model (a run
from outside): L is the next-token loss on minibatches of the analysis's own sequences (its source), and a head's
weights are found by a backward pass (`head_footprint`), whatever the architecture's layout.

devinterp (optional extra `coopinterp[devinterp]`) is the sampler: its SGMCMC.sgld optimizer makes every update
(gradient, localisation prior, noise, per-head mask). The chain loop around it is ours rather than devinterp's
`sample()`, which needs a next-token loss over every position of a HuggingFace dataset and writes every draw to
zarr, where this task's loss reads the query only and its batches are drawn on the fly. Every chain and every head
sees the same batches, so L(w*) is computed once per batch, and each draw's L(w) - L(w*) is taken on the same batch
(a control variate: same expectation as devinterp's estimator, much less batch noise).

Rows (evaluator "train"): `llc` (whole model: every trainable weight) and `rllc` (per layer/head), each with
`..._std` (std over chains) and `..._chain` (one per chain, component "chain{c}"), plus `init_loss` (L(w*)).
Hyper-parameters: `Options`, defaults calibrated on the shipped demo (analyses/llc_calibration.py).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..errors import ConfigError, CoopError
from ..model import CoopModel
from ..token_model import TokenModel
from ..sources import TokenBatch
from ..task import Batch, sample_train
from .forwards import next_token_loss
from .record import Analysis

B = TypeVar("B")
Restriction = dict[nn.Parameter, Optional[Tensor]]  # sampled weights -> 0/1 mask of the sampled entries (None: all)


@dataclass(frozen=True)
class Options:
    """SGLD settings. nbeta None: devinterp's default, batch_size / log(batch_size)."""

    lr: float = 1e-3  # SGLD step size epsilon
    localization: float = 100.0  # gamma: pull towards the checkpoint
    nbeta: float | None = None  # inverse temperature n*beta
    chains: int = 4
    draws: int = 150  # SGLD steps per chain, after burn-in; the estimate averages over these
    burnin: int = 50  # on the demo, traces are flat after ~30 steps at these settings (docs/llc_calibration.png)
    batch_size: int = 64
    seed: int = 0  # seeds the batches and the chains' noise
    heads: bool = True  # also every head's refined LLC (1 + n_layers * n_heads estimates per checkpoint)

    def __post_init__(self):
        checks = [(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}"),
                  (self.localization >= 0, f"localization must be >= 0, got {self.localization}"),
                  (self.nbeta is None or self.nbeta > 0, f"nbeta must be > 0, got {self.nbeta}"),
                  (self.chains >= 2, f"chains must be >= 2 (their spread is reported), got {self.chains}"),
                  (self.draws >= 1, f"draws must be >= 1, got {self.draws}"),
                  (self.burnin >= 0, f"burnin must be >= 0, got {self.burnin}"),
                  (self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"llc option {message}")

    @property
    def inverse_temperature(self) -> float:
        return self.nbeta if self.nbeta is not None else self.batch_size / math.log(self.batch_size)


def sgld_optimizer():
    """devinterp's SGLD, or a one-line error saying how to install it."""
    try:
        from devinterp.optim import SGMCMC
    except ImportError:
        raise CoopError("the llc analysis needs devinterp: pip install 'coopinterp[devinterp]'") from None
    return SGMCMC.sgld


def head_restriction(model: CoopModel, layer: int, head: int) -> Restriction:
    """One head's W_Q, W_K, W_V (its output rows of q, k, v) and W_O (its input columns of o)."""
    attn = model.bridge.blocks[layer].attn
    rows = slice(head * model.cfg.d_head, (head + 1) * model.cfg.d_head)
    out: Restriction = {}
    for name in ("q", "k", "v", "o"):
        weight = getattr(attn, name).original_component.weight
        mask = torch.zeros_like(weight)
        if name == "o":
            mask[:, rows] = 1.0
        else:
            mask[rows] = 1.0
        out[weight] = mask
    return out


def full_restriction(model: nn.Module | TokenModel) -> Restriction:
    """Every trainable weight (the frozen attention biases excluded)."""
    return {p: None for p in model.parameters() if p.requires_grad}


def trainable(model: CoopModel | TokenModel) -> CoopModel | TokenModel:
    """A copy of a checkpoint's model whose trained weights take gradients again (Run.model freezes them)."""
    model = copy.deepcopy(model)
    for p in model.trained_parameters():
        p.requires_grad_(True)
    return model


def sample_losses(model: nn.Module | TokenModel, loss: Callable[[nn.Module | TokenModel, B], Tensor],
                  batches: Sequence[B], restriction: Restriction, options: Options,
                  reference: Float[Tensor, " steps"] | None = None) -> Float[Tensor, "chains steps"]:
    """L_b(w_t) - L_b(w*) along each SGLD chain (burn-in included), batch b = batches[t] at step t.

    Only the weights in `restriction` move (their masked entries); the model is left at w* afterwards.
    `reference` (L_b(w*) per batch) is computed if not given.
    """
    sgld = sgld_optimizer()
    if reference is None:
        with torch.no_grad():
            reference = torch.stack([loss(model, b).detach() for b in batches])
    start = {p: p.detach().clone() for p in restriction}
    flags = {p: p.requires_grad for p in model.parameters()}

    @torch.no_grad()
    def back_to_start() -> None:
        for p, w in start.items():
            p.copy_(w)

    for p in model.parameters():
        p.requires_grad_(p in restriction)
    traces = torch.empty(options.chains, len(batches), device=reference.device)
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            for chain in range(options.chains):
                back_to_start()
                torch.manual_seed(options.seed * 1_000_003 + chain)  # devinterp's noise draws from torch's global RNG
                groups = [{"params": [p], "mask": None if m is None else [m]} for p, m in restriction.items()]
                opt = sgld(groups, lr=options.lr, localization=options.localization,
                           nbeta=options.inverse_temperature)
                for t, batch in enumerate(batches):
                    value = loss(model, batch)
                    if not torch.isfinite(value):
                        raise CoopError(f"SGLD chain {chain} diverged at step {t} (loss {float(value)}): "
                                        f"lower the llc step size (lr {options.lr}) or raise localization")
                    traces[chain, t] = value.detach()
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
    finally:
        back_to_start()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    return traces - reference


def estimate(excess: Float[Tensor, "chains steps"], options: Options) -> Float[Tensor, " chains"]:
    """Each chain's LLC: nbeta times its mean excess loss over the draws (burn-in left out)."""
    return options.inverse_temperature * excess[:, options.burnin:].mean(1)


def train_loss(model: CoopModel, batch: Batch) -> Float[Tensor, ""]:
    """The training objective: cross-entropy at the query over all labels."""
    return F.cross_entropy(model.fast_logits(batch.exemplars, batch.labels), batch.target)


def token_loss(model: TokenModel, batch: TokenBatch) -> Float[Tensor, ""]:
    """A token model's objective: the mean next-token loss of the batch (from `batch.first` on)."""
    return next_token_loss(model.bridge(batch.tokens), batch.tokens, batch.first).mean()


def sampling_batches(model: CoopModel, options: Options) -> list[Batch]:
    """burnin + draws fresh batches of the training distribution, a pure function of `options.seed`."""
    device = model.pos_embedding.device
    gen = torch.Generator(device=device).manual_seed(options.seed)
    return [sample_train(model.task, options.batch_size, gen) for _ in range(options.burnin + options.draws)]


def token_sampling_batches(data: TokenBatch, options: Options) -> list[TokenBatch]:
    """burnin + draws minibatches of the analysis data's sequences, drawn with replacement from `options.seed`."""
    gen = torch.Generator().manual_seed(options.seed)
    n = len(data.tokens)
    return [dataclasses.replace(data, tokens=data.tokens[torch.randint(n, (options.batch_size,), generator=gen)])
            for _ in range(options.burnin + options.draws)]


@torch.enable_grad()
def head_footprint(model: TokenModel, data: TokenBatch, layer: int, head: int) -> Restriction:
    """One head's weights in any architecture: the entries of its layer's attention weight matrices that its
    output depends on (its W_Q, W_K, W_V rows, shared k/v rows under grouped-query attention, its W_O columns).

    Found by one backward pass rather than by each architecture's layout (fused c_attn, query_key_value, separate
    projections): the other heads' `hook_z` is zeroed, so a random projection of the layer's attention output has a
    gradient exactly on this head's weights (a test checks the slices on GPT-2, GPT-NeoX and Llama). The pass runs
    with the layer's weights redrawn at random (then restored), so that a head whose weights are zero still shows
    where they are.
    """
    weights = [p for p in model.bridge.blocks[layer].attn.parameters() if p.ndim >= 2]
    flags = {p: p.requires_grad for p in weights}
    saved = [p.detach().clone() for p in weights]
    gen = torch.Generator().manual_seed(0)
    keep = torch.zeros(model.cfg.n_heads)
    keep[head] = 1.0
    store = {}

    def only_head(z: Tensor, hook) -> Tensor:
        return z * keep.to(z)[:, None]

    def record(out: Tensor, hook) -> None:
        store["out"] = out

    try:
        with torch.no_grad():
            for p in weights:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
        for p in weights:
            p.requires_grad_(True)
            p.grad = None
        model.bridge.run_with_hooks(data.tokens[:4], fwd_hooks=[(get_act_name("z", layer), only_head),
                                                                (get_act_name("attn_out", layer), record)])
        probe = torch.randn(store["out"].shape, generator=gen).to(store["out"])
        (store["out"] * probe).sum().backward()
        return {p: (p.grad != 0).to(p.dtype) for p in weights if p.grad is not None and p.grad.any()}
    finally:
        with torch.no_grad():
            for p, value in zip(weights, saved):
                p.copy_(value)
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


def restrictions(model: CoopModel | TokenModel, options: Options,
                 data: TokenBatch | None = None) -> dict[tuple[int, int] | None, Restriction]:
    """None -> the whole model; (layer, head) -> that head (when options.heads)."""
    out: dict[tuple[int, int] | None, Restriction] = {None: full_restriction(model)}
    if options.heads:
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                out[layer, head] = head_restriction(model, layer, head) if data is None else \
                    head_footprint(model, data, layer, head)
    return out


def traces(model: CoopModel | TokenModel, options: Options,
           data: TokenBatch | None = None) -> tuple[Float[Tensor, " steps"], dict[tuple[int, int] | None, Tensor]]:
    """L(w*) on each sampling batch, and every restriction's excess-loss traces (chains x steps) at one checkpoint
    (a token model's batches come from `data`, the analysis's own sequences)."""
    model = trainable(model)
    batches = sampling_batches(model, options) if data is None else token_sampling_batches(data, options)
    loss = train_loss if data is None else token_loss
    with torch.no_grad():
        reference = torch.stack([loss(model, b) for b in batches])
    return reference, {key: sample_losses(model, loss, batches, r, options, reference)
                       for key, r in restrictions(model, options, data).items()}


def rows(model: CoopModel, batches: dict[str, Batch], options: Options | None = None) -> list[dict]:
    """The whole model's LLC and each head's refined LLC at one checkpoint; `batches` unused: SGLD draws its own
    batches of the training distribution."""
    return estimate_rows(model, options or Options(), None, "train")


def token_rows(model: TokenModel, batches: dict[str, TokenBatch], options: Options | None = None) -> list[dict]:
    """The whole model's LLC and each head's refined LLC at one checkpoint, on minibatches of the first source's
    sequences (the rows' evaluator)."""
    source = next(iter(batches))
    return estimate_rows(model, options or Options(), batches[source], source)


def estimate_rows(model: CoopModel | TokenModel, options: Options, data: TokenBatch | None,
                  evaluator: str) -> list[dict]:
    reference, excess_by_key = traces(model, options, data)
    out = [{"evaluator": evaluator, "metric": "init_loss", "value": float(reference.mean())}]
    for key, excess in excess_by_key.items():
        per_chain = estimate(excess, options)
        metric, where = ("llc", {}) if key is None else ("rllc", {"layer": key[0], "head": key[1]})
        base = {"evaluator": evaluator, **where}
        out += [{**base, "metric": metric, "value": float(per_chain.mean())},
                {**base, "metric": f"{metric}_std", "value": float(per_chain.std())}]
        out += [{**base, "metric": f"{metric}_chain", "component": f"chain{c}", "value": float(v)}
                for c, v in enumerate(per_chain)]
    return out


def headline(rows: pd.DataFrame) -> str:
    whole = rows[rows.metric.isin(["llc", "llc_std"])].set_index("metric").value
    heads = rows[rows.metric == "rllc"]
    top = heads.loc[heads.value.idxmax()] if len(heads) else None
    return f"LLC {whole['llc']:.1f} ± {whole['llc_std']:.1f}" + (
        "" if top is None else f"; top rLLC {top.value:.2f} ({top.layer}.{top['head']})")


ANALYSIS = Analysis("llc", 1, {"exemplar": rows, "tokens": token_rows}, "learning coefficient of the model and refined LLC of every head (SGLD, "
                    "needs coopinterp[devinterp])", options=Options, opt_in=True, own_data=("exemplar",),
                    headline=headline)
