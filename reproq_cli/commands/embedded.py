"""`reproq embedded start|stop|status|url`: the built-in PostgreSQL for first runs."""

from __future__ import annotations

import os

from reproq_cli import console
from reproq_cli.commands._common import json_option, usage_group
from reproq_cli.db import embedded


@usage_group("embedded")
def command() -> None:
    """Manage the embedded PostgreSQL used when no DSN is configured.

    Its data lives in REPROQ_EMBEDDED_DIR, else $XDG_DATA_HOME/reproq/pgdata.
    """


@command.command(name="start")
def start() -> None:
    """Start the server (if needed) and print its DSN."""
    console.data(embedded.start(os.environ))


@command.command(name="url")
def url() -> None:
    """Print the DSN, starting the server if it is not running."""
    console.data(embedded.start(os.environ))


@command.command(name="stop")
def stop() -> None:
    """Stop the server."""
    stopped = embedded.stop(os.environ)
    console.data("stopped" if stopped else "not running")


@command.command(name="status")
@json_option
def status(as_json: bool) -> None:
    """Say whether the server runs, and where its data is."""
    current = embedded.status(os.environ)
    if as_json:
        console.print_json(
            {
                "directory": str(current.directory),
                "initialized": current.initialized,
                "running": current.running,
                "pid": current.pid,
            }
        )
        return
    if current.running:
        console.data(f"running (pid {current.pid}) in {current.directory}")
    elif current.initialized:
        console.data(f"stopped; data in {current.directory}")
    else:
        console.data(f"not initialized; would live in {current.directory}")
