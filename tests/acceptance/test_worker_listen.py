"""LISTEN/NOTIFY wake-ups in a real `reproq worker`: a task enqueued while the worker sleeps
out a long poll backoff starts at once; with --no-listen it waits for the next poll.

"The worker is idle" must be a fact, not a guess: otherwise a poll that happens to run just
after the enqueue would pick the task up and the test would pass without LISTEN. So the
worker's claim round is held on a SHARE lock on task_runs (it blocks the claim's UPDATE, not
the start-up schema check's reads; reclaim, the only other writer, is turned off), seen
waiting in pg_locks, released, and seen finished (its session idle) before anything is
enqueued.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from tests.support.harness import (
    enqueue,
    holds_for,
    parse_logs,
    row,
    wait_for,
    waiting_on_task_runs,
)

LISTEN_QUERY = "LISTEN reproq_ready"


def listener_pids(conn: psycopg.Connection, worker_id: str) -> list[int]:
    return [
        pid
        for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query = %s",
            (f"reproq listener {worker_id}", LISTEN_QUERY),
        )
    ]


@contextmanager
def claim_round_held(conn_for: Callable, dsn: str) -> Iterator[Callable[[], int]]:
    """Hold the worker's next claim round; returns a function that waits for it to block.

    On exit the lock is released and the held round is waited for until it has finished.
    """
    blocker = conn_for(dsn)
    observer = conn_for(dsn)
    blocked: list[int] = []

    def wait_blocked() -> int:
        (pid,) = wait_for(
            lambda: waiting_on_task_runs(observer), what="a claim round waiting on the lock"
        )
        blocked.append(pid)
        return pid

    with blocker.transaction():
        blocker.execute("LOCK TABLE task_runs IN SHARE MODE")
        yield wait_blocked
    assert blocked, "wait_blocked() was not called"
    wait_for(
        lambda: observer.execute(
            "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = %s", (blocked[-1],)
        ).fetchone()[0],
        what="the held claim round to finish",
    )


def start_idle_worker(workers, conn_for, dsn, conn, worker_id, *flags, backoff="5s"):
    """A worker (concurrency 1) past its first, empty claim round, sleeping out ``backoff``."""
    with claim_round_held(conn_for, dsn) as wait_blocked:
        proc = workers.start(
            "--worker-id",
            worker_id,
            *flags,
            concurrency=1,
            reclaim_interval_seconds=0,
            poll_min_backoff=backoff,
            poll_max_backoff=backoff,
        )
        wait_blocked()
        if "--no-listen" not in flags:
            wait_for(lambda: listener_pids(conn, worker_id), what="the worker's LISTEN session")
    return proc


def seconds_to_start(conn, rid: int) -> float:
    r = row(conn, rid)
    return (r["started_at"] - r["enqueued_at"]).total_seconds()


def stop(workers, proc):
    proc.send_signal(signal.SIGTERM)
    run = workers.finish(proc)
    assert run.returncode == 0, run.stderr
    return run


def test_listen_starts_a_task_long_before_the_next_poll(workers, conn, conn_for, db_dsn):
    proc = start_idle_worker(workers, conn_for, db_dsn, conn, "w-listen")
    rid = enqueue(conn, "add", 2, 3)
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", timeout=10, what="task done")
    # The next poll is 5 s after the last one; a NOTIFY wake-up takes milliseconds.
    assert seconds_to_start(conn, rid) < 2.0
    run = stop(workers, proc)
    assert not [e for e in run.logs if e.get("level") in ("WARN", "ERROR")], run.stdout


def test_no_listen_polls_only_and_still_works(workers, conn, conn_for, db_dsn):
    proc = start_idle_worker(workers, conn_for, db_dsn, conn, "w-poll", "--no-listen")
    assert listener_pids(conn, "w-poll") == []
    rid = enqueue(conn, "add", 2, 3)
    # not picked up before the 5 s poll comes round
    holds_for(lambda: row(conn, rid)["status"] == "READY", 3.0, what="task READY until the poll")
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", timeout=15, what="polled task")
    assert seconds_to_start(conn, rid) >= 3.0
    stop(workers, proc)


def test_no_listen_from_environment_and_config(workers, conn, conn_for, db_dsn):
    proc = workers.start("--worker-id", "w-env", env={"REPROQ_NO_LISTEN": "true"})
    wait_for(
        lambda: conn.execute("SELECT 1 FROM reproq_workers WHERE worker_id = 'w-env'").fetchone(),
        what="registered",
    )
    rid = enqueue(conn, "add", 1, 1)  # still polled (10-50 ms backoff)
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", what="polled task")
    assert listener_pids(conn, "w-env") == []
    stop(workers, proc)

    proc = workers.start("--worker-id", "w-file", no_listen=True)
    rid = enqueue(conn, "add", 1, 2)
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", what="polled task")
    assert listener_pids(conn, "w-file") == []
    stop(workers, proc)


def test_listener_reconnects_after_its_backend_is_terminated(workers, conn, conn_for, db_dsn):
    proc = start_idle_worker(workers, conn_for, db_dsn, conn, "w-re", backoff="30s")
    (first,) = listener_pids(conn, "w-re")
    # Reconnecting triggers one catch-up claim round; hold it too, so that the task below can
    # only be started by a NOTIFY on the new connection.
    with claim_round_held(conn_for, db_dsn) as wait_blocked:
        conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        wait_for(
            lambda: [p for p in listener_pids(conn, "w-re") if p != first],
            what="a new LISTEN session",
        )
        wait_blocked()
    rid = enqueue(conn, "add", 4, 5)
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", timeout=10, what="task done")
    assert seconds_to_start(conn, rid) < 2.0  # the next poll would be 30 s away
    assert proc.poll() is None
    run = stop(workers, proc)
    notes = [(e["level"], e["msg"]) for e in parse_logs(run.stdout) if "LISTEN" in e["msg"]]
    assert notes == [
        ("WARN", "LISTEN connection lost; polling until it reconnects"),
        ("INFO", "LISTEN connection restored"),
    ]


def test_dsn_flag_is_used(run_cli, db_dsn, conn):
    # No config file and no DATABASE_URL: only --dsn names the database (it used to be
    # dropped, and the worker fell back to the embedded server or failed).
    result = run_cli("worker", "--dsn", db_dsn, "--burst", "--worker-id", "w-dsn")
    assert result.returncode == 0, result.stderr
    assert "Starting reproq worker" in result.stdout
