"""Training loop: Adam on the query loss, checkpoint schedule, evaluator logging, interventions, resume.

Resume is exact: the newest state (float32 weights, Adam moments, the data stream's RNG) is saved at
every evaluation, on Ctrl-C and at the end, and the forgetting re-inits draw from a generator seeded by
(seed, step), so an interrupted CPU run continues bit-identically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .checkpoints import (Run, list_checkpoints, load_run, load_tensors, read_run_config, save_checkpoint, save_tensors,
                          write_run_json)
from .config import RunConfig
from .errors import CoopError
from .model import CoopModel
from .tables import concat, read_table, table, write_table
from .task import EVALUATORS, Batch, accuracy, loss, make_batch, sample_train

EVAL_SEED = 10_000


class TrainingInterrupted(CoopError):
    """Ctrl-C during training; the state was saved and the same call resumes."""


def checkpoint_schedule(total_steps: int, n: int) -> list[int]:
    """Step 0, then log-spaced steps up to total/4 (fast early phase changes), then linear steps to the end."""
    n_linear = max(1, n // 3)
    n_log = max(1, n - 1 - n_linear)
    quarter = max(1, total_steps // 4)
    early = np.geomspace(max(1, total_steps // 500), quarter, n_log)
    late = np.linspace(quarter, total_steps, n_linear + 1)[1:]
    steps = {0, total_steps, *(int(round(s)) for s in early), *(int(round(s)) for s in late)}
    return sorted(s for s in steps if 0 <= s <= total_steps)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CoopError("--device cuda requested but no CUDA device is available")
    return device


def eval_batches(config: RunConfig, device: str) -> dict[str, Batch]:
    """Fixed evaluation batches (train classes, and holdout classes when the task has them)."""
    task, n = config.task, config.train.eval_n
    batches = {ev: make_batch(task, ev, n, seed=EVAL_SEED + i, device=device) for i, ev in enumerate(EVALUATORS)}
    if task.holdout_classes:
        for i, ev in enumerate(EVALUATORS):
            batches[f"{ev}/holdout"] = make_batch(task, ev, n, seed=EVAL_SEED + 100 + i, holdout=True, device=device)
    return batches


@torch.no_grad()
def evaluate(model: CoopModel, batches: dict[str, Batch]) -> dict[str, dict[str, float]]:
    out = {}
    for name, batch in batches.items():
        logits = model.fast_logits(batch.exemplars, batch.labels)
        out[name] = {"acc": accuracy(logits, batch).item(), "loss": loss(logits, batch).item()}
    return out


def _metric_rows(run_name: str, step: int, seqs: int, results: dict[str, dict[str, float]]) -> pd.DataFrame:
    return table({"run": run_name, "step": step, "seqs_seen": seqs, "analysis": "behavior", "metric": metric,
                  "evaluator": ev, "value": value}
                 for ev, vals in results.items() for metric, value in vals.items())


class _State:
    """Weights, Adam state and data RNG of the newest step, as one safetensors file (no pickle)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state" / "last.safetensors"

    def save(self, step: int, model: CoopModel, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
        tensors = {f"model.{k}": v.float().cpu() for k, v in model.weights().items()}
        for i, p in enumerate(opt.param_groups[0]["params"]):
            for key, value in opt.state.get(p, {}).items():
                tensors[f"opt.{i}.{key}"] = value.detach().cpu().reshape(value.shape)
        tensors["rng"] = gen.get_state().cpu()
        save_tensors(self.path, tensors, {"step": str(step)})

    def load(self, model: CoopModel, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
        tensors, meta = load_tensors(self.path)
        model.load_weights({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source=str(self.path))
        params = opt.param_groups[0]["params"]
        for i, p in enumerate(params):
            state = {k.split(".", 2)[2]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
            if state:
                opt.state[p] = state
        gen.set_state(tensors["rng"])
        return int(meta["step"])


def _prepare_dir(config: RunConfig, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CoopError(f"--out {out} exists and is not a directory")
    if (out / "run.json").exists():
        existing = read_run_config(out)
        if existing.to_dict() != config.to_dict():
            diff = _first_difference(existing.to_dict(), config.to_dict())
            raise CoopError(f"{out} holds a run with a different config ({diff}); resume it with the same config "
                            "or choose another output directory")
        if not _State(out).path.exists() and (list_checkpoints(out) or (out / "metrics.parquet").exists()):
            raise CoopError(f"{out} holds a run without resume state (state/last.safetensors), e.g. a shipped run; "
                            "training there would overwrite it: choose another output directory")
    elif out.is_dir() and any(out.iterdir()):
        raise CoopError(f"{out} is not empty and holds no coopinterp run; choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, config)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}: saved {va!r}, given {vb!r}"
    return ""


def progress_bar(enabled: bool) -> Progress:
    """The training progress bar: steps, time left, and the last evaluation's loss and accuracies."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), disable=not enabled)


def _forget_now(config: RunConfig, step: int) -> bool:
    t = config.train
    if t.forgetting == "none" or step == 0 or step % t.forget_every:
        return False
    return t.forgetting == "active" or step < t.forget_until


def forget_generator(seed: int, step: int) -> torch.Generator:
    """The generator of the forgetting re-init at `step`: a function of (seed, step), so resume is exact."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _forget(model: CoopModel, opt: torch.optim.Optimizer, target: str, seed: int, step: int) -> None:
    """Re-initialise the exemplar or label embedding and its Adam state (Anand et al.'s forgetting)."""
    model.reset_embedding(target, forget_generator(seed, step))
    for param in model.forget_parameters(target):
        for value in opt.state.get(param, {}).values():
            value.zero_()


def train(config: RunConfig, out_dir: str | Path, progress: bool = True, device: str | None = None) -> Run:
    """Train (or resume) a run into `out_dir`; returns the loaded Run."""
    config.validate()
    device = resolve_device(device)
    out = Path(out_dir)
    _prepare_dir(config, out)
    t = config.train

    model = CoopModel(config.task, config.model, seed=t.seed).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=t.lr, fused=True)
    gen = torch.Generator(device=device).manual_seed(t.seed)
    state = _State(out)
    start = state.load(model, opt, gen) if state.path.exists() else 0
    metrics_path = out / "metrics.parquet"
    metrics = read_table(metrics_path) if metrics_path.exists() and start else table([])
    metrics = metrics[metrics.step < start]

    schedule = set(checkpoint_schedule(t.steps, t.n_checkpoints))
    batches = eval_batches(config, device)
    seqs = lambda s: s * t.batch_size  # noqa: E731
    bar = progress_bar(progress)
    step = start
    with bar:
        task_id = bar.add_task(f"train {config.name}", total=t.steps, completed=start, stats="")
        try:
            while True:
                if step in schedule:
                    save_checkpoint(out, model, step, seqs(step), t.checkpoint_dtype)
                if step % t.eval_every == 0 or step == t.steps:
                    results = evaluate(model, batches)
                    metrics = concat([metrics, _metric_rows(config.name, step, seqs(step), results)])
                    write_table(metrics, metrics_path)
                    state.save(step, model, opt, gen)
                    bar.update(task_id, completed=step, stats=(
                        f"loss {results['train']['loss']:.3f}  icl {results['icl']['acc']:.2f}  "
                        f"ciwl {results['ciwl']['acc']:.2f}  flip {results['flip']['acc']:.2f}"))
                if step == t.steps:
                    break
                if _forget_now(config, step):
                    _forget(model, opt, t.forget_target, t.seed, step)
                batch = sample_train(config.task, t.batch_size, gen)
                train_loss = F.cross_entropy(model.fast_logits(batch.exemplars, batch.labels), batch.target)
                opt.zero_grad(set_to_none=True)
                train_loss.backward()
                opt.step()
                step += 1
                if step % 100 == 0:
                    bar.update(task_id, completed=step)
        except KeyboardInterrupt:
            write_table(metrics[metrics.step <= step], metrics_path)
            state.save(step, model, opt, gen)
            raise TrainingInterrupted(f"interrupted at step {step}; state saved in {out}, "
                                      "run the same command again to resume") from None
    return load_run(out)
