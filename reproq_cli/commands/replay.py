"""`reproq replay --id N | --spec-hash H`: run a task again as a new row."""

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
from reproq_cli.db.operations import ReplayConflict, replay, source_for_hash
from reproq_cli.errors import MissingArgument, ReproqError


@click.command(name="replay")
@dsn_option
@config_option
@click.option("--id", "result_id", type=INT64, default=0, help="The row to copy.")
@click.option("--spec-hash", default="", help="Copy the newest row with this spec_hash.")
@json_option
def command(
    dsn: str | None, config_path: str | None, result_id: int, spec_hash: str, as_json: bool
) -> None:
    """Insert a READY copy of a task (same spec and hash, fresh attempts and history)."""
    if (result_id != 0) == bool(spec_hash):
        raise MissingArgument(
            "Provide exactly one of --id or --spec-hash", hint="e.g. reproq replay --id 42"
        )
    url = command_dsn(dsn, config_path)
    with connection(url) as conn:
        source = result_id if result_id != 0 else source_for_hash(conn, spec_hash)
        if source is None:
            raise ReproqError(
                f"no task with spec_hash {spec_hash}", hint="check the hash (reproq triage list)"
            )
        try:
            new_id = replay(conn, source)
        except ReplayConflict as exc:
            raise ReproqError(
                f"task {source} cannot be replayed: an identical task is already {exc.status} "
                f"(result_id {exc.active_id})",
                hint="wait for it to finish, or cancel it first",
            ) from None
    if new_id is None:
        raise ReproqError(f"no task with result_id {source}", hint="check the --id")
    if as_json:
        console.print_json({"source_id": source, "result_id": new_id})
    elif result_id != 0:
        console.data(f"Requeued task {source} as new result_id {new_id}")
    else:
        console.data(f"Requeued task {source} (spec_hash {spec_hash}) as new result_id {new_id}")
