"""The automaton a recurrent network implements, read from its hidden states (van Rossem & Saxe 2025), and how well
it extrapolates to long sequences.

At a checkpoint, the hidden states of h0 and of every prefix of the `prefixes` batch (every sequence of the training
lengths, shortest first, lexicographic within a length) are grouped greedily: a state joins the first group whose
first member lies within eps (Euclidean) of it, else starts a group; eps = `eps_factor` x the norm of the per-unit
standard deviation of those hidden states. The groups are the automaton's states, the one holding h0 its initial
state; every prefix s gives a transition (group of s[:-1], last symbol of s) -> group of s. Its output in a state is
the argmax of the readout at the group's first prefix (the initial state alone has none: no empty sequence is ever
trained). The automaton is `complete` when every (state, symbol) has a target and `deterministic` when none has
two; its deterministic reading keeps, for each (state, symbol), the target of the group's earliest member that has
one, a missing target going to an implicit dead state. That reading, cut to the states reachable from the initial
state, is minimised by Moore's partition refinement over the outputs (the initial state's open output tried as
both symbols, keeping the smaller result): `n_states_min`. A memorising network gives a tree (one state per prefix,
minimised to one state per (depth, parity) pair); the parity algorithm gives two states.

Rows (analysis `automaton`; docs/reference.md): `n_states`, `n_states_min`, `complete`, `deterministic`,
`n_conflicts` and `eps`; `train_loss` and `train_acc` on the kept training sequences; `val_loss` and `val_acc`
(evaluator len_L) on random sequences of each validation length; and, when the minimised automaton has at most
MAX_DRAWN states, its `transition` (component "state>symbol", value the target state; state 0 is the initial state)
and `state_output` (component the state, value the output, NA when open) rows for the state diagram.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..tasks.parity import ParityBatch, ParityRNN, scores
from .record import Analysis

MAX_DRAWN = 40  # the state diagram's rows are written up to this many minimised states
DEAD = -1  # the target of a missing transition
OPEN = -1  # the output of the initial state when no trained prefix shares it


@dataclass(frozen=True)
class Options:
    eps_factor: float = 0.01  # the grouping distance, in units of the hidden states' spread


@dataclass(frozen=True)
class Automaton:
    """A deterministic automaton over {0, 1}: next[state, symbol] (DEAD: none), output[state] (OPEN: none),
    state 0 the initial state."""

    next: Int[np.ndarray, "states 2"]
    output: Int[np.ndarray, " states"]

    def __len__(self) -> int:
        return len(self.output)


@dataclass(frozen=True)
class Extracted:
    """The automaton read from hidden states, with what its deterministic reading hides."""

    automaton: Automaton
    complete: bool
    n_conflicts: int  # (state, symbol) pairs with more than one target


def group(points: Float[Tensor, "n d"], eps: float) -> Int[Tensor, " n"]:
    """Greedy grouping: each point joins the first group whose first member lies within eps, else founds one."""
    leaders = points[:0]
    labels = torch.empty(len(points), dtype=torch.long)
    for i, p in enumerate(points):
        near = ((leaders - p).norm(dim=1) < eps).nonzero()
        if len(near):
            labels[i] = near[0, 0]
        else:
            labels[i] = len(leaders)
            leaders = torch.cat([leaders, p[None]])
    return labels


def prefix_order(bits: Int[Tensor, "n pos"], scored: Bool[Tensor, "n pos"]) -> tuple[list[str], np.ndarray]:
    """The scored prefixes as strings, and the permutation that sorts them shortest first, lexicographic within a
    length."""
    rows, cols = scored.nonzero().unbind(1)
    names = ["".join(map(str, bits[r, : c + 1].tolist())) for r, c in zip(rows.tolist(), cols.tolist())]
    return names, np.array(sorted(range(len(names)), key=lambda i: (len(names[i]), names[i])))


def extract(h0: Float[Tensor, " d"], states: Float[Tensor, "n d"], names: list[str], outputs: Int[np.ndarray, " n"],
            eps_factor: float) -> tuple[Extracted, float]:
    """The automaton of prefixes `names` (every prefix of each one among them, shortest first) whose hidden states
    are `states` and readouts `outputs`, from initial hidden state h0; and the eps used."""
    points = torch.cat([h0[None], states])
    eps = eps_factor * points.std(0).norm().item()
    labels = group(points, eps).numpy()
    n = int(labels.max()) + 1
    index = {name: i + 1 for i, name in enumerate(names)}
    targets: dict[tuple[int, int], set[int]] = {}
    nxt = np.full((n, 2), DEAD)
    for name, i in index.items():
        src, symbol = labels[index.get(name[:-1], 0)], int(name[-1])
        targets.setdefault((src, symbol), set()).add(labels[i])
        if nxt[src, symbol] == DEAD:  # members come shortest first: the earliest member's target
            nxt[src, symbol] = labels[i]
    output = np.full(n, OPEN)
    for i in range(len(points) - 1, 0, -1):  # the first trained member of each group, written last
        output[labels[i]] = outputs[i - 1]
    conflicts = sum(len(t) > 1 for t in targets.values())
    return Extracted(Automaton(nxt, output), len(targets) == 2 * n, int(conflicts)), eps


def reachable(a: Automaton) -> Automaton:
    """The part of `a` reachable from state 0, renumbered in breadth-first order (0 stays initial)."""
    order, seen, queue = [], {0}, deque([0])
    while queue:
        s = queue.popleft()
        order.append(s)
        for t in a.next[s]:
            if t != DEAD and t not in seen:
                seen.add(t)
                queue.append(t)
    new = {old: i for i, old in enumerate(order)}
    nxt = np.array([[new.get(t, DEAD) for t in a.next[s]] for s in order]).reshape(-1, 2)
    return Automaton(nxt, a.output[order])


def moore(a: Automaton) -> Automaton:
    """The minimal automaton equivalent to `a` (every output given): Moore's refinement of the partition by output,
    splitting blocks by the blocks their transitions reach (DEAD a block of its own), until stable."""
    block = pd.factorize(a.output)[0]
    while True:
        to = np.where(a.next == DEAD, -1, block[np.maximum(a.next, 0)])
        refined = pd.factorize(pd.Series(list(zip(block, to[:, 0], to[:, 1]))))[0]
        if refined.max() == block.max():
            break
        block = refined
    block = pd.factorize(block)[0]  # the initial state's block first
    k = block.max() + 1
    nxt, output = np.full((k, 2), DEAD), np.empty(k, dtype=int)
    for s in range(len(a)):
        nxt[block[s]] = np.where(a.next[s] == DEAD, DEAD, block[np.maximum(a.next[s], 0)])
        output[block[s]] = a.output[s]
    return reachable(Automaton(nxt, output))


def minimise(a: Automaton) -> Automaton:
    """The smallest minimal automaton of `a`'s reachable part, an open initial output tried as each symbol."""
    a = reachable(a)
    if a.output[0] != OPEN:
        return moore(a)
    tries = [moore(Automaton(a.next, np.concatenate([[symbol], a.output[1:]]))) for symbol in (0, 1)]
    return min(tries, key=len)


