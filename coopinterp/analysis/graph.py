"""The edge graph of a token model, and the forwards that score and patch its edges (the `edges` and `circuit`
analyses).

Nodes: the input (the stream entering block 0: token and position embeddings), every head's output
(`attn.hook_result`), every MLP's output (`hook_mlp_out`; attention-only models have none) and the logits. The
residual stream a reader sees is the sum of the outputs of every node before it (plus constant biases), so an edge
sender -> receiver is one term of that sum at one receiver input: a head's query, key or value input (one per
key/value group where the model groups them), an MLP's input (`hook_mlp_in`) or the logits' input
(`ln_final.hook_in`). Each input is read before its LayerNorm, which is recomputed: a head's own input is rebuilt
from the layer's stream in a plain forward (head_qkv.py) or, where that does not reproduce the model, given by the
bridge's split forward (`hook_{q,k,v}_input`). An MLP that runs beside its layer's attention (GPT-NeoX's parallel
residual) reads only earlier layers.

A circuit is a set of edges; evaluating it, every edge outside it carries the sender's output on the corrupted
prompt instead of its output in the running forward (one forward: each receiver input minus the missing edges'
current-minus-corrupted outputs, or its corrupted input plus the kept ones'). The full graph gives the clean metric
and the empty one the corrupted metric.

Scores estimate, for each edge alone, metric(edge corrupted) - metric(clean): EAP takes the gradient of the metric
at the receiver's input on the clean prompt times the sender's corrupted-minus-clean output; EAP-IG averages that
gradient over `steps` inputs on the straight line from the corrupted to the clean embeddings (midpoints); `exact`
runs the patched forward for each edge.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Callable, Iterator, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..contrast import ContrastBatch, contrasts, prob_diff
from ..errors import ConfigError
from ..token_model import TokenModel
from .forwards import stopped_at
from .head_qkv import HeadQKV

Method = Literal["eap_ig", "eap", "exact"]
Metric = Literal["logit_diff", "prob_diff"]
COMPONENTS = ("q", "k", "v", "mlp", "logits")
HEAD_COMPONENTS = ("q", "k", "v")
ELEMENTS_PER_CALL = 1 << 26  # floats of one forward's per-sender buffer [sender, prompts, pos, d_model] (256 MB)
FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")


@dataclass(frozen=True)
class Receiver:
    """One receiver input: `component` of head (or key/value group) `head` of `layer`; the logits sit at layer
    n_layers."""

    layer: int
    head: int | None
    component: str


@dataclass(frozen=True)
class Graph:
    """The nodes and edges of a model of this shape. Senders are ordered as the forward computes them: the input,
    then per layer its heads and its MLP; an edge exists when the sender comes before the receiver reads."""

    n_layers: int
    n_heads: int
    n_kv: int  # key/value heads (groups), n_heads without grouped-query attention
    mlp: bool
    parallel: bool  # each MLP reads its block's input, beside the attention (GPT-NeoX, GPT-J)

    @classmethod
    def of(cls, model: TokenModel) -> "Graph":
        cfg = model.bridge.cfg
        return cls(cfg.n_layers, cfg.n_heads, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
                   not getattr(cfg, "attn_only", False), bool(getattr(cfg, "parallel_attn_mlp", False)))

    @property
    def per_layer(self) -> int:
        return self.n_heads + self.mlp

    @cached_property
    def senders(self) -> list[tuple[int, int | None]]:
        """(src_layer, src_head) of every sender: (-1, None) the input, (layer, None) an MLP."""
        out: list[tuple[int, int | None]] = [(-1, None)]
        for layer in range(self.n_layers):
            out += [(layer, h) for h in range(self.n_heads)] + ([(layer, None)] if self.mlp else [])
        return out

    def sender_index(self, layer: int, head: int | None) -> int:
        return 0 if layer < 0 else 1 + layer * self.per_layer + (self.n_heads if head is None else head)

    @cached_property
    def receivers(self) -> list[Receiver]:
        out = []
        for layer in range(self.n_layers):
            for component, heads in (("q", self.n_heads), ("k", self.n_kv), ("v", self.n_kv)):
                out += [Receiver(layer, h, component) for h in range(heads)]
            out += [Receiver(layer, None, "mlp")] if self.mlp else []
        return out + [Receiver(self.n_layers, None, "logits")]

    @cached_property
    def columns(self) -> dict[tuple[int, str], slice]:
        """(layer, component) -> its receivers' columns."""
        out, start = {}, 0
        for r in self.receivers:
            key = (r.layer, r.component)
            out[key] = slice(out[key].start if key in out else start, start + 1)
            start += 1
        return out

    def n_before(self, layer: int, component: str) -> int:
        """How many senders (the first ones) an input of this component at this layer reads."""
        if component == "logits":
            return len(self.senders)
        own_heads = component == "mlp" and not self.parallel
        return 1 + layer * self.per_layer + (self.n_heads if own_heads else 0)

    @cached_property
    def valid(self) -> Bool[Tensor, "sender receiver"]:
        before = torch.tensor([self.n_before(r.layer, r.component) for r in self.receivers])
        return torch.arange(len(self.senders))[:, None] < before[None, :]

    @cached_property
    def edges(self) -> Int[Tensor, "edge 2"]:
        """(sender, receiver) of every edge, receiver-major."""
        return self.valid.T.nonzero()[:, [1, 0]]

    def connects(self, keep: Bool[Tensor, "circuit sender receiver"]) -> Bool[Tensor, " circuit"]:
        """Whether each circuit's edges hold a path from the input to the logits."""
        reached = torch.zeros(keep.shape[:2], dtype=torch.bool, device=keep.device)
        reached[:, 0] = True
        for sender in range(1, len(self.senders)):
            reached[:, sender] = (keep[:, :, self.ports(sender)] & reached[:, :, None]).any(dim=(1, 2))
        return (keep[:, :, -1] & reached).any(dim=1)

    def receiver_node(self, r: Receiver) -> list[int | str]:
        """The node(s) a receiver input belongs to: a head (every head of a key/value group), an MLP, the logits."""
        if r.component == "logits":
            return ["logits"]
        if r.component == "mlp":
            return [self.sender_index(r.layer, None)]
        group = self.n_heads // self.n_kv if r.component in "kv" else 1
        return [self.sender_index(r.layer, h) for h in range(r.head * group, (r.head + 1) * group)]

    def ports(self, node: int | str) -> list[int]:
        """The receiver columns of a node (what it reads)."""
        if node == "logits":
            return [len(self.receivers) - 1]
        layer, head = self.senders[node]
        if layer < 0:
            return []
        if head is None:
            return [self.columns[(layer, "mlp")].start]
        group = self.n_heads // self.n_kv
        return [self.columns[(layer, "q")].start + head] + \
            [self.columns[(layer, c)].start + head // group for c in ("k", "v")]

    def node_name(self, node: int | str) -> str:
        if node == "logits":
            return "logits"
        layer, head = self.senders[node]
        return "input" if layer < 0 else f"mlp{layer}" if head is None else f"{layer}.{head}"


def sender_hook(graph: Graph, index: int) -> str:
    layer, head = graph.senders[index]
    return ("blocks.0.hook_resid_pre" if layer < 0 else f"blocks.{layer}.hook_mlp_out" if head is None
            else f"blocks.{layer}.attn.hook_result")


def receiver_hook(layer: int, component: str) -> str:
    return "ln_final.hook_in" if component == "logits" else \
        f"blocks.{layer}.hook_mlp_in" if component == "mlp" else f"blocks.{layer}.attn.hook_{component}_input"


@contextmanager
def split_forward(model: TokenModel) -> Iterator[None]:
    """Inside the block the bridge exposes every node: each head's output, per-head q/k/v inputs read before
    LayerNorm, the MLPs' inputs (its flags restored after)."""
    bridge = model.bridge
    saved = {flag: bool(getattr(bridge.cfg, flag, False)) for flag in FLAGS}
    try:
        try:
            bridge.set_use_attn_result(True)
            bridge.set_use_split_qkv_input(True)
        except NotImplementedError:  # transformer-lens's generic attention (boot_native, e.g. the Markov task's model)
            raise ConfigError(f"edges and circuit need per-head results and q/k/v inputs, which transformer-lens "
                              f"gives Hugging Face architectures but not this model's "
                              f"{type(bridge.blocks[0].attn).__name__}") from None
        bridge.set_use_hook_mlp_in(True)
        yield
    finally:
        bridge.set_use_split_qkv_input(saved["use_split_qkv_input"])
        bridge.set_use_attn_result(saved["use_attn_result"])
        bridge.set_use_hook_mlp_in(saved["use_hook_mlp_in"])


@contextmanager
def plain_forward(model: TokenModel, plain: bool = True) -> Iterator[None]:
    """Inside split_forward, a block (if `plain`) whose forwards give the heads one shared input stream."""
    if plain:
        model.bridge.set_use_split_qkv_input(False)
    try:
        yield
    finally:
        if plain:
            model.bridge.set_use_split_qkv_input(True)


def metric_values(model: TokenModel, hidden: Float[Tensor, "n pos d_model"], pairs: ContrastBatch,
                  metric: Metric) -> Float[Tensor, " n"]:
    """The metric of each pair from the unembedding's input: a logit difference reads two columns of W_U, a
    probability difference unembeds only each pair's position."""
    rows = torch.arange(len(pairs), device=hidden.device)
    at = hidden[rows, pairs.position]
    W_U, b_U = model.bridge.W_U, model.bridge.b_U
    if metric == "prob_diff":
        return prob_diff(at @ W_U + b_U, pairs)
    direction = W_U[:, pairs.answer] - W_U[:, pairs.wrong]  # d_model n
    return (at * direction.T).sum(-1) + b_U[pairs.answer] - b_U[pairs.wrong]


def rows_per_call(model: TokenModel, graph: Graph, pos: int) -> int:
    """Prompts per forward: what keeps one forward's per-sender buffers within ELEMENTS_PER_CALL floats."""
    return max(1, ELEMENTS_PER_CALL // (pos * model.cfg.d_model * len(graph.senders)))


def pick(pairs: ContrastBatch, rows: slice | Tensor) -> ContrastBatch:
    return ContrastBatch(pairs.clean[rows], pairs.corrupted[rows], pairs.answer[rows], pairs.wrong[rows],
                         pairs.position[rows], pairs.evaluator)


def tiled(pairs: ContrastBatch, copies: int) -> ContrastBatch:
    """`copies` copies of the pairs one after another (one per circuit evaluated in a forward)."""
    return pick(pairs, torch.arange(len(pairs), device=pairs.clean.device).repeat(copies))


def sender_hooks(graph: Graph, write: Callable[[slice, Tensor], None]) -> list[tuple[str, Callable]]:
    """Hooks that hand the outputs of every sender to `write(senders, outputs [sender n pos d_model])`."""
    def hook(senders: slice, heads: bool) -> Callable:
        return lambda x, hook: write(senders, x.permute(2, 0, 1, 3) if heads else x[None])

    hooks = [(sender_hook(graph, 0), hook(slice(0, 1), False))]
    for layer in range(graph.n_layers):
        first = graph.sender_index(layer, 0)
        hooks.append((sender_hook(graph, first), hook(slice(first, first + graph.n_heads), True)))
        if graph.mlp:
            mlp = graph.sender_index(layer, None)
            hooks.append((sender_hook(graph, mlp), hook(slice(mlp, mlp + 1), False)))
    return hooks


def receiver_hooks(graph: Graph, edit: Callable[[Tensor, int, str], Tensor],
                   components: Sequence[str] = COMPONENTS) -> list[tuple[str, Callable]]:
    """Hooks that replace every receiver input x of `components` ([n pos receiver d_model] for q/k/v, which needs
    the split forward, [n pos d_model] for an MLP and the logits) by `edit(x, layer, component)`."""
    def hook(layer: int, component: str) -> Callable:
        return lambda x, hook: edit(x, layer, component)

    return [(receiver_hook(layer, component), hook(layer, component)) for layer, component in graph.columns
            if component in components]


def head_hooks(graph: Graph, edit: Callable[[Tensor, int, str], Tensor],
               stream: Callable[[Tensor, int], None]) -> list[tuple[str, Callable]]:
    """For the plain forward (head_qkv.py): hooks that hand each layer's input stream to `stream(x, layer)` and
    replace each head output y of q/k/v ([n pos head d_head]) by `edit(y, layer, component)`."""
    def hook(layer: int, component: str) -> Callable:
        return lambda y, hook: edit(y, layer, component)

    def record(layer: int) -> Callable:
        return lambda x, hook: stream(x, layer)

    out = []
    for layer in range(graph.n_layers):
        out.append((f"blocks.{layer}.hook_resid_pre", record(layer)))
        out += [(f"blocks.{layer}.attn.hook_{c}", hook(layer, c)) for c in HEAD_COMPONENTS]
    return out


def keep_stream(streams: dict[int, Tensor], x: Tensor, layer: int) -> None:
    """A head_hooks `stream` callback: the layer's input stream of the running forward."""
    streams[layer] = x


def input_key(layer: int, component: str) -> tuple[int, str]:
    """Where a receiver input's unpatched value is kept: a layer's q, k and v inputs are one residual stream."""
    return (layer, "q") if component in ("k", "v") else (layer, component)


@dataclass
class Endpoints:
    """One group of pairs: every sender's output on the clean and the corrupted prompts, their metrics, every
    receiver input and (plain forwards) every head's q/k/v on the corrupted prompts, and how the edge forwards give
    heads their own inputs: rebuilt by `heads` in a plain forward, or (None) the bridge's split forward."""

    pairs: ContrastBatch
    clean: Float[Tensor, "sender n pos d_model"]
    corrupted: Float[Tensor, "sender n pos d_model"]
    clean_metric: Float[Tensor, " n"]
    corrupted_metric: Float[Tensor, " n"]
    corrupted_inputs: dict[tuple[int, str], Float[Tensor, "n pos d_model"]]  # by input_key
    corrupted_heads: dict[tuple[int, str], Float[Tensor, "n pos head d_head"]]
    heads: HeadQKV | None


@torch.no_grad()
def sender_outputs(model: TokenModel, graph: Graph, tokens: Int[Tensor, "n pos"], pairs: ContrastBatch,
                   metric: Metric, record: bool, heads: HeadQKV | None) -> tuple[
                       Float[Tensor, "sender n pos d_model"], Float[Tensor, " n"], dict, dict]:
    """Every sender's output and each pair's metric from one forward on `tokens` and, with `record`, every receiver
    input by input_key and (a plain forward, `heads` given) every head's q/k/v."""
    out = torch.empty(len(graph.senders), *tokens.shape, model.cfg.d_model, device=tokens.device)
    inputs, outputs = {}, {}

    def write(senders: slice, x: Tensor) -> None:
        out[senders] = x

    def read(x: Tensor, layer: int, component: str) -> Tensor:
        key = input_key(layer, component)
        if key not in inputs:  # every head's copy of an unpatched stream is the same
            inputs[key] = (x[:, :, 0] if x.ndim == 4 else x).clone()
        return x

    def keep_output(y: Tensor, layer: int, component: str) -> Tensor:
        outputs[(layer, component)] = y.clone()
        return y

    hooks = sender_hooks(graph, write)
    if record and heads is None:
        hooks += receiver_hooks(graph, read)
    elif record:
        hooks += receiver_hooks(graph, read, ("mlp", "logits"))
        hooks += head_hooks(graph, keep_output, lambda x, layer: read(x, layer, "q"))
    hidden = stopped_at(model, tokens, "unembed.hook_in", hooks)
    return out, metric_values(model, hidden, pairs, metric), inputs, outputs


def endpoints(model: TokenModel, graph: Graph, pairs: ContrastBatch, metric: Metric) -> list[Endpoints]:
    """Clean and corrupted forwards of every group of pairs (inside split_forward). The heads' inputs are rebuilt
    in plain forwards where HeadQKV rebuilds the first corrupted forward's q/k/v; else the split forward gives them."""
    size = rows_per_call(model, graph, pairs.clean.shape[1])
    heads = HeadQKV.of(model)
    out = []
    for start in range(0, len(pairs), size):
        group = pick(pairs, slice(start, start + size))
        with plain_forward(model):
            clean, clean_metric, _, _ = sender_outputs(model, graph, group.clean, group, metric, False, None)
            if heads is not None:
                corrupted, corrupted_metric, inputs, outputs = sender_outputs(model, graph, group.corrupted, group,
                                                                              metric, True, heads)
                if not out and not all(heads.matches(layer, c, inputs[(layer, "q")], y)
                                       for (layer, c), y in outputs.items()):
                    heads = None
        if heads is None:
            corrupted, corrupted_metric, inputs, outputs = sender_outputs(model, graph, group.corrupted, group,
                                                                          metric, True, None)
        out.append(Endpoints(group, clean, corrupted, clean_metric, corrupted_metric, inputs, outputs, heads))
    return out


def gradient_scores(model: TokenModel, graph: Graph, ends: list[Endpoints], steps: int,
                    metric: Metric) -> Float[Tensor, "sender receiver"]:
    """EAP (steps 0: the gradient on the clean prompt) or EAP-IG (the gradient averaged over `steps` inputs
    corrupted + (k + 1/2) / steps * (clean - corrupted) of the embedding stream) at every receiver input, times every
    sender's corrupted-minus-clean output, summed over positions and averaged over pairs. The inputs of every step
    run in one forward, so each receiver's gradient is summed over them before the product with the outputs."""
    n = sum(len(e.pairs) for e in ends)
    alphas = torch.tensor([1.0] if steps == 0 else [(k + 0.5) / steps for k in range(steps)],
                          device=ends[0].clean.device)
    scores = torch.zeros(len(graph.senders), len(graph.receivers), device=ends[0].clean.device)
    size = max(1, rows_per_call(model, graph, ends[0].pairs.clean.shape[1]) // len(alphas))
    for e in ends:
        for first in range(0, len(e.pairs), size):
            rows = slice(first, first + size)
            with plain_forward(model, e.heads is not None):
                gradient_pass(model, graph, pick(e.pairs, rows), e.clean[:, rows], e.corrupted[:, rows], alphas,
                              metric, scores, n * len(alphas), e.heads)
    return scores * graph.valid.to(scores.device)


def gradient_pass(model: TokenModel, graph: Graph, pairs: ContrastBatch, clean: Float[Tensor, "sender n pos d_model"],
                  corrupted: Float[Tensor, "sender n pos d_model"], alphas: Float[Tensor, " step"], metric: Metric,
                  scores: Float[Tensor, "sender receiver"], norm: int, heads: HeadQKV | None) -> None:
    """Add one group's gradient scores to `scores`: a forward and backward of the pairs' clean prompts, one copy per
    interpolation step."""
    steps, m = len(alphas), len(pairs)
    delta = (corrupted - clean).flatten(1)  # sender (n pos d_model)
    streams: dict[int, Tensor] = {}

    def add(layer: int, component: str, g: Float[Tensor, "receiver step_n pos d_model"]) -> None:
        k, cols = graph.n_before(layer, component), graph.columns[(layer, component)]
        g = g.unflatten(1, (steps, m)).sum(1)
        # a plain matrix product: einsum copied `delta` at every call (5.9 of 9.7 s at Pythia-70m's shape)
        scores[:k, cols] += delta[:k] @ g.flatten(1).T

    def watch(x: Tensor, layer: int, component: str) -> Tensor:
        x = x if x.ndim == 4 else x.clone()  # an MLP's or the logits' input: a copy only that reader uses
        x.register_hook(lambda g: add(layer, component, g.permute(2, 0, 1, 3) if g.ndim == 4 else g[None]))
        return x

    def watch_head(y: Tensor, layer: int, component: str) -> Tensor:
        y = y.clone()  # the bridge reads a tensor a hook returns, so the gradient reaches this one
        x = streams[layer]
        y.register_hook(lambda g: add(layer, component, heads.input_grads(layer, component, x, g)))
        return y

    embedded = corrupted[0] + alphas[:, None, None, None] * (clean[0] - corrupted[0])
    start = embedded.flatten(0, 1).requires_grad_()
    hooks = [(sender_hook(graph, 0), lambda x, hook: start)]
    if heads is None:
        hooks += receiver_hooks(graph, watch)
    else:
        hooks += receiver_hooks(graph, watch, ("mlp", "logits"))
        hooks += head_hooks(graph, watch_head, partial(keep_stream, streams))
    with torch.enable_grad():
        hidden = stopped_at(model, pairs.clean.repeat(steps, 1), "unembed.hook_in", hooks)
        (metric_values(model, hidden, tiled(pairs, steps), metric).sum() / norm).backward()


@torch.no_grad()
def exact_scores(model: TokenModel, graph: Graph, ends: list[Endpoints],
                 metric: Metric) -> Float[Tensor, "sender receiver"]:
    """metric(one edge corrupted) - metric(clean) of every edge: its receiver input plus the sender's
    corrupted-minus-clean output, everything else computed (one copy of the pairs per edge)."""
    edges = graph.edges.to(ends[0].clean.device)
    change = per_copy_mean(model, graph, ends, edges,
                           lambda e, cut: one_edge(model, graph, e, cut, metric) - e.clean_metric)
    scores = torch.zeros(graph.valid.shape, device=edges.device)
    scores[edges[:, 0], edges[:, 1]] = change
    return scores


def one_edge(model: TokenModel, graph: Graph, e: Endpoints, edges: Int[Tensor, "copy 2"],
             metric: Metric) -> Float[Tensor, "copy n"]:
    """One split forward of a copy of the pairs' clean prompts per edge, copy c with edge c corrupted."""
    copies, (n, pos) = len(edges), e.pairs.clean.shape
    delta = e.corrupted - e.clean

    def edit(x: Tensor, layer: int, component: str) -> Tensor:
        cols = graph.columns[(layer, component)]
        hit = ((edges[:, 1] >= cols.start) & (edges[:, 1] < cols.stop)).nonzero()[:, 0]
        if not len(hit):
            return x
        x = x.clone()
        at = x.view(copies, n, pos, -1, x.shape[-1]) if x.ndim == 4 else x.view(copies, n, pos, 1, x.shape[-1])
        at[hit, :, :, edges[hit, 1] - cols.start] += delta[edges[hit, 0]]
        return x

    hidden = stopped_at(model, e.pairs.clean.repeat(copies, 1), "unembed.hook_in", receiver_hooks(graph, edit))
    return metric_values(model, hidden, tiled(e.pairs, copies), metric).view(copies, n)


@torch.no_grad()
def circuit_metrics(model: TokenModel, graph: Graph, ends: list[Endpoints],
                    keep: Bool[Tensor, "circuit sender receiver"], metric: Metric) -> Float[Tensor, " circuit"]:
    """The mean metric of each circuit: every edge outside it carries its sender's corrupted output, everything
    else is computed (several circuits per forward, each on its own copy of the pairs). A node's output differs from
    its corrupted one only through a kept edge from a node whose output differs, the input first, so a circuit
    without a path of kept edges from the input to the logits has the corrupted metric, and takes no forward."""
    absent = (graph.valid.to(keep.device) & ~keep).to(ends[0].clean.dtype)
    corrupted = sum(e.corrupted_metric.sum() for e in ends) / sum(len(e.pairs) for e in ends)
    out = corrupted.expand(len(keep)).clone()
    live = graph.connects(keep)

    def run(e: Endpoints, cut: Tensor) -> Tensor:
        with plain_forward(model, e.heads is not None):
            return patched(model, graph, e, cut, metric)

    if live.any():
        out[live] = per_copy_mean(model, graph, ends, absent[live], run)
    return out


def per_copy_mean(model: TokenModel, graph: Graph, ends: list[Endpoints], variants: Tensor,
                  run: Callable[[Endpoints, Tensor], Float[Tensor, "copy n"]]) -> Float[Tensor, " variant"]:
    """Each variant's value (an edge corrupted, a circuit kept) averaged over every pair: `run(e, cut)` evaluates
    the variants of `cut` on one copy of e's pairs each, as many copies per forward as fit in memory."""
    out = torch.zeros(len(variants), device=variants.device)
    n = sum(len(e.pairs) for e in ends)
    for e in ends:
        per_call = max(1, rows_per_call(model, graph, e.pairs.clean.shape[1]) // len(e.pairs))
        for first in range(0, len(variants), per_call):
            cut = variants[first:first + per_call]
            out[first:first + len(cut)] = run(e, cut).sum(-1) / n
    return out


def patched(model: TokenModel, graph: Graph, e: Endpoints, absent: Float[Tensor, "circuit sender receiver"],
            metric: Metric) -> Float[Tensor, "circuit n"]:
    """One forward of len(absent) copies of the pairs' clean prompts, copy c missing the edges of absent[c]. A
    receiver input is its running value minus the missing edges' current-minus-corrupted outputs or, where fewer
    edges are kept than missing, its corrupted value plus the kept edges' current-minus-corrupted outputs: the same
    sum, over the fewer senders. In a plain forward (e.heads) only the heads whose input changes are rebuilt;
    the others keep their running or corrupted q/k/v."""
    copies, (n, pos) = len(absent), e.pairs.clean.shape
    diff = torch.empty(len(graph.senders), copies, n, pos, e.corrupted.shape[-1], device=e.corrupted.device)
    streams: dict[int, Tensor] = {}

    def write(senders: slice, x: Tensor) -> None:  # every sender's current-minus-corrupted output
        torch.sub(x.unflatten(1, (copies, n)), e.corrupted[senders, None], out=diff[senders])

    def side(layer: int, component: str,
             receivers: slice | Tensor) -> tuple[bool, Float[Tensor, "copy sender receiver"]]:
        """Whether the receivers' inputs are built from their corrupted values (more edges missing than kept), and
        the edges summed: the kept ones if so, else the missing ones."""
        missing = absent[:, :graph.n_before(layer, component), graph.columns[(layer, component)]][:, :, receivers]
        from_corrupted = bool(2 * missing.sum() > missing.numel())
        return from_corrupted, 1 - missing if from_corrupted else missing

    def inputs(layer: int, component: str, running: Float[Tensor, "copy n pos #receiver d_model"],
               receivers: slice | Tensor) -> Float[Tensor, "#copy n pos #selected d_model"]:
        """The chosen receivers' patched inputs from the running ones."""
        from_corrupted, terms = side(layer, component, receivers)
        k = terms.shape[1]
        start = e.corrupted_inputs[input_key(layer, component)][None, :, :, None] if from_corrupted else running
        senders = terms.amax(dim=(0, 2)).nonzero()[:, 0].tolist()
        if senders:  # a product over (n pos d_model): einsum copied the sender outputs at every call
            # the first k senders as they lie in memory (zero terms cost less than copying out the others) unless
            # only a few are in the sum
            used = slice(0, k) if 16 * len(senders) >= k else senders
            change = terms[:, used].transpose(1, 2) @ diff[used].transpose(0, 1).flatten(2)
            change = change.view(copies, -1, n, pos, running.shape[-1]).permute(0, 2, 3, 1, 4)
            start = start + change if from_corrupted else start - change
        return start

    def edit(x: Tensor, layer: int, component: str) -> Tensor:
        receivers = graph.columns[(layer, component)]
        start = inputs(layer, component, x.reshape(copies, n, pos, -1, x.shape[-1]), slice(None))
        return start.expand(copies, n, pos, receivers.stop - receivers.start, x.shape[-1]).reshape(x.shape)

    def edit_heads(y: Tensor, layer: int, component: str) -> Tensor:
        from_corrupted, terms = side(layer, component, slice(None))
        changed = terms.amax(1) > 0  # copy receiver: an input other than the start's
        out = e.corrupted_heads[(layer, component)].expand(copies, n, *y.shape[1:]) if from_corrupted else \
            y.view(copies, n, *y.shape[1:])
        picked = changed.any(0).nonzero()[:, 0]
        if not len(picked):
            return out.reshape(y.shape)
        running = streams[layer].view(copies, n, pos, 1, -1)
        x = inputs(layer, component, running, picked)
        at = changed[:, picked].nonzero()  # (copy, index into picked)
        x = x.expand(copies, n, pos, len(picked), x.shape[-1])[at[:, 0], :, :, at[:, 1]]
        out = out.clone()
        out[at[:, 0], :, :, picked[at[:, 1]]] = e.heads.project(layer, component, x, picked[at[:, 1]])
        return out.reshape(y.shape)

    hooks = sender_hooks(graph, write)
    if e.heads is None:
        hooks += receiver_hooks(graph, edit)
    else:
        hooks += receiver_hooks(graph, edit, ("mlp", "logits"))
        hooks += head_hooks(graph, edit_heads, partial(keep_stream, streams))
    hidden = stopped_at(model, e.pairs.clean.repeat(copies, 1), "unembed.hook_in", hooks)
    return metric_values(model, hidden, tiled(e.pairs, copies), metric).view(copies, n)


@dataclass
class Scored:
    """A model's edge scores on one source's pairs, with what a circuit's evaluation reuses."""

    graph: Graph
    ends: list[Endpoints]
    scores: Float[Tensor, "sender receiver"]  # metric(edge corrupted) - metric(clean), estimated or exact
    clean: float  # the mean metric on the clean and on the corrupted prompts
    corrupted: float

    def edge_values(self) -> Float[Tensor, " edge"]:
        edges = self.graph.edges.to(self.scores.device)
        return self.scores[edges[:, 0], edges[:, 1]]


_last: tuple[tuple, object, object, Scored] | None = None  # the latest scores (edges and circuit of one step)


def score(model: TokenModel, pairs: ContrastBatch, method: Method, steps: int, metric: Metric) -> Scored:
    """Every edge's score by `method`; the latest call is remembered, so `circuit` reuses what `edges` computed."""
    global _last
    key = (id(model), id(pairs), method, steps, metric)
    if _last is not None and _last[0] == key:
        return _last[3]
    if method == "eap_ig" and steps < 1:
        raise ConfigError(f"EAP-IG needs steps >= 1, got {steps}")
    graph = Graph.of(model)
    with split_forward(model):
        ends = endpoints(model, graph, pairs, metric)
        scores = (exact_scores(model, graph, ends, metric) if method == "exact" else
                  gradient_scores(model, graph, ends, steps if method == "eap_ig" else 0, metric))
    n = len(pairs)
    out = Scored(graph, ends, scores, sum(e.clean_metric.sum().item() for e in ends) / n,
                 sum(e.corrupted_metric.sum().item() for e in ends) / n)
    _last = (key, model, pairs, out)  # holding model and pairs keeps their ids from being reused
    return out


def contrast_pairs(batches: dict, analysis: str) -> dict[str, ContrastBatch]:
    """The source's contrastive pairs, or a one-line error saying how to give them."""
    found = contrasts(batches)
    if not found:
        raise ConfigError(f"{analysis} needs contrastive pairs: pass --source induction or --source contrast:FILE")
    return found


def edge_columns(graph: Graph, edge: Sequence[int]) -> dict:
    """An edge in the table's columns: sender in src_layer/src_head, receiver in layer/head/component."""
    sender, receiver = graph.senders[edge[0]], graph.receivers[edge[1]]
    return {"src_layer": sender[0], "src_head": sender[1], "layer": receiver.layer, "head": receiver.head,
            "component": receiver.component}


def _na(x) -> bool:
    return x is None or x is pd.NA or x != x


def sender_name(src_layer, src_head) -> str:
    """A sender as text: `input`, `mlp1`, `0.3` (a head NA: None, NaN or pd.NA; numbers of any type)."""
    return "input" if int(src_layer) < 0 else f"mlp{int(src_layer)}" if _na(src_head) \
        else f"{int(src_layer)}.{int(src_head)}"


def edge_name(src_layer, src_head, layer, head, component: str) -> str:
    """An edge as text: `input->1.2q`, `0.3->mlp1`, `mlp1->logits`."""
    receiver = "logits" if component == "logits" else f"mlp{int(layer)}" if component == "mlp" else \
        f"{int(layer)}.{int(head)}{component}"
    return f"{sender_name(src_layer, src_head)}->{receiver}"
