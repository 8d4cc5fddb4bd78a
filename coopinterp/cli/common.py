"""What every CLI verb module shares: the typer app, consoles, one-line errors, option parsers."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import CoopError

app = typer.Typer(help="Study how ICL and CIWL circuits form, compete and cooperate across training.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one error line (the message literally: `[devinterp]` and paths with brackets are not markup), exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print one warning line (the message literally) and go on."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def friendly(fn: Callable) -> Callable:
    """Turn coopinterp's errors into one-line messages with exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoopError as e:
            fail(str(e))
    return wrapper


def check_device(device: Optional[str]) -> Optional[str]:
    if device is not None and device.split(":")[0] not in ("cpu", "cuda"):
        raise CoopError(f"--device must be cpu or cuda, got {device!r}")
    return device


def check_out(path: Path, suffixes: tuple[str, ...] = (), folder: bool = False) -> Path:
    """Fail before any work on an --out that could not be written: a wrong suffix, a file where a folder goes or
    a folder where a file goes, or no writable directory to create it in. Creates nothing."""
    if suffixes and path.suffix not in suffixes:
        raise CoopError(f"--out {path} must end in {' or '.join(suffixes)}")
    if folder and path.exists() and not path.is_dir():
        raise CoopError(f"--out {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise CoopError(f"--out {path} is a directory; give a file path")
    home = path.absolute() if folder and path.is_dir() else path.absolute().parent
    while not home.exists():  # the folders still to be made go into the nearest one that exists
        home = home.parent
    if not home.is_dir():
        raise CoopError(f"--out {path}: {home} is a file, not a directory")
    if not os.access(home, os.W_OK | os.X_OK):
        raise CoopError(f"--out {path}: {home} is not writable")
    return path


REVISIONS_HELP = (r"hf:ORG/NAME runs: comma-separated regexes, each matching whole revision names (e.g. "
                  r"'step1000,step2000' or 'step\d000'; default: every cached revision named stepN).")
SOURCE_HELP = ("Token models' data: repeated (default), repeated:L, tokens:FILE.npy, text:FILE.txt, induction, "
               "induction:L or contrast:FILE.npz|.jsonl.")


def warn_identical(run, steps: list[int] | None = None) -> None:
    """Warn once per group of checkpoints (among `steps`, default all) whose weight files are identical."""
    from ..runs import identical_checkpoints

    for line in identical_checkpoints(run, steps):
        warn(line)


def damaged_checkpoints(run) -> dict[int, str]:
    """Each checkpoint of a run whose file is damaged (its header does not read) -> the one-line error naming it;
    commands that can go on without the file warn with it."""
    return {step: error for step in run.steps if (error := run.damage(step)) is not None}


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def comma_ints(text: str, option: str) -> list[int]:
    """'0, 1000' -> [0, 1000]; anything else is a one-line error naming `option`."""
    try:
        return [int(item) for item in comma_list(text)]
    except ValueError:
        raise CoopError(f"{option} must be comma-separated integers, got {text!r}") from None


def choices(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    """A comma list whose every item is one of `allowed` (order kept, repeats dropped)."""
    chosen = list(dict.fromkeys(comma_list(text)))
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise CoopError(f"{option}: unknown value(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(allowed)}")
    return chosen
