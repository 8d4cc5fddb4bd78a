"""`coopinterp ablate | patch | clamp | graft`: interventions on one checkpoint, every evaluator before and after.

`ablate` and `patch` run on every run (the exemplar task's evaluators, or a token model's next-token loss on its
source); `clamp` and `graft` are the paper's protocols on the exemplar task. Each verb finds its implementation for
the run's kind of model in a table (`for_model`), so no verb branches on the kind of run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer
from rich.table import Table

from ..errors import ConfigError
from .common import SOURCE_HELP, app, comma_ints, comma_list, console, friendly

RUN = typer.Argument(..., help="Run directory.")
STEP = typer.Option(None, "--step", help="Checkpoint step (default: the newest).")
N = typer.Option(512, "--n", help="Sequences per evaluator batch.")
SEED = typer.Option(0, "--seed", help="Seed of the evaluation batches (and of resampling).")
MODE = typer.Option("mean", "--mode", help="zero | mean | resample.")
SOURCE = typer.Option(None, "--source", help=SOURCE_HELP)
PATTERN = typer.Option(None, "--pattern", help="Regex naming Hugging Face checkpoint folders.")


def for_model(run, verb: str, implementations: dict[str, Callable | None]) -> Callable | None:
    """The implementation of `verb` for the run's first kind of model that has one; else a one-line error."""
    kind = next((k for k in run.model_kinds if k in implementations), None)
    if kind is None:
        raise ConfigError(f"`coopinterp {verb}` is a protocol of the {' or '.join(implementations)} task; {run.path} "
                          f"holds a {run.model_kinds[0]} model (`coopinterp ablate` and `patch` run on every run)")
    return implementations[kind]


def _load(run_dir: Path, step: Optional[int], n: int, seed: int, verb: str, implementations: dict,
          source: Optional[str] = None, pattern: Optional[str] = None):
    """(run, step, model, one batch per evaluator or source, the verb's implementation); a run the verb has no
    implementation for is refused before its checkpoint loads."""
    from ..runs import open_run

    if n < 2:
        raise ConfigError(f"--n must be >= 2, got {n}")
    run = open_run(run_dir, pattern=pattern)
    implementation = for_model(run, verb, implementations)
    step = run.steps[-1] if step is None else run.check_step(step)
    run.source_key(source)  # a missing file or a source the run cannot read fails here, before the model loads
    return run, step, run.model(step), run.batches(source, n, seed), implementation


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def _group(spec: str, n_heads: int, option: str) -> list[int]:
    if spec.strip() == "all":
        return list(range(n_heads))
    heads = comma_ints(spec, option)
    if not heads or not all(0 <= h < n_heads for h in heads):
        raise ConfigError(f"{option} {spec!r}: heads are 0-{n_heads - 1}")
    return heads


@app.command("ablate")
@friendly
def ablate_cmd(
    run_dir: Path = RUN,
    heads: str = typer.Option(..., "--heads", help="Heads to ablate together, LAYER.HEAD, e.g. 0.3,1.5."),
    step: Optional[int] = STEP,
    mode: str = MODE,
    n: int = N,
    seed: int = SEED,
    source: Optional[str] = SOURCE,
    pattern: Optional[str] = PATTERN,
) -> None:
    """Every evaluator's acc and loss with a set of heads ablated together (a token model: its next-token loss on
    --source)."""
    from ..analysis.engine import check_mode, parse_heads

    check_mode(mode)
    run, step, model, batches, ablate = _load(run_dir, step, n, seed, "ablate",
                                              {"exemplar": _ablate_exemplar, "tokens": _ablate_tokens}, source, pattern)
    ablate(run, step, model, batches, parse_heads(heads, model.cfg), heads, mode, seed)


def _ablate_exemplar(run, step: int, model, batches: dict, chosen: list, heads: str, mode: str, seed: int) -> None:
    from ..analysis.ablation import ablated_hidden
    from ..analysis.engine import Engine

    engine = Engine(model)
    table = _table(f"{run.name} step {step}: heads {heads} ablated ({mode})",
                   ["evaluator", "acc", "acc ablated", "loss", "loss ablated"])
    for ev, batch in batches.items():
        acc, ce = engine.score(ablated_hidden(model, batch, [[], chosen], mode, seed, engine), batch).values()
        table.add_row(ev, f"{acc[0]:.3f}", f"{acc[1]:.3f}", f"{ce[0]:.3f}", f"{ce[1]:.3f}")
    console.print(table)


