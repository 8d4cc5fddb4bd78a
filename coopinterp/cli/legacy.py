"""CLI verb `import-tl`: legacy transformer-lens checkpoints as a coopinterp run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CoopError
from .common import app, check_out, comma_list, console, friendly


@app.command("import-tl")
@friendly
def import_tl_cmd(
    src_dir: Path = typer.Argument(..., help="Folder of legacy HookedTransformer state dicts (.pt/.pth/...)."),
    out: Path = typer.Option(..., "--out", help="New run directory (must not exist or be empty)."),
    config: Path = typer.Option(..., "--config", help="RunConfig JSON the checkpoints were trained under."),
    pattern: Optional[str] = typer.Option(None, help="Regex on file names; its first group is the step "
                                                     "(default: the last integer in the name)."),
    exemplar_keys: str = typer.Option("exemplar_embed.weight,exemplar_embed.bias", "--exemplar-keys",
                                      help="Names of the exemplar embedding's weight and bias in the files."),
) -> None:
    """Import legacy transformer-lens checkpoints of a compatible model as a coopinterp run."""
    from ..config import RunConfig
    from ..legacy import import_tl_checkpoints

    check_out(out, folder=True)
    keys = tuple(comma_list(exemplar_keys))
    if len(keys) != 2 or not all(keys):
        raise CoopError(f"--exemplar-keys needs two comma-separated names (weight,bias), got {exemplar_keys!r}")
    run = import_tl_checkpoints(src_dir, out, RunConfig.from_json(config), pattern=pattern, exemplar_keys=keys)
    console.print(f"imported {len(run.steps)} checkpoint(s) into {run.path}: steps {', '.join(map(str, run.steps))}",
                  highlight=False)
