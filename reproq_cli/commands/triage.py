"""`reproq triage list|inspect|retry`: look at failed tasks and run them again."""

from __future__ import annotations

import datetime as dt

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
from reproq_cli.db.operations import (
    triage_inspect,
    triage_list,
    triage_retry,
    triage_retry_blocked,
)
from reproq_cli.errors import MissingArgument, ReproqError
from reproq_cli.spec import go_time


def _when(value: dt.datetime | None) -> str:
    return go_time(value) if value else ""


@usage_group("triage")
def command() -> None:
    """Inspect and retry FAILED tasks."""


@command.command(name="list")
@dsn_option
@config_option
@click.option("--limit", type=INT64, default=50, show_default=True)
@click.option("--queue", default="", help="Only this queue.")
@json_option
def list_(dsn: str | None, config_path: str | None, limit: int, queue: str, as_json: bool) -> None:
    """Most recent failures first."""
    with connection(command_dsn(dsn, config_path)) as conn:
        rows = triage_list(conn, queue=queue or None, limit=limit if limit > 0 else 50)
    if as_json:
        console.print_json(rows)
        return
    if not rows:
        console.data("No failed tasks.")
        return
    render_rows(
        ["ID", "Queue", "Task", "Attempts", "FailedAt", "LastError"],
        [
            [
                str(r["result_id"]),
                r["queue_name"],
                r["task_path"] or "",
                f"{r['attempts']}/{r['max_attempts']}",
                _when(r["failed_at"]),
                r["last_error"] or "",
            ]
            for r in rows
        ],
    )


@command.command(name="inspect")
@dsn_option
@config_option
@click.option("--id", "result_id", type=INT64, default=0)
@json_option
def inspect(dsn: str | None, config_path: str | None, result_id: int, as_json: bool) -> None:
    """Everything about one failed task, spec and error history included."""
    if result_id == 0:
        raise MissingArgument("DSN and --id required", hint="pass --id <result_id>")
    with connection(command_dsn(dsn, config_path)) as conn:
        row = triage_inspect(conn, result_id)
    if row is None:
        raise ReproqError(
            f"no FAILED task with result_id {result_id}", hint="reproq triage list shows them"
        )
    if as_json:
        console.print_json(
            {
                **{k: v for k, v in row.items() if k not in ("spec_text", "errors_text")},
                "spec_json": console.json_value(row["spec_text"]),
                "errors_json": console.json_value(row["errors_text"]),
            }
        )
        return
    for label, value in (
        ("Result ID", row["result_id"]),
        ("Queue", row["queue_name"]),
        ("Task Path", row["task_path"] or ""),
        ("Status", row["status"]),
        ("Attempts", f"{row['attempts']}/{row['max_attempts']}"),
        ("Failed At", _when(row["failed_at"])),
        ("Last Error", row["last_error"] or ""),
        ("Spec JSON", row["spec_text"]),
        ("Errors JSON", row["errors_text"]),
    ):
        console.data(f"{label}: {value}")


@command.command(name="retry")
@dsn_option
@config_option
@click.option("--id", "result_id", type=INT64, default=0)
@click.option("--all", "retry_all", is_flag=True, help="Every FAILED task (wins over --id).")
@json_option
def retry(
    dsn: str | None, config_path: str | None, result_id: int, retry_all: bool, as_json: bool
) -> None:
    """Put FAILED tasks back to READY with fresh attempts (history is kept)."""
    if not retry_all and result_id == 0:
        raise MissingArgument("Provide --id or --all", hint="e.g. reproq triage retry --id 42")
    target = None if retry_all else result_id
    with (
        connection(command_dsn(dsn, config_path)) as conn,
        console.working("Retrying failed tasks"),
    ):
        blocked = triage_retry_blocked(conn, result_id=target)
        count = triage_retry(conn, result_id=target)
    if blocked and target is not None:
        raise ReproqError(
            f"task {target} waits on a task that has not succeeded (its chain's parent or "
            "its chord's members); it would run before it",
            hint="retry that task first: its success releases this one",
        )
    if blocked:
        console.warning(
            f"left {len(blocked)} task(s) FAILED that wait on a task that has not succeeded: "
            + ", ".join(map(str, blocked[:10]))
            + (" …" if len(blocked) > 10 else "")
        )
    if as_json:
        console.print_json({"retried": count, "blocked": blocked})
    elif count:
        console.data(f"Retried {count} task(s)")
    else:
        console.data("No failed tasks updated.")