@torch.no_grad()
def read_automaton(model: ParityRNN, batch: ParityBatch, eps_factor: float) -> tuple[Extracted, float]:
    """The automaton of a model on every prefix of a `prefixes` batch, and eps."""
    names, order = prefix_order(batch.bits.cpu(), batch.scored.cpu())
    states = model.hidden_at(batch.bits, batch.scored).cpu()[order]
    outputs = model.readout(states).argmax(-1).numpy()
    return extract(model.h0[0, 0].cpu(), states, [names[i] for i in order], outputs, eps_factor)


def diagram_rows(a: Automaton) -> list[dict]:
    out = [{"metric": "transition", "component": f"{s}>{symbol}", "value": float(t)}
           for s in range(len(a)) for symbol, t in enumerate(a.next[s]) if t != DEAD]
    return out + [{"metric": "state_output", "component": str(s), "value": float(o) if o != OPEN else float("nan")}
                  for s, o in enumerate(a.output)]


def rows(model: ParityRNN, batches: dict[str, ParityBatch], options: Options) -> list[dict]:
    out = []
    if "prefixes" in batches:
        found, eps = read_automaton(model, batches["prefixes"], options.eps_factor)
        small = minimise(found.automaton)
        out += [{"metric": "n_states", "value": float(len(found.automaton))},
                {"metric": "n_states_min", "value": float(len(small))},
                {"metric": "complete", "value": float(found.complete)},
                {"metric": "deterministic", "value": float(found.n_conflicts == 0)},
                {"metric": "n_conflicts", "value": float(found.n_conflicts)},
                {"metric": "eps", "value": eps}]
        if len(small) <= MAX_DRAWN:
            out += diagram_rows(small)
    with torch.no_grad():
        for ev, batch in batches.items():
            if ev == "prefixes":
                continue
            prefix = "train" if ev == "train" else "val"
            out += [{"metric": f"{prefix}_{k}", "evaluator": ev, "value": v} for k, v in scores(model, batch).items()]
    return out


def headline(rows: pd.DataFrame) -> str:
    value = dict(zip(rows.metric, rows.value))
    val = rows[rows.metric == "val_loss"]
    longest = f"  val loss {val.evaluator.iloc[-1]} {val.value.iloc[-1]:.3g}" if len(val) else ""
    return (f"{value.get('n_states', float('nan')):.0f} states, {value.get('n_states_min', float('nan')):.0f} "
            f"minimised, train loss {value.get('train_loss', float('nan')):.3g}{longest}")


ANALYSIS = Analysis("automaton", 1, {"rnn": rows}, "RNN: the automaton read from its hidden states (greedy grouping), "
                    "its minimised size, and the loss on long sequences", options=Options, headline=headline)
