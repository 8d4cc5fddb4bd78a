"""The batched intervention engine that every intervention (ablation, path patching, clamping, the paper's checks)
runs on, and the vocabulary they share: heads, ablation modes, direct-path options.

The engine is the model's attention-only forward written in plain torch over the bridge's own weights, with a
leading `sets` dim: each set is one intervention, and all sets of a call share one pass. A TL hook edits one
forward at a time, so the hooked way needs a forward per head (and the bridge unembeds every position, 12,800
labels each). Hooked references beside each intervention state the semantics in TL terms; tests keep the engine
equal to them.

Ablating a head replaces its output (`hook_z`, hence `hook_result`) at every position with:
  zero      0;
  mean      its mean over the batch, per position;
  resample  its value on another sequence of the same batch (a fixed derangement: no sequence keeps its own).
Replacement values always come from the clean run, so ablating heads of both layers together means what the
hooked reference means.

The direct path is the query's own embedding (`blocks.0.hook_resid_pre` at the query) reaching the final
LayerNorm without passing through attention. `direct_path="cut"` removes it from the unembedding's input (only
attention outputs answer), `"only"` keeps it alone (what the query's embedding answers by itself: pure
memorisation), `"keep"` leaves the model as it is.
"""
from __future__ import annotations

import functools
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import ConfigError
from ..model import CoopModel
from ..task import Batch

Head = tuple[int, int]  # (layer, head), 0-indexed


@runtime_checkable
class HeadGrid(Protocol):
    """Any model config that says how many layers and heads it has (ModelConfig, a bridge's cfg)."""

    n_layers: int
    n_heads: int
MODES = ("zero", "mean", "resample")
DIRECT_PATHS = ("keep", "cut", "only")
METRICS = ("acc", "logit_diff", "loss")  # what `Engine.score` computes (see there)
# Leading `...` dims are intervention sets; they broadcast between tensors (a clean k beside patched qs), so they
# are not tied across arguments.
Z = Float[Tensor, "... n pos head d_head"]
Pattern = Float[Tensor, "... n head q_pos k_pos"]
Zs = list[Float[Tensor, "... n _pos head d_head"]]  # one Z per layer; the last layer's holds the query row only
EditZ = Callable[[int, Z], Z]
EditPattern = Callable[[int, Pattern], Pattern]
ROW_BLOCK = 1 << 19  # logits per fp32 unembedding block in `exact_rows` (2 MB: stays in cache)...
MIN_ROWS = 40  # ...but at least this many rows, or a 50k vocabulary re-reads W_U every 10 rows (2.2x slower)
SCREEN_ROWS = 128  # rows per bf16 block in `screened_top` (the bf16 matmul is ~4x fp32's from 128 rows, not at 40)
BF16_U = 2.0 ** -8  # bfloat16's unit roundoff (8 significant bits)


def parse_heads(spec: str, cfg: HeadGrid) -> list[Head]:
    """'0.3,1.5' -> [(0, 3), (1, 5)]; a malformed or out-of-range head is a ConfigError."""
    heads: list[Head] = []
    for item in spec.split(","):
        parts = item.strip().split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"bad head {item.strip()!r} in {spec!r}: write heads as LAYER.HEAD, e.g. 0.3,1.5")
        heads.append(check_head((int(parts[0]), int(parts[1])), cfg))
    return list(dict.fromkeys(heads))


def check_head(head: Head, cfg: HeadGrid) -> Head:
    layer, h = head
    if not (0 <= layer < cfg.n_layers and 0 <= h < cfg.n_heads):
        raise ConfigError(f"no head {layer}.{h}: the model has layers 0-{cfg.n_layers - 1} "
                          f"and heads 0-{cfg.n_heads - 1}")
    return layer, h


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown ablation mode {mode!r}; choose from {', '.join(MODES)}")
    return mode


def check_direct_path(direct_path: str) -> str:
    if direct_path not in DIRECT_PATHS:
        raise ConfigError(f"unknown direct_path {direct_path!r}; choose from {', '.join(DIRECT_PATHS)}")
    return direct_path


def with_direct_path(final: Float[Tensor, "... n d_model"], resid_query: Float[Tensor, "n d_model"],
                     direct_path: str) -> Float[Tensor, "... n d_model"]:
    """The final stream at the query with the direct path kept, cut or kept alone (module docstring)."""
    if check_direct_path(direct_path) == "cut":
        return final - resid_query
    if direct_path == "only":
        return resid_query.expand_as(final)
    return final


