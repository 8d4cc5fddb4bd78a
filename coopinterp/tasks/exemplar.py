"""The exemplar-label task of the strategy-coopetition paper (arXiv 2503.05631) as a coopinterp task.

Its data (task.py: the exemplar bank, the five evaluators), its model (model.py: CoopModel) and its stacked
multi-seed trainer (multiseed.py) live in their own modules; this one declares the task: its presets, its
single-seed trainer (`SingleSeed`: the query loss, forgetting interventions) and what the registry asks of it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import ResumeState, save_checkpoint
from ..config import ModelConfig, RunConfig, TrainConfig
from ..errors import ConfigError
from ..learner import EVAL_SEED, Results, forget_generator
from ..model import CoopModel
from ..multiseed import SeedStack
from ..task import EVALUATORS, Batch, TaskConfig, accuracy, eval_batches, loss, make_batch, sample_train

PRESETS: dict[str, RunConfig] = {
    # The paper's configuration: 20M sequences at lr 1e-5, on the family task (Omniglot-like). Meant for a GPU.
    "paper": RunConfig(
        task=TaskConfig(n_classes=12_800, eps=0.5, family_size=8, family_delta=0.15),
        train=TrainConfig(steps=625_000, batch_size=32, lr=1e-5, n_checkpoints=64, eval_every=5_000),
        name="paper",
    ),
    # The shipped demo (checkpoints/demo): classes in families of 8, so the query's own embedding cannot memorise
    # all 12,800 classes; ICL first, then CIWL takes over. ~45 min on one idle CPU core (docs/results.md).
    "demo": RunConfig(
        task=TaskConfig(n_classes=12_800, eps=0.7, family_size=8, family_delta=0.15),
        train=TrainConfig(steps=400_000, batch_size=32, lr=3e-4, n_checkpoints=16,
                          checkpoint_dtype="float16", eval_every=1_000, eval_n=1_024),
        name="demo",
    ),
    # The phenomenon in under 3 minutes on one CPU core: the demo's task at half the classes (a cheaper
    # unembedding) and in 16 dimensions (in 64, CIWL formed first in 2 of seeds 0-2 at this class count). ICL
    # passes 0.8 by 4,000-5,000 steps in seeds 0-2; then CIWL rises from ~0.65 to ~0.85 and flip falls from ~0.8
    # towards the memorised answer (docs/results.md, "The quick preset").
    "quick": RunConfig(
        task=TaskConfig(n_classes=6_400, dim=16, eps=0.7, family_size=8, family_delta=0.15),
        train=TrainConfig(steps=24_000, batch_size=32, lr=3e-4, n_checkpoints=8,
                          checkpoint_dtype="float16", eval_every=1_000, eval_n=512),
        name="quick",
    ),
    # Trains in seconds; for tests and CI (it learns too little to show ICL: use quick for that).
    "tiny": RunConfig(
        task=TaskConfig(n_classes=64, n_labels=16, exemplars_per_class=8, dim=16, eps=0.3),
        model=ModelConfig(n_layers=2, n_heads=4, d_model=32, d_head=8),
        train=TrainConfig(steps=300, batch_size=32, lr=3e-3, n_checkpoints=6, eval_every=50, eval_n=256),
        name="tiny",
    ),
}


@torch.no_grad()
def evaluate(model: CoopModel, batches: dict[str, Batch]) -> Results:
    """Accuracy and loss of every batch, through the training forward."""
    out = {}
    for name, batch in batches.items():
        logits = model.fast_logits(batch.exemplars, batch.labels)
        out[name] = {"acc": accuracy(logits, batch).item(), "loss": loss(logits, batch).item()}
    return out


class SingleSeed:
    """One model, its Adam and its data stream (the seed of `config.train`): a training.Learner."""

    def __init__(self, config: RunConfig, device: str):
        t = config.train
        self.config, self.device = config, device
        self.model = CoopModel(config.task, config.model, seed=t.seed).to(device)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=t.lr, fused=True)
        self.gen = torch.Generator(device=device).manual_seed(t.seed)

    def __len__(self) -> int:
        return 1

    def load_state(self, j: int, run_dir: Path) -> int:
        return ResumeState(run_dir).load(self.model, self.opt, self.gen)

    def save_state(self, j: int, run_dir: Path, step: int) -> None:
        ResumeState(run_dir).save(step, self.model, self.opt, self.gen)

    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None:
        t = self.config.train
        save_checkpoint(run_dir, self.model, step, step * t.batch_size, t.checkpoint_dtype)

    def evaluate(self, batches: dict[str, Batch]) -> list[Results]:
        return [evaluate(self.model, batches)]

    def forget(self, step: int) -> None:
        """Re-initialise the exemplar or label embedding and its Adam state (Anand et al.'s forgetting)."""
        t = self.config.train
        self.model.reset_embedding(t.forget_target, forget_generator(t.seed, step, self.model.label_embedding.device))
        for param in self.model.forget_parameters(t.forget_target):
            for value in self.opt.state.get(param, {}).values():
                value.zero_()

    def train_step(self, step: int | None = None) -> None:
        batch = sample_train(self.config.task, self.config.train.batch_size, self.gen, step)
        train_loss = F.cross_entropy(self.model.fast_logits(batch.exemplars, batch.labels), batch.target)
        self.opt.zero_grad(set_to_none=True)
        train_loss.backward()
        self.opt.step()


class ExemplarTask:
    """The registry's view of the exemplar task (tasks.Task)."""

    kind = "exemplar"
    section = TaskConfig
    evaluators = EVALUATORS
    model_kinds = ("exemplar",)
    presets = PRESETS

    def build_model(self, config: RunConfig) -> CoopModel:
        return CoopModel(config.task, config.model, seed=config.train.seed)

    def batches(self, section: TaskConfig, source: str | None, n: int, seed: int, device: str) -> dict[str, Batch]:
        self.source_key(source)
        return eval_batches(section, n, seed, device)

    def source_key(self, source: str | None) -> None:
        if source is not None:
            raise ConfigError(f"--source {source!r} applies to token models; an exemplar-task run is evaluated on "
                              f"its task's evaluators ({', '.join(EVALUATORS)})")
        return None

    def learner(self, config: RunConfig, seeds: list[int] | None, device: str) -> SingleSeed | SeedStack:
        return SingleSeed(config, device) if seeds is None else SeedStack(config, seeds, device)

    def training_batches(self, config: RunConfig, device: str) -> dict[str, Batch]:
        """The evaluators on training classes, and on holdout classes when the task has them."""
        task, n = config.task, config.train.eval_n
        batches = {ev: make_batch(task, ev, n, seed=EVAL_SEED + i, device=device) for i, ev in enumerate(EVALUATORS)}
        if task.holdout_classes:
            for i, ev in enumerate(EVALUATORS):
                batches[f"{ev}/holdout"] = make_batch(task, ev, n, seed=EVAL_SEED + 100 + i, holdout=True,
                                                      device=device)
        return batches

    def progress(self, results: list[Results]) -> str:
        mean = {ev: sum(r[ev]["acc"] for r in results) / len(results) for ev in ("icl", "ciwl", "flip")}
        train_loss = sum(r["train"]["loss"] for r in results) / len(results)
        return f"loss {train_loss:.3f}  " + "  ".join(f"{ev} {v:.2f}" for ev, v in mean.items())


TASK = ExemplarTask()
