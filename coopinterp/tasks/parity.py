"""Streaming parity in a recurrent network (van Rossem & Saxe, ICML 2025): the RNN whose hidden states turn from a
memorising tree into the two-state parity automaton.

The task (section kind "parity"): binary sequences, the answer to a sequence the parity of its ones. The training
set is every sequence of length `min_train_len` .. `max_train_len` (2 + 4 + ... + 1,024 = 2,046 at 1 .. 10), of
which a fraction `data_fraction` is kept (a random subset fixed by the task seed). As in the authors' code
(loekvanrossem/rnn_structure, `parity/`), symbols are one-hot vectors, the target is the one-hot parity, and the
loss is the squared error (mean over the batch and both outputs) of the readout after the *last* symbol only: every
sequence is one example, and since all prefixes are examples too, every position is trained through them. An epoch
walks the lengths in order, each length's kept sequences shuffled into minibatches of `train.batch_size` (one
length per minibatch); a training step is one minibatch, a function of (train seed, step), so resume is exact.

The model (`ParityRNN`) is an Elman RNN (`nn.RNN`, ReLU by default, `hidden_size` units, h0 all ones) with a
linear readout to two outputs; weight matrices Xavier-normal with gain `init_gain`, biases zero; plain SGD. The
shared `model` section describes a transformer and has no say here: a parity run refuses any non-default value in
it (train.lr, batch_size and seed apply as usual). The hidden states pass a transformer-lens HookPoint
(`hook_hidden`, [n, pos, hidden]) before the readout: a hook there edits what the readout sees, not the recurrence.

Evaluation batches (`ParityBatch`): `train` (the kept training sequences), `prefixes` (every sequence of length
1 .. max_train_len: what the automaton is read from) and `len_L` for each validation length L (random sequences;
at most LONG_TOKENS / L of them, so that 10,000 steps stay cheap). All are scored only at the marked positions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..config import ModelConfig, RunConfig, TrainConfig, check
from ..errors import ConfigError
from ..learner import EVAL_SEED, Results, SeedModels
from ..model import check_weights_match

LONG_TOKENS = 200_000  # a validation batch of length L holds at most this many symbols (>= 16 sequences)
CHUNK = 1_000  # long sequences run through the RNN this many steps at a time, the hidden state carried over


@dataclass(frozen=True)
class ParityTaskConfig:
    """The parity task's config section (docs/parity.md)."""

    hidden_size: int = 100  # RNN units
    init_gain: float = 0.1  # Xavier-normal gain of the weight matrices: the initial scale
    nonlinearity: str = "relu"  # "relu" or "tanh"
    min_train_len: int = 1
    max_train_len: int = 10
    data_fraction: float = 1.0  # fraction of the training sequences kept
    val_lengths: str = "50,100,1000,10000"  # comma-separated validation lengths
    seed: int = 0  # seeds the kept subset and the validation sequences
    kind: str = "parity"  # the task section's tag (coopinterp.tasks)

    @property
    def seq_len(self) -> int:
        return self.max_train_len

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.val_lengths.split(","))

    def validate(self) -> None:
        check(self.hidden_size >= 1, f"hidden_size must be >= 1, got {self.hidden_size}")
        check(self.init_gain > 0, f"init_gain must be > 0, got {self.init_gain}")
        check(self.nonlinearity in ("relu", "tanh"),
              f"nonlinearity must be 'relu' or 'tanh', got {self.nonlinearity!r}")
        check(1 <= self.min_train_len <= self.max_train_len <= 16,
              f"need 1 <= min_train_len <= max_train_len <= 16, got {self.min_train_len}, {self.max_train_len}")
        check(0 < self.data_fraction <= 1, f"data_fraction must be in (0, 1], got {self.data_fraction}")
        try:
            ok = all(n >= 1 for n in self.lengths)
        except ValueError:
            ok = False
        check(ok, f"val_lengths must be comma-separated positive integers, got {self.val_lengths!r}")


