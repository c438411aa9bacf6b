"""`reproq prune expired`: delete rows whose expires_at has passed (never RUNNING ones)."""

from __future__ import annotations

import click

from reproq_cli import console
from reproq_cli.commands._common import (
    INT64,
    command_dsn,
    config_option,
    dsn_option,
    json_option,
    usage_group,
)
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import prune_expired


@usage_group("prune")
def command() -> None:
    """Delete tasks that are no longer needed."""


@command.command(name="expired")
@dsn_option
@config_option
@click.option("--limit", type=INT64, default=0, help="At most N rows, earliest expiry first.")
@click.option("--dry-run", is_flag=True, help="Count only.")
@json_option
def expired(
    dsn: str | None, config_path: str | None, limit: int, dry_run: bool, as_json: bool
) -> None:
    """Delete tasks past their expires_at (READY and WAITING included, RUNNING never)."""
    url = command_dsn(dsn, config_path)
    with connection(url) as conn, console.working("Pruning expired tasks"):
        limited = limit if limit > 0 else None
        count = prune_expired(conn, limit=limited, dry_run=dry_run)
    if as_json:
        console.print_json({"dry_run": dry_run, "count": count})
    elif dry_run:
        console.data(f"Would prune {count} expired task(s)")
    else:
        console.data(f"Pruned {count} expired task(s)")
