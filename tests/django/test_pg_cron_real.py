"""`manage.py reproq pg-cron` against a real PostgreSQL with pg_cron preloaded.

The embedded server has no pg_cron (see test_pg_cron.py for what runs there), so a session
cluster of the system PostgreSQL with pg_cron is started on first use (tests/support/
pg_cron_server.py). Django runs in a child process whose "default" database is that
cluster's cron.database_name, exactly as a project would run `manage.py reproq pg-cron`.
Each job's command is run as pg_cron would run it (its database, its user) rather than waiting
up to a minute for the scheduler.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from reproq_cli.db import schema
from reproq_cli.db.connect import connection
from tests.conftest import REPO_ROOT
from tests.support.pg_cron_server import PgCronServer, find_pg_cron_install, pg_cron_server

CRON_DB = "reproq_cron"
FUNCTION = "reproq_enqueue_periodic_task(text)"

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture(scope="session")
def pg_cron_cluster() -> Iterator[PgCronServer]:
    install = find_pg_cron_install()
    if install is None:
        pytest.skip(
            "pg_cron is not installed for any local PostgreSQL server (Debian/Ubuntu: "
            "apt-get install postgresql-15-cron, which .ci/run does)"
        )
    with pg_cron_server(install, CRON_DB) as server:
        with connection(server.dsn()) as conn:
            schema.apply(conn)
        yield server


@pytest.fixture
def cron_conn(pg_cron_cluster: PgCronServer) -> Iterator[Conn]:
    """A connection to the cron database, reset to: schema, no pg_cron, no function, no rows."""
    with psycopg.connect(pg_cron_cluster.dsn(), autocommit=True, row_factory=dict_row) as conn:
        conn.execute("DROP EXTENSION IF EXISTS pg_cron")
        conn.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}")
        conn.execute("TRUNCATE task_runs, periodic_tasks")
        yield conn


def run_manage(
    server: PgCronServer, *args: str, dbname: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `manage.py reproq pg-cron ARGS` with Django's default database on `server`."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "REPROQ_TEST_DJANGO_DSN": server.dsn(dbname),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", "reproq", "pg-cron", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manage(server: PgCronServer, *args: str) -> str:
    done = run_manage(server, *args)
    assert done.returncode == 0, f"pg-cron {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def add_task(conn: Conn, name: str, cron_expr: str, payload: object = None, **extra: Any) -> None:
    columns = {
        "name": name,
        "cron_expr": cron_expr,
        "task_path": extra.pop("task_path", "myapp.tasks.report"),
        "payload_json": Jsonb({} if payload is None else payload),
        **extra,
    }
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    conn.execute(
        f"INSERT INTO periodic_tasks ({names}, next_run_at) VALUES ({marks}, now())",
        list(columns.values()),
    )


def cron_jobs(conn: Conn) -> dict[str, dict[str, Any]]:
    """Every pg_cron job by name (a duplicate name would fail the length check)."""
    rows = conn.execute(
        "SELECT jobname, schedule, command, database, username, active FROM cron.job"
    ).fetchall()
    jobs = {row["jobname"]: row for row in rows}
    assert len(jobs) == len(rows), f"duplicate job names: {rows}"
    return jobs


def ours(conn: Conn, prefix: str = "reproq_periodic") -> dict[str, tuple[str, str]]:
    """{jobname: (schedule, command)} for the jobs named prefix_*."""
    return {
        name: (job["schedule"], job["command"])
        for name, job in cron_jobs(conn).items()
        if name.startswith(prefix + "_")
    }


def schedule_foreign_jobs(conn: Conn) -> None:
    """Jobs that are not ours, one of which an unescaped LIKE 'reproq_periodic_%' would match."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    conn.execute("SELECT cron.schedule('reproq_periodic2_keep', '0 0 * * *', 'SELECT 1')")
    conn.execute("SELECT cron.schedule('vacuum_nightly', '0 4 * * *', 'VACUUM')")


FOREIGN = {"reproq_periodic2_keep", "vacuum_nightly"}


def has_function(conn: Conn) -> bool:
    row = conn.execute(f"SELECT to_regprocedure('{FUNCTION}') IS NOT NULL AS present").fetchone()
    assert row is not None
    return bool(row["present"])


