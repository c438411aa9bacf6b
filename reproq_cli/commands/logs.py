"""`reproq logs --id N`: print the stdout/stderr a task's attempt left in --logs-dir."""

from __future__ import annotations

import click

from reproq_cli import console
from reproq_cli.commands._common import (
    INT64,
    command_dsn,
    config_option,
    dsn_option,
    json_option,
)
from reproq_cli.core.logfiles import read_log, tail_lines
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import task_logs_uri
from reproq_cli.errors import ReproqError, UsageError


@click.command(name="logs")
@dsn_option
@config_option
@click.option("--id", "result_id", type=INT64, required=True, help="result_id of the task.")
@click.option(
    "--tail", "lines", type=click.IntRange(min=0), default=200, show_default=True,
    help="0 = all lines.",
)  # fmt: skip
@click.option("--max-bytes", type=INT64, default=1_000_000, show_default=True)
@click.option("--show-path", is_flag=True, help="Print the logs_uri instead of the logs.")
@json_option
def command(
    dsn: str | None,
    config_path: str | None,
    result_id: int,
    lines: int,
    max_bytes: int,
    show_path: bool,
    as_json: bool,
) -> None:
    """Print a task's persisted logs (local path, file:// or http(s) logs_uri)."""
    if max_bytes <= 0:
        raise UsageError("--max-bytes must be positive", hint="e.g. --max-bytes 1000000")
    url = command_dsn(dsn, config_path)
    with connection(url) as conn:
        exists, uri = task_logs_uri(conn, result_id)
    if not exists:
        raise ReproqError(f"Task run {result_id} not found.", hint="check the --id")
    if not uri:
        raise ReproqError(
            "No logs_uri recorded for this task run.",
            hint="the worker writes logs only with --logs-dir (REPROQ_LOGS_DIR)",
        )
    if show_path and not as_json:
        console.data(uri)
        return
    text = tail_lines(read_log(uri, max_bytes=max_bytes), lines)
    if as_json:
        console.print_json({"result_id": result_id, "logs_uri": uri, "text": text})
        return
    console.data(text if text.strip() else "(no log output)")