def derangement(n: int, seed: int = 0) -> Tensor:
    """A fixed permutation with no fixed point (for n >= 2): each sequence takes the next one's on a random cycle."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


def replacement(z: Float[Tensor, "n pos head d_head"], mode: str, seed: int = 0) -> Float[Tensor, "n pos head d_head"]:
    """What an ablated head's clean output is replaced with (module docstring)."""
    check_mode(mode)
    if mode == "zero":
        return torch.zeros_like(z)
    if mode == "mean":
        return z.mean(0, keepdim=True).expand_as(z)
    return z[derangement(z.shape[0], seed).to(z.device)]


class Engine:
    """The model's forward over a leading `sets` dim, with edit points on head outputs and attention patterns.

    Hand-written (like `CoopModel.fast_logits`) because TL hooks cannot batch different edits into one pass.
    The last layer computes only the query row: nothing else reaches the logits.
    """

    def __init__(self, model: CoopModel):
        b = model.bridge
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        # The bridge's own nn.Linear weights ([out, in], heads side by side: one fused F.linear per projection),
        # read directly rather than through TL's W_Q... views, which refuse tensors without values (meta).
        linear = {c: [getattr(blk.attn, c).original_component for blk in b.blocks] for c in "qkvo"}
        stack = lambda c, name: torch.stack([getattr(lin, name) for lin in linear[c]]).detach()  # noqa: E731
        self.W_in = {c: stack(c, "weight") for c in "qkv"}  # [layer, head*d_head, d_model]
        self.b_in = {c: stack(c, "bias") for c in "qkv"}
        self.W_out, self.b_out = stack("o", "weight"), stack("o", "bias")  # [layer, d_model, head*d_head]
        self.W_O = self.W_out.transpose(1, 2).unflatten(1, (self.n_heads, -1))  # TL's [layer, head, d_head, d_model]
        unembed = b.unembed.original_component
        self.W_U, self.b_U = unembed.weight.detach().T, unembed.bias.detach()  # TL's [d_model, labels]
        self.ln1 = [blk.ln1.original_component for blk in b.blocks]
        self.ln_final = b.ln_final.original_component
        self.scale = model.cfg.d_head ** -0.5

    @staticmethod
    def norm(ln: torch.nn.LayerNorm, x: Float[Tensor, "*any d_model"]) -> Float[Tensor, "*any d_model"]:
        return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)

    def project(self, layer: int, c: str, x: Float[Tensor, "... n pos d_model"]) -> Z:
        """The `hook_{c}` value (c in q, k, v) of every head from the normalised stream."""
        return F.linear(x, self.W_in[c][layer], self.b_in[c][layer]).unflatten(-1, (self.n_heads, -1))

    def attend(self, q: Float[Tensor, "... n q_pos head d_head"], k: Float[Tensor, "... n k_pos head d_head"],
               v: Float[Tensor, "... n k_pos head d_head"], layer: int,
               edit_pattern: EditPattern | None = None) -> Float[Tensor, "... n q_pos head d_head"]:
        """Softmax attention of every head (causal unless q is the query row alone); returns `hook_z`.

        Products summed over broadcast dims rather than matmuls: with 5 positions and d_head 8, batched matmuls of
        such small matrices cost more in per-matrix overhead than in arithmetic (1.7x slower, measured).
        """
        scores = (q.unsqueeze(-3) * k.unsqueeze(-4)).sum(-1).movedim(-1, -3) * self.scale  # ... n head q_pos k_pos
        if q.shape[-3] > 1:
            T = q.shape[-3]
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        pattern = (scores - scores.amax(-1, keepdim=True)).exp()  # softmax by hand: torch's is ~3x slower
        pattern = pattern / pattern.sum(-1, keepdim=True)  # on rows this short (measured)
        if edit_pattern is not None:
            pattern = edit_pattern(layer, pattern)
        return (pattern.movedim(-3, -1).unsqueeze(-1) * v.unsqueeze(-4)).sum(-3)

    def result(self, layer: int, z: Z) -> Float[Tensor, "... n pos head d_model"]:
        """Each head's write into the residual stream (`hook_result`), without the output bias."""
        return torch.einsum("...the,hed->...thd", z, self.W_O[layer])

    def out(self, layer: int, z: Z) -> Float[Tensor, "... n pos d_model"]:
        return F.linear(z.flatten(-2), self.W_out[layer], self.b_out[layer])

    def block(self, layer: int, h: Float[Tensor, "... n pos d_model"], edit_z: EditZ | None = None,
              edit_pattern: EditPattern | None = None) -> tuple[Float[Tensor, "... n out_pos d_model"],
                                                                Float[Tensor, "... n out_pos head d_head"]]:
        """One attention block; returns the stream after it (the query row alone after the last) and `hook_z`."""
        last = layer == self.n_layers - 1
        x = self.norm(self.ln1[layer], h)
        q = self.project(layer, "q", x[..., -1:, :] if last else x)
        z = self.attend(q, self.project(layer, "k", x), self.project(layer, "v", x), layer, edit_pattern)
        if edit_z is not None:
            z = edit_z(layer, z)
        return (h[..., -1:, :] if last else h) + self.out(layer, z), z

    def forward(self, resid: Float[Tensor, "n pos d_model"], edit_z: EditZ | None = None,
                edit_pattern: EditPattern | None = None,
                direct_path: str = "keep") -> tuple[Float[Tensor, "... n d_model"], Zs]:
        """Final-LayerNorm output at the query (the unembedding's input) and every layer's `hook_z`."""
        h, zs = resid, []
        for layer in range(self.n_layers):
            h, z = self.block(layer, h, edit_z, edit_pattern)
            zs.append(z)
        return self.norm(self.ln_final, with_direct_path(h[..., -1, :], resid[:, -1], direct_path)), zs

    def logits(self, hidden: Float[Tensor, "... n d_model"]) -> Float[Tensor, "... n labels"]:
        return hidden @ self.W_U + self.b_U

    def context_logits(self, hidden: Float[Tensor, "... n d_model"], batch: Batch) -> Float[Tensor, "... n pairs"]:
        """The logits of the labels in each sequence's context: all that in-context metrics read."""
        return torch.einsum("...nd,npd->...np", hidden, self.W_U.T[batch.labels]) + self.b_U[batch.labels]

    def score(self, hidden: Float[Tensor, "*sets n d_model"], batch: Batch, metrics: Sequence[str] = ("acc", "loss"),
              anchor: Float[Tensor, "n d_model"] | None = None) -> dict[str, Float[Tensor, "*sets"]]:
        """Each metric of `METRICS` asked for, averaged over the batch, for every set.

        In-context accuracy and the logit difference read only the context labels' logits (`context_logits`);
        only the loss and `iwl`'s accuracy (an argmax over every label) unembed the whole row (`full_rows`).
        `anchor` (e.g. the clean run's rows, when the sets perturb it) lets iwl accuracy skip the rows that stay
        too close to it to change its answer (`anchored_top`).
        """
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
        out: dict[str, Tensor] = {}
        target = batch.target
        if batch.evaluator != "iwl" and ("acc" in metrics or "logit_diff" in metrics):
            ctx = self.context_logits(hidden, batch)
            labels = batch.labels.expand_as(ctx)
            if "acc" in metrics:  # argmax over the labels present in the context
                pred = labels.gather(-1, ctx.argmax(-1, keepdim=True))[..., 0]
                out["acc"] = (pred == target).float().mean(-1)
            if "logit_diff" in metrics:
                out["logit_diff"] = logit_diff(ctx, labels == target[:, None])
        iwl_acc = batch.evaluator == "iwl" and "acc" in metrics
        if "loss" in metrics or iwl_acc:
            ce, top = full_rows(hidden, self.W_U, self.b_U, target, loss="loss" in metrics, top=iwl_acc,
                                anchor=anchor)
            if ce is not None:
                out["loss"] = ce.mean(-1)
            if top is not None:
                out["acc"] = top.float().mean(-1)
        return {m: out[m] for m in metrics if m in out}


