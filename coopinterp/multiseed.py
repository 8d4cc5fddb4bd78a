"""Many seeds in one process: S independent models trained at once as stacked `[S, ...]` tensors.

Seed s follows the single-seed recipe of tasks/exemplar.py (`SingleSeed`): CoopModel(task, model, seed=s) init, its own data
generator seeded with s, Adam on its own slice (Adam is elementwise, so one Adam over stacked tensors is S
Adams), the same forgetting re-inits. Every seed writes OUT/seed_{s}/ in exactly the single-seed format
(run.json, checkpoints, metrics.parquet, state), going through one template CoopModel, so a seed directory
can be analysed, or resumed by `train`, like any other run. Results agree with single-seed runs up to float
rounding (batched matmuls sum in another order).

The forward is `CoopModel.fast_logits`'s own (fast_forward.attention_logits) on weights with a seed dim, which it runs
as batched matmuls, rather than `torch.func.vmap` over `CoopModel.fast_logits`: the two ran at the same speed on CPU,
but vmap has no batching rule for CPU attention (it falls back to a loop) and hides the gradient layout used below.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .checkpoints import ResumeState, save_checkpoint
from .config import RunConfig
from .fast_forward import attention_logits, linear
from .model import CoopModel
from .task import Batch, accuracy, loss, sample_train
from .learner import Results, forget_generator

EVAL_FLOATS = 2**25  # evaluate seeds in chunks whose logits stay under ~128 MB


def stacked_logits(w: dict[str, Tensor], n_heads: int, eps: float, exemplars: Float[Tensor, "S n pairs_plus_1 dim"],
                   label_embeds: Float[Tensor, "S n pairs d_model"]) -> Float[Tensor, "S n labels"]:
    """`CoopModel.fast_logits` for S models at once; `w` holds `weights()` tensors stacked on a seed dim.

    The embedding is built here; the blocks and unembedding are fast_forward.attention_logits, the single model's
    own forward, which runs S models as batched matmuls when its weights carry a seed dim."""
    x = linear(exemplars, w["exemplar_embed.weight"], w["exemplar_embed.bias"])
    h = torch.cat([torch.stack([x[:, :, :-1], label_embeds], 3).flatten(2, 3), x[:, :, -1:]], 2)
    h = h + w["pos_embed.weight"][:, None, : h.shape[2]]
    return attention_logits(w, h, n_heads, eps, query_only=True)


class SeedStack:
    """S models of one config as stacked tensors keyed by checkpoint names, one Adam over them, and one
    template CoopModel through which each seed's checkpoints and resume state are written in the
    single-seed format. A `training.Learner`."""

    def __init__(self, config: RunConfig, seeds: list[int], device: str):
        self.config, self.seeds, self.device = config, seeds, device
        task, mcfg = config.task, config.model
        self.shell = CoopModel(task, mcfg, seed=seeds[0]).to(device)
        per_seed = [CoopModel(task, mcfg, seed=s).weights() for s in seeds]
        names = {v.data_ptr(): k for k, v in self.shell.weights().items()}
        shell_params = [p for p in self.shell.parameters() if p.requires_grad]
        self.param_names = [names[p.data_ptr()] for p in shell_params]  # the optimizer's order, as in training.py
        self.w = {k: torch.stack([ws[k] for ws in per_seed]).to(device).requires_grad_(k in self.param_names)
                  for k in per_seed[0]}
        self.opt = torch.optim.Adam([self.w[k] for k in self.param_names], lr=config.train.lr, fused=True)
        self.shell_opt = torch.optim.Adam(shell_params, lr=config.train.lr, fused=True)  # a state container only
        self.eps = self.shell.bridge.ln_final.original_component.eps
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        emb = self.w["embed.weight"]
        emb.grad = torch.zeros_like(emb)
        self.row_offset = torch.arange(len(seeds), device=device)[:, None, None] * emb.shape[1]
        self.forward = stacked_logits  # e.g. torch.compile(stacked_logits) (benchmarks/bench_train.py times both)

    def __len__(self) -> int:
        return len(self.seeds)

    @torch.no_grad()
    def _to_shell(self, j: int) -> None:
        self.shell.load_weights({k: v[j] for k, v in self.w.items()})

    def save_checkpoint(self, j: int, run_dir: Path, step: int) -> None:
        t = self.config.train
        self._to_shell(j)
        save_checkpoint(run_dir, self.shell, step, step * t.batch_size, t.checkpoint_dtype)

    def save_state(self, j: int, run_dir: Path, step: int) -> None:
        self._to_shell(j)
        self.shell_opt.state.clear()
        for p, stacked in zip(self.shell_opt.param_groups[0]["params"], self.opt.param_groups[0]["params"]):
            if stacked in self.opt.state:
                st = self.opt.state[stacked]
                self.shell_opt.state[p] = {"step": st["step"], "exp_avg": st["exp_avg"][j],
                                           "exp_avg_sq": st["exp_avg_sq"][j]}
        ResumeState(run_dir).save(step, self.shell, self.shell_opt, self.gens[j])

    @torch.no_grad()
    def load_state(self, j: int, run_dir: Path) -> int:
        self.shell_opt.state.clear()
        step = ResumeState(run_dir).load(self.shell, self.shell_opt, self.gens[j])
        for k, v in self.shell.weights().items():
            self.w[k][j].copy_(v)
        for p, stacked in zip(self.shell_opt.param_groups[0]["params"], self.opt.param_groups[0]["params"]):
            if p in self.shell_opt.state:
                src = self.shell_opt.state[p]
                dst = self.opt.state.setdefault(stacked, {"exp_avg": torch.zeros_like(stacked),
                                                          "exp_avg_sq": torch.zeros_like(stacked)})
                dst["step"] = src["step"].clone()
                dst["exp_avg"][j].copy_(src["exp_avg"])
                dst["exp_avg_sq"][j].copy_(src["exp_avg_sq"])
        return step

    @torch.no_grad()
    def forget(self, step: int) -> None:
        """training.SingleSeed.forget for every seed: re-draw each seed's forgotten embedding, zero its Adam state."""
        target = self.config.train.forget_target
        own = self.shell.weights()
        forgotten = {p.data_ptr() for p in self.shell.forget_parameters(target)}
        names = [k for k, v in own.items() if v.data_ptr() in forgotten]
        for j, s in enumerate(self.seeds):
            self.shell.reset_embedding(target, forget_generator(s, step, self.shell.label_embedding.device))
            for name in names:
                self.w[name][j].copy_(own[name])
        for name in names:
            for value in self.opt.state.get(self.w[name], {}).values():
                value.zero_()

    def sample(self, step: int | None = None) -> tuple[Float[Tensor, "S n pairs_plus_1 dim"], Int[Tensor, "S n pairs"],
                                                     Int[Tensor, "S n"]]:
        """One training batch per seed at `step`, each from its own generator (the single-seed stream)."""
        batches = [sample_train(self.config.task, self.config.train.batch_size, g, step) for g in self.gens]
        return tuple(torch.stack([getattr(b, f) for b in batches]) for f in ("exemplars", "labels", "target"))

    def train_step(self, step: int | None = None) -> None:
        """One Adam step of every seed on its own training batch."""
        self.step_on(*self.sample(step))

    def step_on(self, exemplars: Float[Tensor, "S n pairs_plus_1 dim"], labels: Int[Tensor, "S n pairs"],
                target: Int[Tensor, "S n"]) -> None:
        """One Adam step of every seed on the sum of the per-seed mean losses."""
        emb = self.w["embed.weight"]
        d = emb.shape[-1]
        # The label embedding's gradient lives in one persistent buffer that is zeroed only on the rows a step
        # touched: autograd would allocate and zero the whole [S, labels, d] tensor every step (~15% of a step).
        rows = (labels + self.row_offset).flatten()
        lab = emb.detach().view(-1, d)[rows].view(*labels.shape, d).requires_grad_()
        logits = self.forward(self.w, self.config.model.n_heads, self.eps, exemplars, lab)
        per_seed = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(len(self), -1)
        for name in self.param_names:
            if name != "embed.weight":
                self.w[name].grad = None
        per_seed.mean(1).sum().backward()
        emb.grad.view(-1, d).index_add_(0, rows, lab.grad.view(-1, d))
        self.opt.step()
        emb.grad.view(-1, d).index_fill_(0, rows, 0)

    @torch.no_grad()
    def evaluate(self, batches: dict[str, Batch]) -> list[Results]:
        """training.evaluate for every seed, with one host sync at the end."""
        out: dict[str, dict[str, list[Tensor]]] = {name: {"acc": [], "loss": []} for name in batches}
        for name, batch in batches.items():
            chunk = max(1, EVAL_FLOATS // (len(batch) * self.config.task.labels))
            for a in range(0, len(self), chunk):
                w = {k: v[a: a + chunk] for k, v in self.w.items()}
                S = w["embed.weight"].shape[0]
                lab = w["embed.weight"][torch.arange(S, device=self.device)[:, None, None], batch.labels[None]]
                ex = batch.exemplars[None].expand(S, *batch.exemplars.shape)
                logits = stacked_logits(w, self.config.model.n_heads, self.eps, ex, lab)
                out[name]["acc"].append(accuracy(logits, batch))
                out[name]["loss"].append(loss(logits, batch))
        values = {name: {m: torch.cat(v).tolist() for m, v in ms.items()} for name, ms in out.items()}
        return [{name: {m: v[j] for m, v in ms.items()} for name, ms in values.items()} for j in range(len(self))]
