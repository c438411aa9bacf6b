"""`reproq stats`: task counts by status and queue, workers, periodic tasks, top failures."""

from __future__ import annotations

import click

from reproq_cli import console
from reproq_cli.commands._common import (
    command_dsn,
    config_option,
    dsn_option,
    json_option,
    render_rows,
)
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import stats_snapshot

STATUSES = ("READY", "WAITING", "RUNNING", "SUCCESSFUL", "FAILED", "CANCELLED")


@click.command(name="stats")
@dsn_option
@config_option
@json_option
def command(dsn: str | None, config_path: str | None, as_json: bool) -> None:
    """A snapshot of the queue system."""
    url = command_dsn(dsn, config_path)
    with connection(url) as conn:
        snapshot = stats_snapshot(conn)
    if as_json:
        console.print_json(snapshot)
        return
    totals = snapshot["tasks"]
    console.data("Tasks: " + ", ".join(f"{s} {totals.get(s, 0)}" for s in STATUSES))
    render_rows(
        ["Queue", *STATUSES, "Paused"],
        [
            [name, *(str(q["counts"].get(s, 0)) for s in STATUSES), "yes" if q["paused"] else ""]
            for name, q in snapshot["queues"].items()
        ],
    )
    console.data(f"Workers: {snapshot['workers_alive']} alive, {snapshot['workers_dead']} dead")
    for worker in snapshot["workers"]:
        state = "alive" if worker["alive"] else "dead"
        console.data(f"  {worker['worker_id']} ({worker['hostname']}) {state}")
    console.data(f"Periodic tasks: {len(snapshot['periodic'])}")
    for task in snapshot["periodic"]:
        enabled = "" if task["enabled"] else " (disabled)"
        console.data(f"  {task['name']} {task['cron_expr']} next {task['next_run_at']}{enabled}")
    if snapshot["top_failing"]:
        console.data("Top failing:")
        for row in snapshot["top_failing"]:
            console.data(f"  {row['failed']} {row['task_path']}")
