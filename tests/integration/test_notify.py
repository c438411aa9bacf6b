"""The READY NOTIFY trigger (sql/migrations/0002_notify_ready.sql) and the worker's listener,
against a real PostgreSQL.

To show that something did *not* notify without sleeping, every check ends with a sentinel
NOTIFY sent after the writes: PostgreSQL delivers notifications in commit order, so whatever
arrives before the sentinel is all the writes produced.
"""

from __future__ import annotations

import io
import json
import threading

import psycopg
import pytest

from reproq_cli.core import policy
from reproq_cli.core.listener import Listener, start_listener
from reproq_cli.core.logs import Logger
from reproq_cli.db.connect import create_pool
from reproq_cli.db.notify import CHANNEL, ReadyListener
from reproq_cli.db.tasks import TaskStore
from tests.support.harness import enqueue, row, wait_for

SENTINEL = "--sentinel--"


@pytest.fixture
def listen(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        yield listener


@pytest.fixture
def store(db_dsn):
    pool = create_pool(db_dsn, min_size=1, max_size=4)
    yield TaskStore(pool, "w1", lease_seconds=300)
    pool.close()


def notified(listen, conn) -> list[str]:
    """Payloads on the channel since the last call, up to a sentinel sent now."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, SENTINEL))
    payloads = []
    for note in listen.notifies(timeout=10):
        if note.payload == SENTINEL:
            return payloads
        assert note.channel == CHANNEL
        payloads.append(note.payload)
    raise AssertionError(f"sentinel not received; got {payloads}")


def test_insert_as_ready_notifies_with_the_queue_name(conn, listen):
    enqueue(conn, "add", 1, 2)
    enqueue(conn, "add", 1, 3, columns={"queue_name": "high"})
    assert notified(listen, conn) == ["default", "high"]


def test_insert_as_waiting_does_not_notify(conn, listen):
    enqueue(conn, "add", 1, 2, columns={"status": "WAITING", "wait_count": 1})
    assert notified(listen, conn) == []


def test_one_notification_per_queue_per_transaction(conn, listen):
    with conn.transaction():
        for n in range(50):
            enqueue(conn, "add", n, 0)
        enqueue(conn, "add", 0, 0, columns={"queue_name": "other"})
    assert notified(listen, conn) == ["default", "other"]


def test_chain_release_notifies_and_claim_and_success_do_not(conn, listen, store):
    parent = enqueue(conn, "add", 1, 1)
    child = enqueue(conn, "add", 2, 2, columns={"parent_id": parent, "status": "WAITING"})
    conn.execute("UPDATE task_runs SET wait_count = 1 WHERE result_id = %s", (child,))
    assert notified(listen, conn) == ["default"]  # the parent's insert

    task = store.claim("default", aging_factor=0)
    assert task is not None and task.result_id == parent
    assert notified(listen, conn) == []  # READY -> RUNNING

    store.complete_success(task, "2", None)
    assert row(conn, parent)["status"] == "SUCCESSFUL"
    assert row(conn, child)["status"] == "READY"
    assert notified(listen, conn) == ["default"]  # WAITING -> READY only


def test_retry_to_ready_notifies(conn, listen, store):
    rid = enqueue(conn, "fail", "x", columns={"queue_name": "q1", "max_attempts": 3})
    notified(listen, conn)
    task = store.claim("q1", aging_factor=0)
    failure = policy.app_error(
        task, message="x", exception_class="builtins.ValueError", traceback="tb", worker_id="w1"
    )
    assert failure.retry
    store.complete_failure(task, failure, None)
    assert row(conn, rid)["status"] == "READY"
    assert notified(listen, conn) == ["q1"]


def test_updates_that_do_not_make_a_row_ready_are_silent(conn, listen):
    rid = enqueue(conn, "add", 1, 2)
    notified(listen, conn)
    conn.execute("UPDATE task_runs SET status = 'READY', priority = 5 WHERE result_id = %s", (rid,))
    conn.execute("UPDATE task_runs SET priority = 6 WHERE result_id = %s", (rid,))
    conn.execute("UPDATE task_runs SET status = 'RUNNING' WHERE result_id = %s", (rid,))
    conn.execute("UPDATE task_runs SET status = 'SUCCESSFUL' WHERE result_id = %s", (rid,))
    assert notified(listen, conn) == []
    # a replay of a finished task (triage retry, replay) makes it READY again
    conn.execute("UPDATE task_runs SET status = 'READY' WHERE result_id = %s", (rid,))
    assert notified(listen, conn) == ["default"]


def test_a_rolled_back_enqueue_does_not_notify(conn, listen):
    with conn.transaction():
        enqueue(conn, "add", 1, 2)
        raise psycopg.Rollback()
    assert conn.execute("SELECT count(*) FROM task_runs").fetchone() == (0,)
    assert notified(listen, conn) == []


def test_ready_listener_waits_then_returns_every_buffered_payload(db_dsn, conn):
    listener = ReadyListener.open(db_dsn, application_name="reproq listener t1")
    try:
        assert listener.wait(0.05) == []
        with conn.transaction():
            enqueue(conn, "add", 1, 1, columns={"queue_name": "a"})
            enqueue(conn, "add", 1, 1, columns={"queue_name": "b"})
        assert sorted(listener.wait(10)) == ["a", "b"]
        backend = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = 'reproq listener t1'"
        ).fetchone()
        assert backend == ("LISTEN reproq_ready",)
    finally:
        listener.close()


def _listener_pids(conn, name: str) -> list[int]:
    return [
        pid
        for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
            (name,),
        )
    ]


def test_listener_wakes_only_for_its_queues_and_survives_a_terminated_connection(db_dsn, conn):
    out = io.StringIO()
    wakes = threading.Semaphore(0)
    listener = start_listener(
        db_dsn, worker_id="w-l", queues=["a", "b"], wake=wakes.release, log=Logger(out)
    )
    name = "reproq listener w-l"
    try:
        (first_pid,) = wait_for(lambda: _listener_pids(conn, name), what="LISTEN session")
        enqueue(conn, "add", 1, 1, columns={"queue_name": "elsewhere"})
        # Not one of its queues: no wake-up (delivery takes milliseconds, so one second
        # without a wake-up is a clear answer).
        assert not wakes.acquire(timeout=1.0)
        enqueue(conn, "add", 1, 2, columns={"queue_name": "b"})
        assert wakes.acquire(timeout=10)

        conn.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        (second_pid,) = wait_for(
            lambda: [p for p in _listener_pids(conn, name) if p != first_pid],
            what="a new LISTEN session",
        )
        assert second_pid != first_pid
        assert wakes.acquire(timeout=10)  # the catch-up wake-up after reconnecting
        enqueue(conn, "add", 1, 3, columns={"queue_name": "a"})
        assert wakes.acquire(timeout=10)
    finally:
        listener.stop()
    logs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["msg"]) for e in logs] == [
        ("WARN", "LISTEN connection lost; polling until it reconnects"),
        ("INFO", "LISTEN connection restored"),
    ]
    # stop() closed the connection (the server ends the session right after)
    wait_for(lambda: not _listener_pids(conn, name), what="the LISTEN session to end")


def test_listener_keeps_retrying_a_server_that_does_not_answer():
    out = io.StringIO()
    attempts = threading.Semaphore(0)

    def refuse():
        attempts.release()
        raise OSError("connection refused")

    listener = Listener(refuse, ["default"], wake=lambda: None, log=Logger(out))
    listener.start()
    try:
        assert attempts.acquire(timeout=5)
        assert attempts.acquire(timeout=5)  # retried after a backoff, not given up
    finally:
        listener.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # warned once, not once per attempt
    assert "LISTEN connection failed" in lines[0]