def logit_diff(ctx: Float[Tensor, "... n pairs"], is_target: Bool[Tensor, "... n pairs"]) -> Float[Tensor, "..."]:
    """Mean over sequences of the target label's logit minus the largest other context label's (sequences whose
    context holds no other label, or not the target, are left out; NaN if none is left)."""
    tgt = ctx.masked_fill(~is_target, float("-inf")).amax(-1)
    other = ctx.masked_fill(is_target, float("-inf")).amax(-1)
    diff = tgt - other
    ok = diff.isfinite()
    return torch.where(ok, diff, 0.0).sum(-1) / ok.sum(-1)


def full_rows(hidden: Float[Tensor, "... d_model"], W_U: Float[Tensor, "d_model labels"],
              b_U: Float[Tensor, " labels"], target: Int[Tensor, "..."], loss: bool = True, top: bool = True,
              anchor: Float[Tensor, "n d_model"] | None = None) -> tuple[Float[Tensor, "..."] | None,
                                                                      Bool[Tensor, "..."] | None]:
    """Cross-entropy against `target` (broadcast to the rows' leading dims; None unless `loss`) and whether the
    target's logit is the row's largest (an argmax over every label, ties counted as the target's; None unless
    `top`), both as fp32 gives them.

    The loss unembeds every row in fp32 (`exact_rows`). Whether the target is on top, alone, is decided without
    any unembedding for the rows that stay close to their `anchor` row (the last leading dim indexes the anchor's
    rows; `anchored_top`), and the rest are screened in bf16 where bf16 is fast (`screened_top`), else unembedded
    in fp32. All give exactly the fp32 answer: the first two decide only rows whose margin exceeds a proven bound
    on their error.
    """
    lead = hidden.shape[:-1]
    W_U = W_U.contiguous()  # the bridge's [labels, d_model] weight transposed: ~10% slower in addmm as a view
    target = target.expand(lead)
    if loss:
        ce, is_top = exact_rows(hidden.reshape(-1, hidden.shape[-1]), W_U, b_U, target.reshape(-1), top=top)
        return ce.reshape(lead), None if is_top is None else is_top.reshape(lead)
    if not top:
        return None, None
    if anchor is None:
        decided, is_top = torch.zeros_like(target, dtype=torch.bool), torch.zeros_like(target, dtype=torch.bool)
    else:  # the target of every set's row i is anchor row i's (`Engine.score` passes the batch's [n] targets)
        decided, is_top = anchored_top(hidden, W_U, b_U, target.reshape(-1, len(anchor))[0], anchor)
    rest = ~decided
    if bf16_is_fast(hidden.device.type):
        is_top[rest] = screened_top(hidden[rest], W_U, b_U, target[rest])
    else:
        is_top[rest] = exact_rows(hidden[rest], W_U, b_U, target[rest], loss=False)[1]
    return None, is_top


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """Whether `screened_top` pays and its bound holds here: on a CPU with AMX or AVX512-BF16 instructions (AMX:
    ~4x fp32 from 128 rows; oneDNN accumulates in fp32). Elsewhere on CPUs bf16 is emulated (1.5 vs 59 GFLOP/s
    fp32 on an AVX2 CPU); on CUDA, cuBLAS may reduce in bf16 (`allow_bf16_reduced_precision_reduction`), which the
    bound does not cover, and fp32 is fast anyway. torch says what the CPU has only through private checks."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device_type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def anchored_top(hidden: Float[Tensor, "... n d_model"], W_U: Float[Tensor, "d_model labels"],
                 b_U: Float[Tensor, " labels"], target: Int[Tensor, " n"],
                 anchor: Float[Tensor, "n d_model"]) -> tuple[Bool[Tensor, "... n"], Bool[Tensor, "... n"]]:
    """Which rows an anchor decides, and whether their target is on top, without unembedding them.

    A row's logits differ from its anchor row's by (h - a) . W_U[:, j], at most |h - a| max_j |W_U[:, j]| each
    (Cauchy-Schwarz): the target's margin over the best other label moves by at most twice that. A row whose
    anchor margin (computed in fp32) exceeds it, plus a slack far above fp32's own rounding, has the anchor's
    answer. Path patching's iwl rows are mostly such rows (60-97% on the demo's checkpoints).
    """
    n = len(anchor)
    logits = torch.empty(n, W_U.shape[1], device=anchor.device)
    torch.addmm(b_U, anchor, W_U, out=logits)
    picked = logits.gather(1, target[:, None])[:, 0]
    logits[torch.arange(n, device=anchor.device), target] = float("-inf")
    margin = picked - logits.amax(-1)
    w_norm = W_U.norm(dim=0).max()
    slack = 2.0 ** -10 * (anchor.norm(dim=-1) * w_norm + b_U.abs().max())
    reach = 2 * (1 + 2.0 ** -10) * (hidden - anchor).norm(dim=-1) * w_norm + slack
    return margin.abs() > reach, (margin > 0).expand_as(reach).clone()


def target_logits(flat: Float[Tensor, "rows d_model"], W_U: Float[Tensor, "d_model labels"],
                  b_U: Float[Tensor, " labels"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    return torch.einsum("nd,dn->n", flat, W_U[:, target]) + b_U[target]


def exact_rows(flat: Float[Tensor, "rows d_model"], W_U: Float[Tensor, "d_model labels"], b_U: Float[Tensor, " labels"],
               target: Int[Tensor, " rows"], top: bool = True,
               loss: bool = True) -> tuple[Float[Tensor, " rows"] | None, Bool[Tensor, " rows"] | None]:
    """`full_rows` in fp32, a cache-sized block of rows at a time: with 12,800 labels the logits of all sets take
    GBs, and blocks of ~40 rows stay in cache. Each block's loss is torch's own cross-entropy (its fused
    log-softmax: as fast on the demo's analyses as a log-sum-exp written out in torch ops and shifted by the
    target's logit to skip the maximum's pass); whether the target is on top compares its logit with the row's
    `amax` (values only: `max`/`argmax` with indices cost as much as the matmul).
    """
    per_block = max(MIN_ROWS, ROW_BLOCK // W_U.shape[1])
    ce = torch.empty(len(flat), device=flat.device) if loss else None
    is_top = torch.empty(len(flat), dtype=torch.bool, device=flat.device) if top else None
    buffer = torch.empty(min(per_block, len(flat)), W_U.shape[1], device=flat.device)
    for start in range(0, len(flat), per_block):
        rows = slice(start, start + per_block)
        block = flat[rows]
        logits = torch.addmm(b_U, block, W_U, out=buffer[:len(block)])
        if top:
            is_top[rows] = logits.gather(1, target[rows, None])[:, 0] >= logits.amax(-1)
        if loss:
            ce[rows] = F.cross_entropy(logits, target[rows], reduction="none")
    return ce, is_top


def screened_top(flat: Float[Tensor, "rows d_model"], W_U: Float[Tensor, "d_model labels"],
                 b_U: Float[Tensor, " labels"], target: Int[Tensor, " rows"]) -> Bool[Tensor, " rows"]:
    """Whether each row's target logit is its largest, exactly as `exact_rows` says, from a bf16 unembedding.

    The target's logit is computed in fp32; the other labels' largest logit in bf16, a block of rows at a time.
    bf16 keeps 8 significant bits (unit roundoff u = 2^-8) and the matmul accumulates in fp32, so each bf16 logit
    is within E = u (4.1 |h| max_j |W_U[:, j]| + 2.1 max_j |b_U[j]|) of the true one: rounding h and W_U costs
    (2u + u^2) sum_i |h_i W_ij| <= (2u + u^2) |h| |W_j| (Cauchy-Schwarz); rounding the bias (folded in as one more
    input dim) and the product, at most u (|h| |W_j| + 2 |b_j|) more; the fp32 sums, ~64 x 2^-24 relative. A row
    whose target beats the others' maximum by more than E is the target's, one that trails it by more than E is not;
    only the rows in between (near-ties) are recomputed in fp32: 0-6% of the rows on the demo's checkpoints.
    """
    has_bias = bool(b_U.any())
    # The bias as one more input dim (h 1) . (W_U; b_U): cheaper than adding it in a separate bf16 pass.
    W_bf16 = (torch.cat([W_U, b_U[None]]) if has_bias else W_U).bfloat16()
    picked = target_logits(flat, W_U, b_U, target)
    bound = BF16_U * (4.1 * flat.norm(dim=-1) * W_U.norm(dim=0).max() + 2.1 * b_U.abs().max())
    others = torch.empty(len(flat), device=flat.device)
    buffer = torch.empty(min(SCREEN_ROWS, len(flat)), W_U.shape[1], dtype=torch.bfloat16, device=flat.device)
    index = torch.arange(len(buffer), device=flat.device)
    for start in range(0, len(flat), SCREEN_ROWS):
        rows = slice(start, start + SCREEN_ROWS)
        block = flat[rows]
        if has_bias:
            block = torch.cat([block, block.new_ones(len(block), 1)], 1)
        logits = torch.mm(block.bfloat16(), W_bf16, out=buffer[:len(block)])
        logits[index[:len(block)], target[rows]] = float("-inf")
        others[rows] = logits.amax(-1).float()
    is_top = picked > others + bound
    unsure = ~is_top & (picked >= others - bound)
    if unsure.any():
        is_top[unsure] = exact_rows(flat[unsure], W_U, b_U, target[unsure], loss=False)[1]
    return is_top


def head_masks(head_sets: Sequence[Sequence[Head]], cfg: HeadGrid) -> Bool[Tensor, "sets layer head"]:
    masks = torch.zeros(len(head_sets), cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    for i, heads in enumerate(head_sets):
        for head in heads:
            masks[(i, *check_head(head, cfg))] = True
    return masks


def masked_edit(masks: Bool[Tensor, "sets layer head"], values: Zs) -> EditZ:
    """An `edit_z` that gives set s, at layer l, `values[l]` for the heads in masks[s, l], the clean z elsewhere."""
    def edit(layer: int, z: Z) -> Z:
        m = masks[:, layer].to(z.device)
        if not m.any():
            return z
        return torch.where(m[:, None, None, :, None], values[layer], z)
    return edit
