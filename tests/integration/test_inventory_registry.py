"""The worker registry's statements against a real PostgreSQL (go-worker.md §11
TestWorkerRegistration): register, heartbeat, unregister."""

from __future__ import annotations

import pytest

from reproq_cli.db.connect import create_pool
from reproq_cli.db.tasks import TaskStore


@pytest.fixture
def store(db_dsn):
    pool = create_pool(db_dsn, min_size=1, max_size=2)
    yield TaskStore(pool, "w-reg", lease_seconds=300)
    pool.close()


def test_register_heartbeat_and_unregister(conn, store):
    store.register(hostname="h1", concurrency=4, queues=["a", "b"], version="9.9")
    assert conn.execute(
        "SELECT worker_id, hostname, concurrency, queues, version FROM reproq_workers"
    ).fetchall() == [("w-reg", "h1", 4, ["a", "b"], "9.9")]
    # A restart under the same id updates its one row.
    store.register(hostname="h2", concurrency=2, queues=["c"], version="10.0")
    assert conn.execute("SELECT hostname, concurrency, version FROM reproq_workers").fetchall() == [
        ("h2", 2, "10.0")
    ]
    conn.execute("UPDATE reproq_workers SET last_seen_at = now() - interval '1 hour'")
    store.seen()
    (age,) = conn.execute(
        "SELECT extract(epoch FROM now() - last_seen_at) FROM reproq_workers"
    ).fetchone()
    assert float(age) < 60
    store.unregister()
    assert conn.execute("SELECT count(*) FROM reproq_workers").fetchone() == (0,)
