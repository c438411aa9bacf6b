"""`reproq cancel --id N`: ask the worker running a task to stop it."""

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
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import request_cancel
from reproq_cli.errors import MissingArgument


@click.command(name="cancel")
@dsn_option
@config_option
@click.option("--id", "result_id", type=INT64, default=0, help="result_id of a RUNNING task.")
@json_option
def command(dsn: str | None, config_path: str | None, result_id: int, as_json: bool) -> None:
    """Request cancellation of a RUNNING task (honoured at the worker's next heartbeat)."""
    if result_id == 0:
        raise MissingArgument("DSN and --id required", hint="pass --id <result_id>")
    url = command_dsn(dsn, config_path)
    with connection(url) as conn:
        requested = request_cancel(conn, result_id)
    if as_json:
        console.print_json({"result_id": result_id, "cancel_requested": requested})
    elif requested:
        console.data(f"Cancellation requested for task {result_id}")
    else:
        console.data(f"No RUNNING task found for result_id {result_id}")
