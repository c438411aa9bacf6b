"""`python -m reproq_django.demo`: reproq end to end on this machine, in about a minute.

Starts the embedded PostgreSQL (no DSN needed), creates a fresh `reproq_demo` database,
migrates it with Django, enqueues sample tasks through Django's Tasks API, runs `reproq worker`
until every task has finished, and prints what happened to each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import conninfo, sql
from rich.console import Console
from rich.table import Table

from reproq_cli.errors import DatabaseError, ReproqError

console = Console()
DEMO_DB = "reproq_demo"


def fresh_database(admin_dsn: str) -> str:
    from reproq_cli.db.connect import connect, describe_target, one_line

    hint = "unset DATABASE_URL to run the demo on the embedded PostgreSQL, or correct it"
    try:
        conn = connect(admin_dsn)
    except DatabaseError as exc:
        raise DatabaseError(exc.message, hint=hint) from None
    with conn:
        try:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot create the database {DEMO_DB} on {describe_target(admin_dsn)}: "
                f"{one_line(exc)}",
                hint=f"connect as a role that may create databases; {hint}",
            ) from None
    return conninfo.make_conninfo(admin_dsn, dbname=DEMO_DB)


def main() -> int:
    """The demo, with reproq's error boundary: what a user can fix is an ``error:`` line
    and a ``hint:`` line on stderr, not a traceback."""
    from reproq_cli import console as messages

    try:
        return run()
    except ReproqError as exc:
        messages.error(exc.message, exc.hint)
        return exc.exit_code


def run() -> int:
    from reproq_cli.db import embedded
    from reproq_cli.db.connect import describe_target

    admin_dsn = os.environ.get("DATABASE_URL") or embedded.start(os.environ)
    # Not wrapped at the terminal's width: a DSN is copied from here.
    console.print(f"[bold]PostgreSQL:[/bold] {describe_target(admin_dsn)}", soft_wrap=True)
    dsn = fresh_database(admin_dsn)
    os.environ["REPROQ_DEMO_DSN"] = dsn
    os.environ["DJANGO_SETTINGS_MODULE"] = "reproq_django.demo.settings"

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    console.print("[bold]Migrated[/bold] (Django migrate ran reproq's schema)")

    from reproq_django.demo import tasks
    from reproq_django.models import TaskRun
    from reproq_django.workflows import chain, chord

    results = {
        "add(2, 3)": tasks.add.enqueue(2, 3),
        "greet('Ada')": tasks.greet.enqueue("Ada"),
        "flaky_payment(42)": tasks.flaky_payment.enqueue(42),
    }
    for i, step in enumerate(
        chain((tasks.fetch_page, (1,)), (tasks.fetch_page, (2,))).enqueue(), 1
    ):
        results[f"chain step {i}"] = step
    members, callback = chord(
        (tasks.fetch_page, (10,)),
        (tasks.fetch_page, (11,)),
        (tasks.fetch_page, (12,)),
        callback=(tasks.summarize, ("report",)),
    ).enqueue()
    for i, member in enumerate(members, 1):
        results[f"chord member {i}"] = member
    results["chord callback"] = callback
    for step in (1, 2):
        results[f"lock_key pair {step}"] = tasks.update_account.enqueue(
            "acct-7", step, lock_key="account:acct-7"
        )
    console.print(f"[bold]Enqueued[/bold] {len(results)} tasks through Django's Tasks API")

    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "reproq.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "dsn": dsn,
                    "worker": {
                        "python_bin": sys.executable,
                        "allowed_task_modules": ["reproq_django.demo.tasks."],
                        "concurrency": 4,
                        "poll_min_backoff": "20ms",
                        "poll_max_backoff": "100ms",
                    },
                }
            )
        )
        started = time.monotonic()
        for round_number in range(1, 4):
            console.print(f"[bold]Running[/bold] reproq worker --burst (round {round_number})")
            worker = subprocess.run(
                [sys.executable, "-m", "reproq_cli", "worker", "--burst", "--config", str(config),
                 "--log-format", "text"],
                check=False,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "DATABASE_URL": dsn},
            )  # fmt: skip
            if worker.returncode != 0:
                raise ReproqError(
                    f"reproq worker --burst exited with status {worker.returncode}",
                    hint="its error is above",
                )
            waiting = TaskRun.objects.filter(status="READY", run_after__gt=django_now())
            if not waiting.exists():
                break
            # A failed attempt waits 30 s before its retry; the demo skips the wait.
            count = waiting.update(run_after=django_now())
            console.print(f"  fast-forwarding {count} retry backoff(s)")
        elapsed = time.monotonic() - started

    table = Table(title=f"reproq demo: worker time {elapsed:.1f}s")
    for column in ("task", "id", "status", "attempts", "result / last error"):
        table.add_column(column)
    for label, result in results.items():
        result.refresh()
        outcome = (
            repr(result.return_value)
            if result.raw_status == "SUCCESSFUL"
            else (result.data.last_error or "")
        )
        table.add_row(label, result.id, result.raw_status, str(result.attempts), outcome)
    console.print(table)
    lock_rows = TaskRun.objects.filter(lock_key="account:acct-7").order_by("started_at")
    first, second = list(lock_rows)
    console.print(
        f"lock_key pair ran one after the other: {first.finished_at <= second.started_at}"
    )
    return 0


def django_now():  # noqa: ANN201 - a datetime; imported lazily after django.setup()
    from django.utils import timezone

    return timezone.now()


if __name__ == "__main__":
    sys.exit(main())
