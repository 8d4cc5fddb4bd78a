"""The app's state and computations, apart from Dash: tests and timings call them directly."""
from __future__ import annotations

import threading
from functools import lru_cache, partial
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from ..analysis.engine import Head, check_head, check_mode
from ..errors import ConfigError
from ..runs import Run
from ..analysis.ablation import z_replacements
from .kinds import Scores, scorer_for


class Explorer:
    """A run, fixed evaluation batches and its kind's scorer: ablation results and attention patterns per choice.

    The batches are `run.batches(source, n, seed)`, the ones `ablate`, `patch` and `analyze` draw with the same
    options. Models, replacement values, results and patterns are cached, so revisiting a choice is instant.
    """

    def __init__(self, run: Run, n: int = 512, seed: int = 0, source: str | None = None):
        if n < 2:
            raise ConfigError(f"n must be >= 2, got {n}")
        self.scorer = scorer_for(run)
        run.source_key(source)  # a source the run cannot read fails before any model loads
        self.run, self.n, self.seed, self.source = run, n, seed, source
        run.cache_size = max(run.cache_size, len(run.steps))  # every checkpoint's model stays loaded once seen
        self.batches = run.batches(source, n, seed)
        self.cfg = run.model(run.steps[-1]).cfg  # n_layers, n_heads
        self.evaluate = lru_cache(maxsize=512)(self._evaluate)
        self.values = lru_cache(maxsize=16)(self._values)
        self.pattern = lru_cache(maxsize=512)(self._pattern)
        self.lock = threading.Lock()  # the server may run callbacks in parallel threads; models are shared

    def heads(self, names: Sequence[str]) -> tuple[Head, ...]:
        """Checklist values 'layer.head' -> sorted (layer, head) tuples."""
        heads = {(int(layer), int(head)) for layer, head in (name.split(".") for name in names)}
        return tuple(sorted(check_head(head, self.cfg) for head in heads))

    def _values(self, step: int, evaluator: str, mode: str) -> list[Float[Tensor, "n pos head d_head"]]:
        return z_replacements(self.run.model(step), self.batches[evaluator], mode, self.seed)

    def _evaluate(self, step: int, heads: tuple[Head, ...], mode: str) -> tuple[dict[str, Scores], dict[str, Scores]]:
        check_mode(mode)
        model = self.run.model(self.run.check_step(step))
        clean, ablated = {}, {}
        for ev, batch in self.batches.items():
            clean[ev], ablated[ev] = self.scorer.scores(model, batch, heads, mode, self.seed,
                                                        partial(self.values, step, ev, mode))
        return clean, ablated

    def update(self, step: int, heads: tuple[Head, ...], mode: str) -> tuple[dict[str, Scores], dict[str, Scores]]:
        """Every batch's clean and ablated scores at one (step, heads, mode), as `ablate` computes them."""
        with self.lock:
            return self.evaluate(step, heads, mode)

    def check_sequence(self, evaluator: str, index: int) -> None:
        if evaluator not in self.batches:
            raise ConfigError(f"no batch {evaluator!r}; choose from {', '.join(self.batches)}")
        if not 0 <= index < len(self.batches[evaluator]):
            raise ConfigError(f"sequence {index} is not in {evaluator}: 0-{len(self.batches[evaluator]) - 1}")

    @torch.no_grad()
    def _pattern(self, step: int, heads: tuple[Head, ...], mode: str, evaluator: str, index: int,
                 head: Head) -> Float[Tensor, "q k"]:
        """One head's attention on one sequence, with `heads` ablated as `ablate` ablates them: only those in
        layers below the head's can change it, each replaced by its value for this sequence."""
        check_mode(mode)
        self.check_sequence(evaluator, index)
        layer, h = check_head(head, self.cfg)
        upstream = [(at, k) for at, k in heads if at < layer]
        values = self.values(step, evaluator, mode) if upstream else []
        store = {}

        def put(z: Tensor, hook, at: int) -> Tensor:
            picked = [k for on, k in upstream if on == at]
            z[:, :, picked] = values[at][index:index + 1, :, picked]
            return z

        def grab(pattern: Tensor, hook) -> None:
            store["pattern"] = pattern[0, h]

        hooks = [(get_act_name("z", at), partial(put, at=at)) for at in sorted({at for at, _ in upstream})]
        model, row = self.run.model(self.run.check_step(step)), self.scorer.row(self.batches[evaluator], index)
        model.run_with_hooks(row, fwd_hooks=[*hooks, (get_act_name("pattern", layer), grab)])
        return store["pattern"]

    def attention(self, step: int, heads: tuple[Head, ...], mode: str, evaluator: str, index: int,
                  head: Head) -> tuple[Float[Tensor, "q k"], list[str]]:
        """The pattern of `_pattern` and the sequence's position labels."""
        with self.lock:
            pattern = self.pattern(step, heads, mode, evaluator, index, head)
            return pattern, self.scorer.labels(self.run.model(step), self.batches[evaluator], index)