def test_install_schedules_enabled_tasks_whose_commands_enqueue(
    pg_cron_cluster: PgCronServer, cron_conn: Conn
) -> None:
    add_task(cron_conn, "nightly", "0 3 * * *", {"args": [1], "kwargs": {"x": 2}})
    add_task(cron_conn, "it's weekly", "30 6 * * 1", [7], queue_name="reports", priority=5)
    add_task(cron_conn, "paused", "* * * * *", enabled=False)
    assert cron_conn.execute("SELECT to_regclass('cron.job') AS t").fetchone() == {"t": None}

    out = manage(pg_cron_cluster)

    assert "Scheduled 2 pg_cron job(s)." in out
    weekly = "reproq_periodic_it_s_weekly_" + hashlib.sha256(b"it's weekly").hexdigest()[:8]
    jobs = cron_jobs(cron_conn)
    assert set(jobs) == {"reproq_periodic_nightly", weekly}
    assert jobs["reproq_periodic_nightly"] == {
        "jobname": "reproq_periodic_nightly",
        "schedule": "0 3 * * *",
        "command": "SELECT reproq_enqueue_periodic_task('nightly')",
        "database": CRON_DB,
        "username": "postgres",
        "active": True,
    }
    assert jobs[weekly]["schedule"] == "30 6 * * 1"
    assert jobs[weekly]["command"] == "SELECT reproq_enqueue_periodic_task('it''s weekly')"
    assert has_function(cron_conn)

    # Run each job's command where pg_cron would: its database, as its user.
    enqueued = {}
    for job in jobs.values():
        dsn = pg_cron_cluster.dsn(job["database"]) + f" user={job['username']}"
        with psycopg.connect(dsn, autocommit=True) as job_conn:
            row = job_conn.execute(job["command"]).fetchone()
        assert row is not None and row[0] is not None, job
        enqueued[job["jobname"]] = row[0]
    runs = {
        row["name"]: row
        for row in cron_conn.execute(
            "SELECT r.result_id, r.status, r.task_path, r.queue_name, r.priority, r.spec_json, "
            "       p.name, p.last_run_at "
            "FROM task_runs r JOIN periodic_tasks p ON p.name = r.spec_json ->> 'periodic_name'"
        ).fetchall()
    }
    assert set(runs) == {"nightly", "it's weekly"}
    nightly, weekly_run = runs["nightly"], runs["it's weekly"]
    assert nightly["result_id"] == enqueued["reproq_periodic_nightly"]
    assert (nightly["status"], nightly["task_path"]) == ("READY", "myapp.tasks.report")
    assert (nightly["spec_json"]["args"], nightly["spec_json"]["kwargs"]) == ([1], {"x": 2})
    assert nightly["last_run_at"] is not None
    assert weekly_run["result_id"] == enqueued[weekly]
    assert (weekly_run["queue_name"], weekly_run["priority"]) == ("reports", 5)
    assert weekly_run["spec_json"]["args"] == [7]


def test_reinstall_is_idempotent_and_follows_the_schedules(
    pg_cron_cluster: PgCronServer, cron_conn: Conn
) -> None:
    schedule_foreign_jobs(cron_conn)
    for name in ("alpha", "beta", "gamma"):
        add_task(cron_conn, name, "0 1 * * *")

    manage(pg_cron_cluster)
    first = cron_jobs(cron_conn)
    out = manage(pg_cron_cluster, "--install", "--if-supported")

    assert "Scheduled 3 pg_cron job(s)." in out
    again = cron_jobs(cron_conn)
    assert (
        set(again)
        == set(first)
        == FOREIGN
        | {
            "reproq_periodic_alpha",
            "reproq_periodic_beta",
            "reproq_periodic_gamma",
        }
    )
    assert len(cron_conn.execute("SELECT jobid FROM cron.job").fetchall()) == 5

    # Disable one, delete one, reschedule one, add one: a re-sync follows all four.
    cron_conn.execute("UPDATE periodic_tasks SET enabled = false WHERE name = 'beta'")
    cron_conn.execute("DELETE FROM periodic_tasks WHERE name = 'gamma'")
    cron_conn.execute("UPDATE periodic_tasks SET cron_expr = '*/10 * * * *' WHERE name = 'alpha'")
    add_task(cron_conn, "delta", "15 2 * * *")

    assert "Scheduled 2 pg_cron job(s)." in manage(pg_cron_cluster)

    assert ours(cron_conn) == {
        "reproq_periodic_alpha": (
            "*/10 * * * *",
            "SELECT reproq_enqueue_periodic_task('alpha')",
        ),
        "reproq_periodic_delta": ("15 2 * * *", "SELECT reproq_enqueue_periodic_task('delta')"),
    }
    assert set(cron_jobs(cron_conn)) >= FOREIGN