@dataclass(frozen=True)
class ParityBatch:
    """Bit sequences scored at the marked positions (the end of each example)."""

    bits: Int[Tensor, "n pos"]
    scored: Bool[Tensor, "n pos"]
    evaluator: str

    def to(self, device: str) -> "ParityBatch":
        return ParityBatch(self.bits.to(device), self.scored.to(device), self.evaluator)

    @property
    def targets(self) -> Int[Tensor, " m"]:
        """The parity of each scored prefix."""
        return (self.bits.cumsum(1) % 2)[self.scored]


def all_sequences(length: int) -> Int[Tensor, "seqs length"]:
    """Every bit sequence of `length`, in lexicographic order (first symbol most significant)."""
    powers = 2 ** torch.arange(length - 1, -1, -1)
    return (torch.arange(2 ** length)[:, None] // powers) % 2


def prefix_marks(length: int, lengths: range) -> Bool[Tensor, "seqs length"]:
    """Marks over all_sequences(length) that score each distinct prefix of a length in `lengths` once: the prefix
    of length l is read from the sequence that extends it with zeros."""
    ends = torch.arange(2 ** length)[:, None] % 2 ** (length - torch.arange(1, length + 1)) == 0
    keep = torch.zeros(length, dtype=torch.bool)
    keep[[l - 1 for l in lengths]] = True
    return ends & keep


@functools.lru_cache(maxsize=8)
def kept(task: ParityTaskConfig) -> Bool[Tensor, "seqs L"]:
    """The training sequences kept, as marks over all_sequences(max_train_len): a random `data_fraction` of every
    sequence of the training lengths (at least one), fixed by the task seed."""
    marks = prefix_marks(task.max_train_len, range(task.min_train_len, task.max_train_len + 1))
    where = marks.nonzero()
    n = max(1, round(task.data_fraction * len(where)))
    chosen = where[torch.randperm(len(where), generator=torch.Generator().manual_seed(task.seed))[:n]]
    out = torch.zeros_like(marks)
    out[chosen[:, 0], chosen[:, 1]] = True
    return out


def make_batches(task: ParityTaskConfig, n: int, seed: int, with_prefixes: bool = True) -> dict[str, ParityBatch]:
    """`train`, `prefixes` (with_prefixes) and one `len_L` batch per validation length (min(n, LONG_TOKENS // L)
    random sequences, at least 16, drawn from (task seed, seed))."""
    L = task.max_train_len
    full = all_sequences(L)
    out = {"train": ParityBatch(full, kept(task).clone(), "train")}
    if with_prefixes:
        out["prefixes"] = ParityBatch(full, prefix_marks(L, range(1, L + 1)), "prefixes")
    g = torch.Generator().manual_seed(task.seed * 1_000_003 + seed)
    for length in task.lengths:
        m = min(n, max(16, LONG_TOKENS // length))
        scored = torch.zeros(m, length, dtype=torch.bool)
        scored[:, -1] = True
        out[f"len_{length}"] = ParityBatch(torch.randint(2, (m, length), generator=g), scored, f"len_{length}")
    return out


class ParityRNN(HookedRootModule):
    """Elman RNN over one-hot bits with a linear readout of two outputs (the one-hot parity)."""

    model_kinds = ("rnn", "outputs")  # the automaton analysis, then any analysis of outputs on the probe batches

    def __init__(self, task: ParityTaskConfig, seed: int = 0):
        super().__init__()
        self.task = task
        self.rnn = nn.RNN(2, task.hidden_size, nonlinearity=task.nonlinearity, batch_first=True)
        self.readout = nn.Linear(task.hidden_size, 2)
        self.hook_hidden = HookPoint()
        self.register_buffer("h0", torch.ones(1, 1, task.hidden_size))
        self.reset_parameters(seed)
        self.setup()

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for p in list(self.rnn.parameters()) + list(self.readout.parameters()):
            if p.dim() == 2:
                nn.init.xavier_normal_(p, gain=self.task.init_gain, generator=g)
            else:
                nn.init.zeros_(p)

    def hidden(self, bits: Int[Tensor, "n pos"], h: Float[Tensor, "1 n hidden"] | None = None
               ) -> Float[Tensor, "n pos hidden"]:
        """The hidden state after every symbol (from h0, or from `h`)."""
        h = self.h0.expand(1, bits.shape[0], -1).contiguous() if h is None else h
        return self.rnn(F.one_hot(bits, 2).float(), h)[0]

    def forward(self, bits: Int[Tensor, "n pos"]) -> Float[Tensor, "n pos 2"]:
        return self.readout(self.hook_hidden(self.hidden(bits)))

    def hidden_at(self, bits: Int[Tensor, "n pos"], scored: Bool[Tensor, "n pos"]) -> Float[Tensor, "m hidden"]:
        """The hidden states at the scored positions, in row-major order, running CHUNK steps at a time (so that a
        long sequence never holds every hidden state at once)."""
        picked, where, h = [], [], None
        for start in range(0, bits.shape[1], CHUNK):
            states = self.hidden(bits[:, start:start + CHUNK], h)
            h = states[:, -1][None].contiguous()
            marks = scored[:, start:start + CHUNK]
            picked.append(states[marks])
            rows, cols = marks.nonzero().unbind(1)
            where.append(rows * bits.shape[1] + start + cols)
        return torch.cat(picked)[torch.cat(where).argsort()]

    def outputs(self, batches: dict[str, ParityBatch]) -> Float[Tensor, "n k"]:
        """The readout at every scored position of every batch (one row per example)."""
        return torch.cat([self.readout(self.hook_hidden(self.hidden_at(b.bits, b.scored))) for b in batches.values()])

    def weights(self) -> dict[str, Tensor]:
        """The RNN's and the readout's tensors (h0 is fixed): the checkpoint format."""
        return {k: v.detach() for k, v in self.state_dict().items() if k != "h0"}

    @torch.no_grad()
    def load_weights(self, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
        own = self.weights()
        check_weights_match(own, weights, source)
        self.load_state_dict({**{k: v.to(own[k].dtype) for k, v in weights.items()}, "h0": self.h0}, strict=True)


def scores(model: ParityRNN, batch: ParityBatch) -> dict[str, float]:
    """Loss and accuracy (the larger output names the parity) of a batch."""
    out = model.readout(model.hook_hidden(model.hidden_at(batch.bits, batch.scored)))
    target = batch.targets
    return {"loss": F.mse_loss(out, F.one_hot(target, 2).float()).item(),
            "acc": (out.argmax(-1) == target).float().mean().item()}


def epoch_batches(task: ParityTaskConfig, batch_size: int) -> list[tuple[int, int, int]]:
    """(length, first, last) of every minibatch of an epoch: the lengths in order, each length's kept sequences in
    runs of batch_size."""
    counts = kept(task).sum(0).tolist()
    return [(length, i, min(i + batch_size, count)) for length, count in enumerate(counts, 1)
            for i in range(0, count, batch_size)]


def training_batch(task: ParityTaskConfig, batch_size: int, seed: int, step: int) -> Int[Tensor, "b length"]:
    """The minibatch of a training step: its epoch and place from the step, its length's kept sequences shuffled by
    a generator of (seed, epoch, length)."""
    plan = epoch_batches(task, batch_size)
    epoch, (length, lo, hi) = step // len(plan), plan[step % len(plan)]
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 64 + length)
    rows = kept(task)[:, length - 1].nonzero().squeeze(1)
    rows = rows[torch.randperm(len(rows), generator=g)[lo:hi]]
    return all_sequences(task.max_train_len)[rows, :length]


class ParitySeeds(SeedModels):
    """One ParityRNN per seed, each with its own SGD (a training.Learner); the data stream is a function of the
    step, so nothing but the weights needs saving to resume."""

    def __init__(self, config: RunConfig, seeds: list[int], device: str):
        if config.train.forgetting != "none":
            raise ConfigError("the parity task has no forgetting intervention")
        self.config, self.seeds, self.device = config, seeds, device
        self.models = [ParityRNN(config.task, seed=s).to(device) for s in seeds]
        self.opts = [torch.optim.SGD(m.parameters(), lr=config.train.lr) for m in self.models]
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]  # ResumeState's slot; the stream needs none
        self.step = 0

    def load_state(self, j: int, run_dir: Path) -> int:
        self.step = super().load_state(j, run_dir)
        return self.step

    @torch.no_grad()
    def evaluate(self, batches: dict[str, ParityBatch]) -> list[Results]:
        return [{ev: scores(m, b) for ev, b in batches.items()} for m in self.models]

    def forget(self, step: int) -> None:
        raise ConfigError("the parity task has no forgetting intervention")

    def train_step(self, step: int | None = None) -> None:
        step = self.step if step is None else step
        for model, opt, seed in zip(self.models, self.opts, self.seeds):
            bits = training_batch(self.config.task, self.config.train.batch_size, seed, step).to(self.device)
            out = model.readout(model.hidden(bits)[:, -1])
            loss = F.mse_loss(out, F.one_hot(bits.sum(1) % 2, 2).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.step = step + 1


PRESETS: dict[str, RunConfig] = {
    # The paper's settings (docs/parity.md): 100 ReLU units, gain 0.1, SGD lr 0.02, batch 128, lengths 1-10; 21
    # steps make an epoch.
    "parity": RunConfig(
        task=ParityTaskConfig(),
        train=TrainConfig(steps=21_000, batch_size=128, lr=0.02, n_checkpoints=100, eval_every=210, eval_n=100),
        name="parity",
    ),
    # Parity in seconds, for tests: 16 units, lengths 1-6, a few checkpoints.
    "parity-tiny": RunConfig(
        task=ParityTaskConfig(hidden_size=16, max_train_len=6, val_lengths="20,200"),
        train=TrainConfig(steps=40, batch_size=16, lr=0.02, n_checkpoints=4, eval_every=10, eval_n=16),
        name="parity-tiny",
    ),
}


def check_model_section(config: RunConfig) -> None:
    """The shared model section describes a transformer: a parity run takes it only at its defaults."""
    check(config.model == ModelConfig(), "the parity task's model is set by its task section (hidden_size, "
          "init_gain, nonlinearity); leave the model section at its defaults")


class ParityTask:
    """The registry's view of the parity task (tasks.Task): its own batches only."""

    kind = "parity"
    section = ParityTaskConfig
    evaluators = ("train", "prefixes")
    model_kinds = ParityRNN.model_kinds
    presets = PRESETS

    def build_model(self, config: RunConfig) -> ParityRNN:
        check_model_section(config)
        return ParityRNN(config.task, seed=config.train.seed)

    def batches(self, section: ParityTaskConfig, source: str | None, n: int, seed: int,
                device: str) -> dict[str, ParityBatch]:
        check(source in (None, "parity"), f"the parity task reads only its own sequences, not source {source!r}")
        return {k: b.to(device) for k, b in make_batches(section, n, seed).items()}

    def source_key(self, source: str | None) -> str | None:
        check(source in (None, "parity"), f"the parity task reads only its own sequences, not source {source!r}")
        return None

    def learner(self, config: RunConfig, seeds: list[int] | None, device: str) -> ParitySeeds:
        check_model_section(config)
        return ParitySeeds(config, [config.train.seed] if seeds is None else seeds, device)

    def training_batches(self, config: RunConfig, device: str) -> dict[str, ParityBatch]:
        batches = make_batches(config.task, config.train.eval_n, EVAL_SEED, with_prefixes=False)
        return {k: batches[k].to(device) for k in ("train", f"len_{config.task.lengths[0]}")}

    def progress(self, results: list[Results]) -> str:
        return "  ".join(f"{ev} loss {sum(r[ev]['loss'] for r in results) / len(results):.4f}" for ev in results[0])


TASK = ParityTask()