def _ablate_tokens(run, step: int, model, batches: dict, chosen: list, heads: str, mode: str, seed: int) -> None:
    """A token model's next-token loss before and after ablating a set of heads together (through hook_z)."""
    from ..analysis.ablation import ablated_token_loss, z_replacements

    table = _table(f"{run.name} step {step}: heads {heads} ablated ({mode})", ["source", "loss", "loss ablated",
                                                                              "change"])
    for ev, batch in batches.items():
        values = z_replacements(model, batch, mode, seed)
        clean, ablated = ablated_token_loss(model, batch, [[], chosen], values).tolist()
        table.add_row(ev, f"{clean:.4f}", f"{ablated:.4f}", f"{ablated - clean:+.4f}")
    console.print(table)


@app.command("patch")
@friendly
def patch_cmd(
    run_dir: Path = RUN,
    senders: str = typer.Option("all", "--senders", help="Sender heads: 'all' (every layer-0 head) or e.g. 0,3 "
                                "(layer-0 heads of the exemplar model) or 0.3,1.2 (LAYER.HEAD, token models)."),
    receivers: str = typer.Option("all", "--receivers", help="Receiver heads: 'all' (every layer-1 head) or e.g. 2,5 "
                                  "(layer-1 heads of the exemplar model) or 2.5 (LAYER.HEAD, token models)."),
    step: Optional[int] = STEP,
    mode: str = MODE,
    n: int = N,
    seed: int = SEED,
    source: Optional[str] = SOURCE,
    pattern: Optional[str] = PATTERN,
) -> None:
    """Path patching: the senders' output replaced in the receivers' q, k or v input only (the exemplar model: acc
    per evaluator; a token model: next-token loss per receiver head)."""
    from ..analysis.engine import check_mode

    check_mode(mode)
    run, step, model, batches, patch = _load(run_dir, step, n, seed, "patch",
                                             {"exemplar": _patch_exemplar, "tokens": _patch_tokens}, source, pattern)
    patch(run, step, model, batches, senders, receivers, mode, seed)


def _patch_exemplar(run, step: int, model, batches: dict, senders: str, receivers: str, mode: str, seed: int) -> None:
    from ..analysis.patching import COMPONENTS, check_model, path_patch

    check_model(model)
    H = model.cfg.n_heads
    send, recv = [_group(senders, H, "--senders")], [_group(receivers, H, "--receivers")]
    table = _table(f"{run.name} step {step}: layer-0 {senders} -> layer-1 {receivers} ({mode}), accuracy",
                   ["evaluator", "clean", *(f"via {c}" for c in COMPONENTS), "via qkv", "ablated"])
    for ev, batch in batches.items():
        acc = path_patch(model, batch, [[]] + send, recv, [*COMPONENTS, "qkv"], mode, seed=seed, metrics=["acc"])["acc"]
        ablated = path_patch(model, batch, send, recv, ["qkv"], mode, direct=True, seed=seed, metrics=["acc"])["acc"]
        table.add_row(ev, f"{acc[0, 0, 0]:.3f}", *(f"{a:.3f}" for a in acc[:, 1, 0]), f"{ablated.item():.3f}")
    console.print(table)
    console.print("clean: no patch; via c: the senders patched into the receivers' c input only; "
                  "ablated: into every path (q, k, v and direct)", highlight=False)


