"""`reproq torture`: enqueue a mixed workload, run W workers (with chaos if asked), report."""

from __future__ import annotations

import os

import click

from reproq_cli import console
from reproq_cli.commands._common import config_option, dsn_option, json_option, load_config
from reproq_cli.core.torture import CHAOS_KINDS, Torture, TortureOptions
from reproq_cli.defaults import EXECUTOR_KINDS
from reproq_cli.errors import EXIT_ERROR, ReproqError


def _chaos(values: tuple[str, ...]) -> frozenset[str]:
    kinds: set[str] = set()
    for value in values:
        for kind in (part.strip() for part in value.split(",")):
            if kind == "all":
                kinds.update(CHAOS_KINDS)
            elif kind in CHAOS_KINDS:
                kinds.add(kind)
            elif kind:
                raise click.BadParameter(
                    f"{kind!r} is not one of {', '.join(CHAOS_KINDS)}, all", param_hint="--chaos"
                )
    return frozenset(kinds)


@click.command(name="torture")
@dsn_option
@config_option
@click.option(
    "--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Tasks to enqueue."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Worker processes to run.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Tasks each worker runs at once.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Share of plain tasks that fail for good.",
)
@click.option(
    "--retry-rate",
    type=click.FloatRange(0, 0.5),
    default=0.02,
    show_default=True,
    help="Share of tasks that fail once, then succeed (the retry waits 30s).",
)
@click.option(
    "--sleep",
    "sleep_ms",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="MS",
    help="Longest time a task sleeps, in milliseconds.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTOR_KINDS),
    default="spawn",
    show_default=True,
    help="Worker executor.",
)
@click.option(
    "--chaos",
    multiple=True,
    metavar="KINDS",
    help=f"Comma list of {', '.join(CHAOS_KINDS)} or all; repeatable.",
)
@click.option(
    "--chaos-interval",
    type=click.FloatRange(min=0.5),
    default=3.0,
    show_default=True,
    metavar="SECONDS",
    help="Time between chaos events.",
)
@click.option(
    "--chaos-limit",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Most chaos events of each kind (0: no limit).",
)
@click.option(
    "--lease-seconds",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="Workers' lease (heartbeat and reclaim every fifth of it).",
)
@click.option(
    "--logs-dir",
    default="",
    metavar="PATH",
    help="Workers' --logs-dir (e.g. a full or read-only one).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=1800.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this long.",
)
@click.option("--seed", type=int, default=None, help="Seed for a repeatable workload.")
@json_option
def command(
    dsn: str | None,
    config_path: str | None,
    chaos: tuple[str, ...],
    as_json: bool,
    **params: object,
) -> None:
    """Enqueue a mixed workload and run workers against it until every task is done.

    The workload: successes, failures, retries, lock_key groups, concurrency-limited keys,
    priorities, two queues, delayed tasks, chains and chords. Every execution is logged in
    reproq_torture_executions; check the run with `reproq verify`. Use a database of its own:
    torture adds rows (and that table) to whatever it points at.

    Chaos: kill-workers (SIGKILL a worker every interval, a new one replaces it),
    kill-children (SIGKILL an executor process), restart-db (restart the embedded PostgreSQL
    at 30% and 70%), lock-rows (hold a row lock from another session for two leases).
    """
    from reproq_cli.commands._common import database_url

    config = load_config("worker", config_path=config_path, flags={"dsn": dsn})
    url = database_url(config)
    options = TortureOptions(chaos=_chaos(chaos), **params)  # type: ignore[arg-type]
    restart = None
    if not config.get("dsn") and "restart-db" in options.chaos:
        from reproq_cli.db import embedded

        def restart() -> None:
            embedded.restart(os.environ)

    torture = Torture(options, url, restart_db=restart, say=console.notice)
    report = torture.run()
    if as_json:
        console.print_json(report.as_dict())
    else:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
        console.data(
            f"run {report.run}: {report.tasks} tasks in {report.duration_seconds}s "
            f"with {report.workers} {report.executor} workers"
        )
        console.data(f"statuses: {statuses}")
        console.data(
            f"chaos: {', '.join(report.chaos) or 'none'}; worker kills {report.worker_kills}, "
            f"child kills {report.child_kills}, database restarts {report.db_restarts}, "
            f"row locks {report.row_locks}"
        )
        console.data(
            f"executions: {report.executions} ({report.unfinished_executions} killed mid-run)"
        )
        for line in report.unexpected_exits:
            console.data(f"unexpected: {line}")
        console.data(f"worker logs: {report.workdir}")
    if not report.complete:
        raise ReproqError(
            "torture ended with tasks unfinished",
            hint="run `reproq verify` to see which, and read the worker logs",
            exit_code=EXIT_ERROR,
        )
