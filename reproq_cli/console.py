"""Output helpers: data goes to stdout, messages to stderr; colour only on a terminal.

rich honours NO_COLOR and drops styling when the stream is not a terminal.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@cache
def _console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def __getattr__(name: str) -> Any:
    """``out`` and ``err`` (rich consoles) are made on first use: importing rich costs tens
    of milliseconds that ``reproq --help`` and ``--version`` should not pay."""
    if name in ("out", "err"):
        return _console(name == "err")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def data(text: str) -> None:
    """One line (or block) of plain data on stdout, never reformatted."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


class RawJSON:
    """JSON text print_json writes as it is: a database value nested deeper than Python's
    decoder goes (jsonb takes 10,000 levels, Python ~1,500)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def json_value(text: str) -> Any:
    """A database JSON text decoded, or kept as RawJSON when it is too deep to decode."""
    import json  # here, not at the top: `reproq --help` imports this module (~3 ms)

    try:
        return json.loads(text)
    except RecursionError:
        return RawJSON(text)


def print_json(value: Any) -> None:
    import json

    raw: dict[str, str] = {}

    def encode(item: Any) -> Any:
        if isinstance(item, RawJSON):
            # A placeholder no database text can hold (PostgreSQL refuses NUL in text and
            # jsonb), swapped for the raw text once the rest is encoded.
            token = f"\0{len(raw)}\0"
            raw[json.dumps(token)] = item.text
            return token
        return str(item)

    text = json.dumps(value, indent=2, ensure_ascii=False, default=encode)
    for placeholder, original in raw.items():
        text = text.replace(placeholder, original, 1)
    data(text)


def notice(message: str) -> None:
    """An informational message on stderr."""
    _console(True).print(escape(message), style="dim")


def warning(message: str) -> None:
    _console(True).print(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str, hint: str | None = None) -> None:
    _console(True).print(f"[bold red]error:[/bold red] {escape(message)}")
    if hint:
        _console(True).print(f"[cyan]hint:[/cyan] {escape(hint)}")


def is_terminal() -> bool:
    return _console(False).is_terminal


def working(message: str) -> Any:
    """A spinner on stderr while a bulk operation runs (only on a terminal)."""
    import contextlib

    if not _console(True).is_terminal:
        return contextlib.nullcontext()
    return _console(True).status(escape(message))
