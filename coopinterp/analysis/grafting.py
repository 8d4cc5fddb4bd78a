"""Weight grafting between checkpoints: which weights carry a strategy.

`graft` copies a recipient model with some parameter groups taken from a donor. The paper shows that Layer 2
(here layer 1) is conserved by grafting: `graft_out` puts the end-of-training layer 1 into an early checkpoint
(ICL should still work: the late layer 1 can still do induction), `graft_in` puts an early layer 1 into the
final checkpoint (the converse).
"""
from __future__ import annotations

from typing import Sequence


from ..errors import ConfigError
from ..model import CoopModel


def param_groups(model: CoopModel) -> dict[str, list[str]]:
    """Graftable parameter groups -> their names in `CoopModel.weights()`."""
    names = list(model.weights())
    groups = {f"layer{layer}": [k for k in names if k.startswith(f"blocks.{layer}.")]
              for layer in range(model.cfg.n_layers)}
    prefixes = {"label_embedding": "embed.", "unembed": "unembed.", "exemplar_embed": "exemplar_embed.",
                "pos": "pos_embed.", "ln_final": "ln_final."}
    return groups | {group: [k for k in names if k.startswith(p)] for group, p in prefixes.items()}


def graft(recipient: CoopModel, donor: CoopModel, groups: Sequence[str]) -> CoopModel:
    """A copy of `recipient` (eval mode) with the parameter `groups` taken from `donor`."""
    valid = param_groups(recipient)
    unknown = [g for g in groups if g not in valid]
    if unknown or not groups:
        raise ConfigError(f"unknown parameter group {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(valid)}")
    weights, donated = recipient.weights(), donor.weights()
    for name in (n for g in groups for n in valid[g]):
        weights[name] = donated[name]
    model = CoopModel(recipient.task, recipient.cfg)
    model.load_weights(weights, source="grafted weights")
    return model.to(recipient.W_U.device).eval().requires_grad_(False)


def graft_out(early: CoopModel, late: CoopModel, layer: int = 1) -> CoopModel:
    """The early checkpoint with the late checkpoint's `layer` (default: layer 1, the paper's Layer 2)."""
    return graft(early, late, [f"layer{layer}"])


def graft_in(early: CoopModel, late: CoopModel, layer: int = 1) -> CoopModel:
    """The late checkpoint with the early checkpoint's `layer`."""
    return graft(late, early, [f"layer{layer}"])
