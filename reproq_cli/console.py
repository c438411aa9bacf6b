"""Output helpers: data goes to stdout, messages to stderr; colour only on a terminal.

rich honours NO_COLOR and drops styling when the stream is not a terminal.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def data(text: str) -> None:
    """One line (or block) of plain data on stdout, never reformatted."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def print_json(value: Any) -> None:
    data(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def notice(message: str) -> None:
    """An informational message on stderr."""
    err.print(escape(message), style="dim")


def warning(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    if hint:
        err.print(f"[cyan]hint:[/cyan] {escape(hint)}")


def is_terminal() -> bool:
    return out.is_terminal


def working(message: str) -> Any:
    """A spinner on stderr while a bulk operation runs (only on a terminal)."""
    import contextlib

    if not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(escape(message))
