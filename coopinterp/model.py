"""CoopModel: exemplar and label embeddings in, a transformer-lens 4.x bridge inside, logits at the query out.

The bridge (`TransformerBridge.boot_native`) owns every transformer weight under TL's names, so TL hooks
(`blocks.{l}.attn.hook_pattern`, ...) and weight views (`W_Q`, `OV`, ...) work unchanged. Exemplars are
continuous, so the residual stream is built here and fed in with `start_at_layer=0`, which skips TL's
embedding step; positions are therefore added here, from the bridge's own `pos_embed` weight.

Training and logging use `fast_logits`, a plain-torch forward over the very same parameter tensors
(fast_forward.attention_logits, shared with the Markov model and multiseed's stacked seeds): the bridge's hook
wrappers cost ~2x per training step (measured: docs/speed.md) and training needs no hooks. Tests keep the two forwards
equal in logits and gradients.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

from .config import ModelConfig
from .errors import CheckpointError
from .fast_forward import attention_logits, bridge_weights
from .task import Batch, TaskConfig

WEIGHT_VIEWS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "b_O", "W_U", "b_U", "QK", "OV")


def _boot(task: TaskConfig, cfg: ModelConfig) -> nn.Module:
    # transformer-lens is imported here, when the first model is built: importing it costs seconds, which
    # commands that only read run directories (`info`, `plot` from a table) should not pay.
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    bridge_cfg = TransformerBridgeConfig(
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, d_head=cfg.d_head,
        attn_only=True, normalization_type="LN", d_vocab=task.labels, n_ctx=task.seq_len,
        positional_embedding_type="standard", init_weights=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_native(bridge_cfg)


class CoopModel(nn.Module):
    """The paper's attention-only transformer on exemplar-label sequences."""

    model_kinds = ("exemplar",)  # the analyses' row functions it takes (analysis/record.py)

    def __init__(self, task: TaskConfig, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.task, self.cfg = task, cfg
        self.bridge = _boot(task, cfg)
        self.exemplar_embed = nn.Linear(task.dim, cfg.d_model)
        head = self.bridge.unembed.original_component
        # The bridge gives the head a fixed zero bias buffer; the paper trains an unembedding bias.
        bias = head._buffers.pop("bias")
        head.bias = nn.Parameter(bias.detach().clone())
        for lin in self._attn_linears():  # the paper has no bias on q, k, v or the output projection
            lin.bias.requires_grad_(False)
        self.reset_parameters(seed)

    def trained_parameters(self) -> list[nn.Parameter]:
        """What training optimises: every parameter but the q, k, v and output biases (zero in the paper's model)."""
        fixed = {id(lin.bias) for lin in self._attn_linears()}
        return [p for p in self.parameters() if id(p) not in fixed]

    def _attn_linears(self) -> list[nn.Linear]:
        return [getattr(b.attn, name).original_component for b in self.bridge.blocks for name in ("q", "k", "v", "o")]

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """The paper repo's initialisation (lecun-normal linears, zero biases) or torch's defaults."""
        g = torch.Generator().manual_seed(seed)
        for lin in [self.exemplar_embed, self.bridge.unembed.original_component, *self._attn_linears()]:
            self._init_linear(lin, g)
        if self.cfg.init == "paper":
            nn.init.uniform_(self.pos_embedding, -(32 ** -0.5), 32 ** -0.5, generator=g)
        else:
            nn.init.normal_(self.pos_embedding, std=0.02, generator=g)
        self.reset_label_embedding(g)
        for norm in [b.ln1.original_component for b in self.bridge.blocks] + [self.bridge.ln_final.original_component]:
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    @torch.no_grad()
    def reset_label_embedding(self, generator: torch.Generator) -> None:
        nn.init.trunc_normal_(self.label_embedding, std=0.02, generator=generator)

    def _init_linear(self, lin: nn.Linear, generator: torch.Generator) -> None:
        """lecun-normal weight (paper) or torch's default, zero bias."""
        if self.cfg.init == "paper":
            nn.init.normal_(lin.weight, std=lin.in_features ** -0.5, generator=generator)
        else:
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(lin.bias)

    @torch.no_grad()
    def reset_exemplar_embedding(self, generator: torch.Generator) -> None:
        """Re-draw the content (exemplar) embedding as at initialisation: forgetting's content reset."""
        self._init_linear(self.exemplar_embed, generator)

    def forget_parameters(self, target: str) -> list[nn.Parameter]:
        """The parameters a forgetting reset of `target` ("exemplar" or "label") re-draws."""
        return [self.exemplar_embed.weight, self.exemplar_embed.bias] if target == "exemplar" else [self.label_embedding]

    def reset_embedding(self, target: str, generator: torch.Generator) -> None:
        (self.reset_exemplar_embedding if target == "exemplar" else self.reset_label_embedding)(generator)

    @property
    def label_embedding(self) -> nn.Parameter:
        return self.bridge.embed.original_component.weight

    @property
    def pos_embedding(self) -> nn.Parameter:
        return self.bridge.pos_embed.original_component.weight

    def embed(self, exemplars: Float[Tensor, "n pairs_plus_1 dim"],
              labels: Int[Tensor, "n pairs"]) -> Float[Tensor, "n pos d_model"]:
        """Interleave exemplar and label embeddings into `[x_0, l_0, ..., x_q]`, without positions."""
        x = self.exemplar_embed(exemplars)
        lab = self.label_embedding[labels]
        pairs = torch.stack([x[:, :-1], lab], 2).flatten(1, 2)
        return torch.cat([pairs, x[:, -1:]], 1)

    def residual(self, batch: Batch) -> Float[Tensor, "n pos d_model"]:
        """The stream entering block 0 (`blocks.0.hook_resid_pre`): embeddings plus positions."""
        h = self.embed(batch.exemplars, batch.labels)
        return h + self.pos_embedding[: h.shape[1]]

    def forward(self, batch: Batch) -> Float[Tensor, "n labels"]:
        """Hooked forward through the TL bridge; logits at the query."""
        return self.bridge(self.residual(batch), start_at_layer=0)[:, -1]

    def fast_logits(self, exemplars: Float[Tensor, "n pairs_plus_1 dim"],
                    labels: Int[Tensor, "n pairs"]) -> Float[Tensor, "n labels"]:
        """The same function as `forward`, without hooks (training and logging): fast_forward.attention_logits.

        Hand-written rather than TL's forward because the hook wrappers double a training step's cost;
        the last block computes only the query position, the only one the loss reads.
        """
        h = self.embed(exemplars, labels)
        h = h + self.pos_embedding[: h.shape[1]]
        return attention_logits(bridge_weights(self.bridge), h, self.cfg.n_heads,
                                self.bridge.ln_final.original_component.eps, query_only=True)

    def run_with_cache(self, batch: Batch, **kwargs) -> tuple[Float[Tensor, "n labels"], object]:
        logits, cache = self.bridge.run_with_cache(self.residual(batch), start_at_layer=0, **kwargs)
        return logits[:, -1], cache

    def run_with_hooks(self, batch: Batch, fwd_hooks=(), **kwargs) -> Float[Tensor, "n labels"]:
        logits = self.bridge.run_with_hooks(self.residual(batch), fwd_hooks=list(fwd_hooks), start_at_layer=0,
                                            **kwargs)
        return logits[:, -1]

    def weights(self) -> dict[str, Tensor]:
        """All weights under TL's names plus `exemplar_embed.*`: the checkpoint format."""
        sd = {k: v for k, v in self.bridge.state_dict().items()}
        sd["exemplar_embed.weight"] = self.exemplar_embed.weight
        sd["exemplar_embed.bias"] = self.exemplar_embed.bias
        return {k: v.detach() for k, v in sd.items()}

    @torch.no_grad()
    def load_weights(self, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Load `weights()`-format tensors, upcasting; a missing, extra or misshapen tensor is an error."""
        own = self.weights()
        check_weights_match(own, weights, source)
        tl_part = {k: v.to(own[k].dtype) for k, v in weights.items() if not k.startswith("exemplar_embed.")}
        self.bridge.load_state_dict(tl_part, strict=True)
        self.exemplar_embed.weight.copy_(weights["exemplar_embed.weight"])
        self.exemplar_embed.bias.copy_(weights["exemplar_embed.bias"])


def check_weights_match(own: dict[str, Tensor], weights: dict[str, Tensor], source: str) -> None:
    """A checkpoint's tensors against the model's: a missing, extra or misshapen one is a one-line CheckpointError."""
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or extra:
        raise CheckpointError(f"{source} does not match the model: missing {missing[:4]}, unexpected {extra[:4]}")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(value.shape)}, "
                                  f"the run's config needs {tuple(own[name].shape)}")


def _weight_view(name: str) -> property:
    return property(lambda self: getattr(self.bridge, name), doc=f"TL weight view `{name}` of the bridge.")


for _name in WEIGHT_VIEWS:
    setattr(CoopModel, _name, _weight_view(_name))