def test_remove_unschedules_only_its_prefix_and_drops_the_function(
    pg_cron_cluster: PgCronServer, cron_conn: Conn
) -> None:
    schedule_foreign_jobs(cron_conn)
    add_task(cron_conn, "alpha", "0 1 * * *")
    add_task(cron_conn, "beta", "0 2 * * *")
    manage(pg_cron_cluster)
    manage(pg_cron_cluster, "--prefix", "billing")
    assert set(ours(cron_conn, "billing")) == {"billing_alpha", "billing_beta"}
    assert len(ours(cron_conn)) == 2

    out = manage(pg_cron_cluster, "--remove", "--prefix", "billing")

    # The other prefix's jobs still call the function, so it stays and they still enqueue.
    assert "Removed pg_cron jobs billing_*; kept the function (other jobs call it)." in out
    assert ours(cron_conn, "billing") == {}
    remaining = ours(cron_conn)
    assert set(remaining) == {"reproq_periodic_alpha", "reproq_periodic_beta"}
    assert has_function(cron_conn)
    row = cron_conn.execute(remaining["reproq_periodic_alpha"][1]).fetchone()
    assert row is not None
    assert row["reproq_enqueue_periodic_task"] is not None

    out = manage(pg_cron_cluster, "--remove")

    assert "Removed pg_cron jobs reproq_periodic_* and the function." in out
    assert set(cron_jobs(cron_conn)) == FOREIGN
    assert not has_function(cron_conn)
    # Removing again finds nothing to do and still succeeds.
    manage(pg_cron_cluster, "--remove")
    assert set(cron_jobs(cron_conn)) == FOREIGN


def test_dry_run_on_a_pg_cron_server_changes_nothing(
    pg_cron_cluster: PgCronServer, cron_conn: Conn
) -> None:
    add_task(cron_conn, "nightly", "0 3 * * *")

    out = manage(pg_cron_cluster, "--dry-run")

    assert "not available" not in out
    assert "would schedule reproq_periodic_nightly '0 3 * * *' -> nightly" in out
    assert cron_conn.execute("SELECT to_regclass('cron.job') AS t").fetchone() == {"t": None}
    assert not has_function(cron_conn)


def test_a_database_pg_cron_cannot_be_created_in_gets_a_one_line_error(
    pg_cron_cluster: PgCronServer, cron_conn: Conn
) -> None:
    """pg_cron is listed as available in every database of the cluster, but can be created
    only in cron.database_name's: elsewhere the command says so in one line, with the fix,
    instead of a traceback, and changes nothing."""
    other = "reproq_not_cron"
    with psycopg.connect(pg_cron_cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {other}")
    try:
        with connection(pg_cron_cluster.dsn(other)) as conn:
            schema.apply(conn)
            conn.execute(
                "INSERT INTO periodic_tasks (name, cron_expr, task_path, payload_json, "
                "next_run_at) VALUES ('nightly', '0 3 * * *', 'myapp.tasks.report', '{}', now())"
            )

        done = run_manage(pg_cron_cluster, dbname=other)

        assert done.returncode != 0
        error = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(error) == 1, done.stderr
        assert (
            f"pg_cron is not available in database '{other}': it runs in '{CRON_DB}' "
            "(cron.database_name): point --database at that database" in error[0]
        )
        assert "reproq beat" in error[0]
        assert "Traceback" not in done.stderr
        skipped = run_manage(pg_cron_cluster, "--if-supported", dbname=other)
        assert skipped.returncode == 0, skipped.stderr
        assert f"pg-cron unavailable (pg_cron runs in database '{CRON_DB}'); skipping." in (
            skipped.stdout
        )
        dry = run_manage(pg_cron_cluster, "--dry-run", dbname=other)
        assert f"note: pg_cron is not available in database '{other}'" in dry.stdout
        with connection(pg_cron_cluster.dsn(other)) as conn:
            assert conn.execute(
                "SELECT count(*) AS n FROM pg_extension WHERE extname = 'pg_cron'"
            ).fetchone() == {"n": 0}
    finally:
        with psycopg.connect(pg_cron_cluster.dsn(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")


def test_a_server_where_pg_cron_is_installed_but_not_preloaded(
    pg_cron_cluster: PgCronServer,
) -> None:
    """pg_available_extensions lists pg_cron as soon as its package is installed; without
    shared_preload_libraries its CREATE EXTENSION fails with an unrelated-looking error about
    cron.database_name. The command names the missing preload instead, in one line."""
    with pg_cron_server(pg_cron_cluster.install, CRON_DB, preload=False) as bare:
        with connection(bare.dsn()) as conn:
            schema.apply(conn)
            assert conn.execute(
                "SELECT count(*) AS n FROM pg_available_extensions WHERE name = 'pg_cron'"
            ).fetchone() == {"n": 1}

        done = run_manage(bare)

        assert done.returncode != 0
        error = [line for line in done.stderr.splitlines() if line.strip()]
        assert error == [
            "CommandError: pg_cron is not available on this server (installed, not preloaded): "
            "add it to shared_preload_libraries and restart PostgreSQL, or use "
            "`manage.py reproq beat`"
        ], done.stderr
        skipped = run_manage(bare, "--if-supported")
        assert skipped.returncode == 0, skipped.stderr
        assert "pg-cron unavailable (pg_cron not preloaded); skipping." in skipped.stdout