def _patch_tokens(run, step: int, model, batches: dict, senders: str, receivers: str, mode: str, seed: int) -> None:
    """Each receiver head's next-token loss with the senders patched into its q, k or v input alone."""
    from ..analysis.engine import parse_heads
    from ..analysis.patching import COMPONENTS, token_path_patch

    H = model.cfg.n_heads
    send = [(0, h) for h in range(H)] if senders.strip() == "all" else parse_heads(senders, model.cfg)
    recv = [(1, h) for h in range(H)] if receivers.strip() == "all" else parse_heads(receivers, model.cfg)
    ordered = [(layer, h) for layer in sorted({layer for layer, _ in recv}) for at, h in recv if at == layer]
    for ev, batch in batches.items():
        loss = token_path_patch(model, batch, send, recv, mode, seed)
        table = _table(f"{run.name} step {step}: {senders} -> {receivers} ({mode}) on {ev}, next-token loss "
                       f"(clean {loss['clean']:.4f})", ["receiver", *(f"via {c}" for c in COMPONENTS)])
        for i, (layer, h) in enumerate(ordered):
            table.add_row(f"{layer}.{h}", *(f"{loss[c][i]:.4f} ({loss[c][i] - loss['clean']:+.4f})"
                                            for c in COMPONENTS))
        console.print(table)


@app.command("clamp")
@friendly
def clamp_cmd(
    run_dir: Path = RUN,
    head: Optional[str] = typer.Option(None, "--head", help="LAYER.HEAD to clamp (default: the last layer's "
                                       "most skip-trigram-like head)."),
    step: Optional[int] = STEP,
    protocol: str = typer.Option("paper", "--protocol", help="paper: the head alone reaches the unembedding "
                                 "(embedding path, layer 0 and the other heads removed, values clean); layer: the "
                                 "rest of its layer mean-ablated, everything else clean."),
    n: int = N,
    seed: int = SEED,
) -> None:
    """Skip-trigram copier test: CIWL acc with the head's query attention clamped to s on the true label."""
    from ..analysis.engine import parse_heads
    from ..analysis.clamping import PROTOCOLS, S_VALUES, clamp_sweep, copier_sweep, skip_trigram_head

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")

    run, step, model, batches, _ = _load(run_dir, step, n, seed, "clamp", {"exemplar": None})
    batch = batches["ciwl"]
    if head is None:
        chosen = (model.cfg.n_layers - 1, skip_trigram_head(model, batch))
    else:
        parsed = parse_heads(head, run.config.model)
        if len(parsed) != 1:
            raise ConfigError(f"--head takes one head, got {head!r}")
        chosen = parsed[0]
    scores = (copier_sweep if protocol == "paper" else clamp_sweep)(model, batch, chosen)
    what = ("alone reaching the unembedding" if protocol == "paper" else "with the rest of its layer mean-ablated")
    table = _table(f"{run.name} step {step}: head {chosen[0]}.{chosen[1]} clamped, {what}",
                   ["s (attention on the true label)", "ciwl acc", "ciwl loss"])
    for s, a, c in zip(S_VALUES, scores["acc"].tolist(), scores["loss"].tolist()):
        table.add_row(f"{s:.1f}", f"{a:.3f}", f"{c:.3f}")
    console.print(table)
    console.print("A copier's accuracy follows s: about 0 at s = 0 (it copies the wrong label), 0.5 at s = 0.5, "
                  "about 1 at s = 1.", highlight=False)


@app.command("graft")
@friendly
def graft_cmd(
    run_dir: Path = RUN,
    donor: Path = typer.Option(..., "--donor", help="Donor run directory (may be the same run)."),
    groups: str = typer.Option(..., "--groups", help="Parameter groups, e.g. layer0,unembed."),
    step: Optional[int] = STEP,
    donor_step: Optional[int] = typer.Option(None, "--donor-step", help="Donor step (default: its newest)."),
    n: int = N,
    seed: int = SEED,
) -> None:
    """Every evaluator's acc for the recipient, the donor, and the recipient with the donor's groups grafted in."""
    from ..analysis.grafting import graft
    from ..tasks.exemplar import evaluate

    run, step, model, batches, _ = _load(run_dir, step, n, seed, "graft", {"exemplar": None})
    donor_run, donor_step, donor_model, _, _ = _load(donor, donor_step, n, seed, "graft", {"exemplar": None})
    grafted = graft(model, donor_model, comma_list(groups))
    results = [evaluate(m, batches) for m in (model, donor_model, grafted)]
    table = _table(f"{groups} of {donor_run.name}@{donor_step} into {run.name}@{step}, accuracy",
                   ["evaluator", "recipient", "donor", "grafted"])
    for ev in batches:
        table.add_row(ev, *(f"{r[ev]['acc']:.3f}" for r in results))
    console.print(table)
