"""`reproq limit set|ls|rm`: token-bucket rate limits (keys task:<path>, queue:<name>, global)."""

from __future__ import annotations

import math
import struct

import click

from reproq_cli import console
from reproq_cli.commands._common import (
    INT64,
    command_dsn,
    config_option,
    dsn_option,
    json_option,
    render_rows,
    usage_group,
)
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import delete_rate_limit, list_rate_limits, set_rate_limit
from reproq_cli.errors import MissingArgument
from reproq_cli.spec import go_time

# The columns: tokens_per_second is a real (float4), burst_size an integer.
MAX_RATE = 1e9
MAX_BURST = 2**31 - 1


@usage_group("limit")
def command() -> None:
    """Manage rate limits: most specific existing key wins (task: > queue: > global)."""


@command.command(name="set")
@dsn_option
@config_option
@click.option("--key", default="", help="task:<task_path>, queue:<queue_name> or global.")
@click.option("--rate", type=float, default=0.0, help="Tokens per second (0 disables).")
@click.option("--burst", type=INT64, default=1, help="Bucket size.")
@json_option
def set_(
    dsn: str | None, config_path: str | None, key: str, rate: float, burst: int, as_json: bool
) -> None:
    """Create or reset a limit (the bucket starts full)."""
    if not key:
        raise MissingArgument("DSN and --key required", hint="e.g. --key queue:default --rate 5")
    if rate < 0:
        raise MissingArgument("tokens_per_second must be >= 0", hint="use --rate 0 to disable")
    if not math.isfinite(rate) or rate > MAX_RATE:
        # nan passed the >= 0 check and was stored: a limit that never limited.
        raise MissingArgument(
            f"--rate {rate} is not a usable rate", hint=f"give tokens per second, 0 to {MAX_RATE:g}"
        )
    if burst <= 0:
        raise MissingArgument("burst_size must be > 0", hint="e.g. --burst 1")
    if burst > MAX_BURST:
        raise MissingArgument(f"burst_size must be <= {MAX_BURST}", hint="e.g. --burst 100")
    with connection(command_dsn(dsn, config_path)) as conn:
        set_rate_limit(conn, key, rate, burst)
    if as_json:
        console.print_json({"key": key, "tokens_per_second": rate, "burst_size": burst})
    else:
        console.data(f"Set rate limit {key}: {rate:.2f} tokens/sec, burst {burst}")


def _real(value: float) -> str:
    """A real (float4) column with two decimals, rounded from the float4's own value as Go
    rounds it: psycopg parses the server's shortest text (0.045) into a double just below
    the float4 (0.045000001788...), which rounded the other way (0.04 against Go's 0.05)."""
    (single,) = struct.unpack("f", struct.pack("f", value))
    return f"{single:.2f}"


@command.command(name="ls")
@dsn_option
@config_option
@json_option
def ls(dsn: str | None, config_path: str | None, as_json: bool) -> None:
    """List limits, ordered by key."""
    with connection(command_dsn(dsn, config_path)) as conn:
        rows = list_rate_limits(conn)
    if as_json:
        console.print_json(rows)
        return
    if not rows:
        console.data("No rate limits configured.")
        return
    render_rows(
        ["Key", "Tokens/s", "Burst", "Current", "LastRefill"],
        [
            [
                r["key"],
                _real(r["tokens_per_second"]),
                str(r["burst_size"]),
                _real(r["current_tokens"]),
                go_time(r["last_refilled_at"]),
            ]
            for r in rows
        ],
    )


@command.command(name="rm")
@dsn_option
@config_option
@click.option("--key", default="", help="The key to delete.")
@json_option
def rm(dsn: str | None, config_path: str | None, key: str, as_json: bool) -> None:
    """Delete a limit."""
    if not key:
        raise MissingArgument("DSN and --key required", hint="e.g. --key queue:default")
    with connection(command_dsn(dsn, config_path)) as conn:
        deleted = delete_rate_limit(conn, key)
    if as_json:
        console.print_json({"key": key, "deleted": deleted})
    else:
        console.data(f"Deleted {deleted} rate limit(s) for {key}")
