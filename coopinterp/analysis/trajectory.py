"""Essential dynamics: stage boundaries read from the model's outputs alone (Hoogland et al. 2024, arXiv 2402.02364).

Per checkpoint, the model's outputs on the fixed evaluation batches (the same sequences at every step):
  exemplar models  the log-probabilities at the query of the context labels and the true label, then of `columns`
                   fixed random label columns (all labels when there are no more than `columns`);
  token models     at every scored position, the log-probability of the actual next token, then of `columns` fixed
                   random vocabulary columns (the whole vocabulary when it has no more than `columns` tokens);
  "outputs" models whatever `model.outputs(batches)` returns (n x k).
Over the whole run (`across`): every step's outputs, flattened, are one point; the points are centred across steps
and projected on their top principal components; the projected trajectory is smoothed with a Gaussian in the index
of checkpoints (not in steps: on log-spaced checkpoints the index is the log-step); at each interior checkpoint the
turning angle (between the segments in and out) and the curvature of the circle through it and its two neighbours
(the discrete osculating circle) are computed in the space of all kept components and, signed, in the planes of the
first three. A local maximum of the turning angle above `min_turn` degrees is a candidate stage boundary, a cusp if
the turn is at least `cusp_turn` degrees (the trajectory nearly reverses, where the circle's curvature says little:
three nearly collinear points). Turns along segments shorter than `min_move` of the trajectory's diameter are noise
and are not marked. The speed (each segment's share of the path's length, before smoothing) shows jumps, which are
not turns. Rows: docs/reference.md, "The table"; how to read them: docs/trajectory.md.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import ConfigError
from ..model import CoopModel
from ..sources import TokenBatch
from ..task import Batch
from ..token_model import TokenModel
from .engine import Engine
from .forwards import LOGITS_BUDGET, clean_run
from .record import Analysis

PLANES = 3  # curvature is also reported, signed, in every plane of the first this many components


@dataclass(frozen=True)
class Options:
    per_step: ClassVar[tuple[str, ...]] = ("columns", "seed")  # what the per-step outputs depend on (cache.py)

    components: int = 3  # principal components kept (at most the number of steps - 1)
    smooth: float = 1.0  # Gaussian width in checkpoints (0: no smoothing)
    columns: int = 16  # random output columns kept beside the answer's (module docstring)
    seed: int = 0  # picks the random columns
    min_turn: float = 20.0  # degrees: a local maximum of the turning angle at least this is a stage boundary
    cusp_turn: float = 135.0  # degrees: a boundary whose turn is at least this is a cusp
    min_move: float = 0.02  # both segments at a boundary are at least this share of the trajectory's diameter

    def __post_init__(self):
        checks = [(self.components >= 1, f"components must be >= 1, got {self.components}"),
                  (self.smooth >= 0, f"smooth must be >= 0, got {self.smooth}"),
                  (self.columns >= 0, f"columns must be >= 0, got {self.columns}"),
                  (0 <= self.min_turn <= self.cusp_turn <= 180,
                   f"need 0 <= min_turn <= cusp_turn <= 180 degrees, got {self.min_turn} and {self.cusp_turn}"),
                  (0 <= self.min_move < 1, f"min_move must be in [0, 1), got {self.min_move}")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"trajectory option {message}")


# --- per checkpoint: the outputs on the probe set ----------------------------------------------------------------

def reduced(logp: Float[Tensor, "n width"], answers: Int[Tensor, "n a"], options: Options) -> Float[Tensor, "n k"]:
    """The answers' log-probabilities and those of `options.columns` fixed random columns (every column when the
    output is no wider): a fixed reduction of a wide output."""
    width = logp.shape[-1]
    if width <= options.columns:
        return logp
    picked = torch.randperm(width, generator=torch.Generator().manual_seed(options.seed))[: options.columns]
    return torch.cat([logp.gather(-1, answers), logp[:, picked.to(logp.device)]], -1)


def exemplar_outputs(model: CoopModel, batches: dict[str, Batch], options: Options) -> Float[Tensor, "rows k"]:
    engine, parts = Engine(model), []
    for ev in sorted(batches):
        batch = batches[ev]
        logp = engine.logits(clean_run(model, batch).hidden).log_softmax(-1)
        parts.append(reduced(logp, torch.cat([batch.labels, batch.query_label[:, None]], 1), options))
    return torch.cat(parts).float()


def token_outputs(model: TokenModel, batches: dict[str, TokenBatch], options: Options) -> Float[Tensor, "rows k"]:
    parts = []
    for ev in sorted(batches):
        batch = batches[ev]
        T = batch.tokens.shape[1]
        for chunk in batch.tokens.split(max(1, LOGITS_BUDGET // (T * model.cfg.d_vocab))):
            logp = model.bridge(chunk)[:, batch.first:-1].log_softmax(-1).flatten(0, 1)
            parts.append(reduced(logp, chunk[:, batch.first + 1:].reshape(-1, 1), options))
    return torch.cat(parts).float()


def model_outputs(model, batches: dict, options: Options) -> Float[Tensor, "n k"]:
    return model.outputs(batches).float()


# --- over the run: principal components, smoothing, curvature, boundaries ----------------------------------------

def principal_components(points: Float[Tensor, "steps d"],
                         k: int) -> tuple[Float[Tensor, "steps k"], Float[Tensor, " k"]]:
    """The points' coordinates on their top k principal components (centred across steps; each component's sign
    puts its largest coordinate positive) and the share of the variance each explains."""
    centred = points - points.mean(0)
    values, vectors = torch.linalg.eigh((centred @ centred.T).double())  # steps x steps: cheap for any d
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    k = min(k, len(points) - 1)
    coords = vectors[:, :k] * values[:k].sqrt()
    signs = coords.gather(0, coords.abs().argmax(0, keepdim=True)).sign()
    coords = coords * torch.where(signs == 0, 1.0, signs)
    return coords, values[:k] / values.sum().clamp(min=torch.finfo(values.dtype).tiny)


def gaussian_smooth(path: Float[Tensor, "steps k"], width: float) -> Float[Tensor, "steps k"]:
    """Each point replaced by a Gaussian-weighted mean of the path, of `width` checkpoints (weights renormalised at
    the ends)."""
    if width == 0:
        return path
    index = torch.arange(len(path), dtype=path.dtype)
    weights = torch.exp(-0.5 * ((index[:, None] - index[None, :]) / width) ** 2)
    return (weights / weights.sum(1, keepdim=True)) @ path


def turning_angles(path: Float[Tensor, "steps k"]) -> Float[Tensor, " steps"]:
    """At every interior point, the angle in degrees between the segment in and the segment out (0: straight on,
    180: back the way it came); NaN at the ends and where a segment has no length."""
    into, out = path[1:-1] - path[:-2], path[2:] - path[1:-1]
    cos = (into * out).sum(-1) / (into.norm(dim=-1) * out.norm(dim=-1))
    return _padded(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))))


def curvature(path: Float[Tensor, "steps k"]) -> Float[Tensor, " steps"]:
    """The curvature of the circle through every interior point and its two neighbours (1 / its radius; in a plane,
    signed: positive turning anticlockwise); NaN at the ends."""
    into, out, chord = path[1:-1] - path[:-2], path[2:] - path[1:-1], path[2:] - path[:-2]
    # |a x b| in any dimension, from Lagrange's identity; a circle's curvature is 2 |a x b| / (|a| |b| |a + b|)
    cross = ((into.norm(dim=-1) * out.norm(dim=-1)) ** 2 - (into * out).sum(-1) ** 2).clamp(min=0).sqrt()
    if path.shape[-1] == 2:
        cross = into[:, 0] * out[:, 1] - into[:, 1] * out[:, 0]
    return _padded(2 * cross / (into.norm(dim=-1) * out.norm(dim=-1) * chord.norm(dim=-1)))


def speed(path: Float[Tensor, "steps k"]) -> Float[Tensor, " steps"]:
    """The length of the segment into every point as a share of the whole path's length (0 at the first point): a
    jump between two checkpoints (an abrupt change, e.g. a loss drop) is a peak."""
    segments = (path[1:] - path[:-1]).norm(dim=-1)
    return torch.cat([segments.new_zeros(1), segments / segments.sum().clamp(min=torch.finfo(segments.dtype).tiny)])


def _padded(interior: Float[Tensor, " inner"]) -> Float[Tensor, " steps"]:
    nan = interior.new_full((1,), math.nan)
    return torch.cat([nan, interior, nan])


def boundaries(path: Float[Tensor, "steps k"], turns: Float[Tensor, " steps"],
               options: Options) -> Float[Tensor, " steps"]:
    """1 at the candidate stage boundaries: local maxima of the turning angle of at least `min_turn` degrees whose
    two segments are each at least `min_move` of the path's diameter; 0 elsewhere."""
    segments = (path[1:] - path[:-1]).norm(dim=-1)
    diameter = torch.cdist(path, path).max()
    moved = torch.zeros(len(path), dtype=torch.bool)
    moved[1:-1] = torch.minimum(segments[:-1], segments[1:]) >= options.min_move * diameter
    eligible = torch.where(moved & ~turns.isnan(), turns, torch.full_like(turns, -1.0))
    left, right = eligible.roll(1), eligible.roll(-1)
    left[0], right[-1] = -1.0, -1.0
    return (moved & (eligible >= options.min_turn) & (eligible >= left) & (eligible > right)).to(path.dtype)


