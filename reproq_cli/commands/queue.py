"""`reproq queue pause|resume|ls`: stop and start claiming per queue."""

from __future__ import annotations

import click

from reproq_cli import console
from reproq_cli.commands._common import (
    command_dsn,
    config_option,
    dsn_option,
    json_option,
    render_rows,
    usage_group,
)
from reproq_cli.config import QUEUE_NAME_RULE, is_queue_name
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import list_queues, set_queue_paused
from reproq_cli.errors import UsageError


@usage_group("queue")
def command() -> None:
    """Pause, resume and list queues."""


def _queue_name(name: str) -> str:
    if not is_queue_name(name):
        raise UsageError(
            f"queue name {name!r} cannot be a queue: {QUEUE_NAME_RULE}",
            hint="e.g. reproq queue pause mail",
        )
    return name


@command.command(name="pause")
@click.argument("name")
@click.option("--reason", default=None, help="Shown in `queue ls` and the admin.")
@dsn_option
@config_option
def pause(name: str, reason: str | None, dsn: str | None, config_path: str | None) -> None:
    """Workers stop claiming NAME (running tasks finish)."""
    name = _queue_name(name)
    with connection(command_dsn(dsn, config_path)) as conn:
        set_queue_paused(conn, name, paused=True, reason=reason)
    console.data(f"Queue {name} paused.")


@command.command(name="resume")
@click.argument("name")
@dsn_option
@config_option
def resume(name: str, dsn: str | None, config_path: str | None) -> None:
    """Workers claim NAME again."""
    name = _queue_name(name)
    with connection(command_dsn(dsn, config_path)) as conn:
        set_queue_paused(conn, name, paused=False, reason=None)
    console.data(f"Queue {name} resumed.")


@command.command(name="ls")
@dsn_option
@config_option
@json_option
def ls(dsn: str | None, config_path: str | None, as_json: bool) -> None:
    """Queues with their READY/RUNNING counts and pause state."""
    with connection(command_dsn(dsn, config_path)) as conn:
        rows = list_queues(conn)
    if as_json:
        console.print_json(rows)
        return
    if not rows:
        console.data("No queues.")
        return
    render_rows(
        ["Queue", "Paused", "Ready", "Running", "Reason"],
        [
            [
                r["queue_name"],
                "yes" if r["paused"] else "no",
                str(r["ready"]),
                str(r["running"]),
                r["reason"] or "",
            ]
            for r in rows
        ],
    )
