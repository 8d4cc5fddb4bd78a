"""The paper's whole-model checks at every checkpoint: the direct path, and layer 1's K/V/Q reading of layer 0.

Rows (acc and loss on every evaluator), by `component`:
  direct_only            only the query's embedding reaches the unembedding (pure memorisation through it)
  direct_cut             the query's embedding path removed, attention outputs kept
  l0_zero_in_{c}         every layer-0 head zeroed in layer 1's c input only (c in q, k, v, qkv), the paper's
                         K/V/Q check; everything else clean
  l0_zero_in_{c}/cut     the same with the direct path cut, so memorisation cannot answer around the circuit
"""
from __future__ import annotations

import torch

from ..model import CoopModel
from ..task import Batch
from .engine import Engine
from .patching import COMPONENTS, path_patch
from .record import Analysis

CHECK_COMPONENTS = (*COMPONENTS, "qkv")


@torch.no_grad()
def rows(model: CoopModel, batches: dict[str, Batch]) -> list[dict]:
    engine, every, out = Engine(model), [list(range(model.cfg.n_heads))], []
    for ev, batch in batches.items():
        resid = model.residual(batch)
        scores = {f"direct_{d}": engine.score(engine.forward(resid, direct_path=d)[0], batch) for d in ("only", "cut")}
        for direct_path, suffix in (("keep", ""), ("cut", "/cut")):
            patched = path_patch(model, batch, every, every, CHECK_COMPONENTS, "zero", direct_path=direct_path)
            for i, c in enumerate(CHECK_COMPONENTS):
                scores[f"l0_zero_in_{c}{suffix}"] = {m: v[i, 0, 0] for m, v in patched.items()}
        for component, metrics in scores.items():
            out += [{"evaluator": ev, "component": component, "metric": m, "value": float(v)}
                    for m, v in metrics.items()]
    return out


ANALYSIS = Analysis("paper_checks", 1, {"exemplar": rows}, "the paper's protocols: K/V/Q check, copier sweep, grafts, direct path")
