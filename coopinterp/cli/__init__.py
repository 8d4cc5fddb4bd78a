"""The `coopinterp` command line (typer + rich). Bad input gives a one-line error, never a traceback.

Each verb group lives in its own module and registers on the shared `app` (cli/common.py) when imported here;
the modules import nothing heavy at the top, so `--help` starts fast.
"""
from __future__ import annotations

import sys

from .. import threads

threads.apply()  # before anything imports torch: one thread, passive waits (threads.py says why)

import typer  # noqa: E402
from rich.markup import escape  # noqa: E402

from . import train  # noqa: F401, I001  (verbs register in import order, the order --help lists them)
from . import analysis, interventions, plots, minimal, legacy, sweep  # noqa: F401
from .common import app, err_console

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: usage errors (bad flag, missing option) become one line too."""
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err_console.print("[bold red]error:[/] aborted")
        sys.exit(130)
    except TyperException as e:  # typer's vendored click errors: UsageError, BadParameter, ...
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message:
            err_console.print(f"[bold red]error:[/] {escape(message + hint)}", highlight=False, soft_wrap=True)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