def trajectory_rows(outputs: dict[int, Float[Tensor, "n k"]], options: Options) -> list[dict]:
    """The run-level rows: every step's coordinates, curvature, turning angle and boundary flags."""
    steps = sorted(outputs)
    if len(steps) < 2:
        return []
    shapes = {tuple(outputs[s].shape) for s in steps}
    if len(shapes) > 1:
        raise ConfigError(f"trajectory: the outputs differ in shape across steps ({sorted(shapes)}); "
                          f"analyse every step on the same batches")
    coords, explained = principal_components(torch.stack([outputs[s].flatten() for s in steps]), options.components)
    path = gaussian_smooth(coords, options.smooth)
    names = [f"pc{i + 1}" for i in range(coords.shape[1])]
    per_step = {"pc": coords, "pc_smooth": path}
    series = {"turn_angle": turning_angles(path), "curvature": curvature(path), "speed": speed(coords)}
    flags = boundaries(path, series["turn_angle"], options)
    series |= {"boundary": flags, "cusp": flags * (series["turn_angle"] >= options.cusp_turn)}
    planes = {f"{names[i]}-{names[j]}": curvature(path[:, [i, j]])
              for i, j in itertools.combinations(range(min(PLANES, len(names))), 2)}
    rows = []
    for t, step in enumerate(steps):
        rows += [{"step": step, "metric": metric, "component": name, "value": float(values[t, i])}
                 for metric, values in per_step.items() for i, name in enumerate(names)]
        rows += [{"step": step, "metric": "explained_variance", "component": name, "value": float(explained[i])}
                 for i, name in enumerate(names)]
        rows += [{"step": step, "metric": metric, "value": float(values[t])} for metric, values in series.items()
                 if not (metric in ("turn_angle", "curvature") and math.isnan(values[t]))]
        rows += [{"step": step, "metric": "curvature", "component": plane, "value": float(values[t])}
                 for plane, values in planes.items() if not math.isnan(values[t])]
    return rows


def headline(rows: pd.DataFrame) -> str:
    explained = rows[rows.metric == "explained_variance"]
    return f"PCs explain {' '.join(f'{v:.2f}' for v in explained.value)}"


ANALYSIS = Analysis("trajectory", 2, {"exemplar": exemplar_outputs, "tokens": token_outputs,
                                      "outputs": model_outputs},
                    "essential dynamics: outputs on the probe set across checkpoints, PCA, curvature, stage "
                    "boundaries", options=Options, opt_in=True, headline=headline, across=trajectory_rows)
