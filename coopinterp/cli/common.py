"""What every CLI verb module shares: the typer app, consoles, one-line errors, option parsers."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import typer
from rich.console import Console

from ..errors import CoopError

app = typer.Typer(help="Study how ICL and CIWL circuits form, compete and cooperate across training.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
