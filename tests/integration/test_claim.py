"""The claim statement and completion writes against a real PostgreSQL (go-worker.md §4, §6)."""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import uuid
from concurrent.futures import Future

import psycopg
import pytest
from psycopg import sql

from reproq_cli.core.logs import Logger
from reproq_cli.core.worker import Worker
from reproq_cli.db import tasks as tasks_module
from reproq_cli.db.connect import create_pool
from reproq_cli.db.queries import query
from reproq_cli.db.tasks import FencingError, SuccessConnection, TaskStore
from reproq_cli.errors import DatabaseError
from reproq_cli.models import Failure
from tests.support.harness import enqueue, row, wait_for


@pytest.fixture
def pool(db_dsn):
    pool = create_pool(db_dsn, min_size=1, max_size=10)
    yield pool
    pool.close()


@pytest.fixture
def store(pool):
    return TaskStore(pool, "w1", lease_seconds=300)


def write_success(writer, task, return_json) -> None:
    """A success through the writer, waited for: raises FencingError when the lease was lost,
    or the error that stopped its batch."""
    future: Future[bool] = Future()

    def done(outcome) -> None:
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    writer.submit(task, return_json, None, done)
    if not future.result(timeout=60):
        raise FencingError("fencing failure or task not running")


def claim(store, queue="default", aging=0.0):
    return store.claim(queue, aging_factor=aging)


def test_claim_sets_lease_fields(conn, store):
    rid = enqueue(conn, "add", 1, 2)
    task = claim(store)
    assert task.result_id == rid
    assert task.attempts == 1
    assert task.task_path == "tests.support.tasks.add"
    r = row(conn, rid)
    assert r["status"] == "RUNNING"
    assert r["leased_by"] == "w1"
    assert r["worker_ids"] == ["w1"]
    lease = conn.execute(
        "SELECT extract(epoch FROM leased_until - now()) FROM task_runs WHERE result_id = %s",
        (rid,),
    ).fetchone()[0]
    assert 290 < float(lease) <= 300
    assert claim(store) is None


def test_priority_then_age(conn, store):
    low = enqueue(conn, "add", 1, 1, columns={"priority": 0})
    high = enqueue(conn, "add", 2, 2, columns={"priority": 10})
    older_high = enqueue(
        conn, "add", 3, 3, columns={"priority": 10, "enqueued_at": "2020-01-01T00:00:00Z"}
    )
    assert [claim(store).result_id for _ in range(3)] == [older_high, high, low]


def test_priority_aging(conn, store):
    old_low = enqueue(
        conn,
        "add",
        1,
        1,
        columns={"priority": 0},
    )
    conn.execute(
        "UPDATE task_runs SET enqueued_at = now() - interval '120 seconds' WHERE result_id = %s",
        (old_low,),
    )
    fresh_high = enqueue(conn, "add", 2, 2, columns={"priority": 10})
    # without aging priority 10 wins; with 10 s per point the 120 s old task is at 12
    assert claim(store, aging=0).result_id == fresh_high
    conn.execute("UPDATE task_runs SET status = 'READY' WHERE result_id = %s", (fresh_high,))
    assert claim(store, aging=10).result_id == old_low


def test_claim_order_matches_the_aged_score_across_levels(conn, store):
    """The per-level walk must pick exactly what a full sort by aged score would."""
    rng = random.Random(7)
    expected = []
    # distinct aged scores, so the expected order has no ties to argue about
    for n, score in enumerate(rng.sample(range(10, 600), 60)):
        priority = rng.choice([-2, 0, 3, 7])
        age_minutes = score - priority
        rid = enqueue(conn, "add", n, 0, unique=str(n), columns={"priority": priority})
        conn.execute(
            "UPDATE task_runs SET enqueued_at = now() - make_interval(mins => %s) "
            "WHERE result_id = %s",
            (age_minutes, rid),
        )
        # aging 60 s per point: one point per minute of age
        expected.append((-score, rid))
    for n in range(5):  # higher priority but not due: never claimed
        enqueue(
            conn,
            "add",
            n,
            1,
            unique=f"later{n}",
            columns={"priority": 99, "run_after": "2999-01-01T00:00:00Z"},
        )
    got = [claim(store, aging=60).result_id for _ in range(60)]
    assert got == [rid for _, rid in sorted(expected)]
    assert claim(store, aging=60) is None


def test_claim_looks_past_blocked_heads(conn, store):
    holder = enqueue(conn, "add", 0, 0, columns={"lock_key": "L", "priority": 9})
    assert claim(store).result_id == holder  # RUNNING now, holding L
    for n in range(70):  # older than anything else at this level, all blocked by L
        enqueue(conn, "add", n, 1, unique=str(n), columns={"lock_key": "L", "priority": 9})
    free = enqueue(conn, "add", 1, 2, columns={"priority": 9})
    low = enqueue(conn, "add", 1, 3, columns={"priority": 0})
    assert claim(store).result_id == free
    assert claim(store).result_id == low
    assert claim(store) is None


def test_run_after_in_the_future_waits(conn, store):
    enqueue(conn, "add", 1, 1, columns={"run_after": "2999-01-01T00:00:00Z"})
    assert claim(store) is None
    due = enqueue(conn, "add", 2, 2, columns={"run_after": "2000-01-01T00:00:00Z"})
    assert claim(store).result_id == due


def test_queues_are_separate_and_paused_queue_is_skipped(conn, store):
    rid = enqueue(conn, "add", 1, 1, columns={"queue_name": "mail"})
    assert claim(store, "default") is None
    conn.execute("INSERT INTO reproq_queue_controls (queue_name, paused) VALUES ('mail', true)")
    assert claim(store, "mail") is None
    conn.execute("UPDATE reproq_queue_controls SET paused = false")
    assert claim(store, "mail").result_id == rid


def test_lock_key_excludes(conn, store):
    first = enqueue(conn, "add", 1, 1, columns={"lock_key": "user:1"})
    second = enqueue(conn, "add", 2, 2, columns={"lock_key": "user:1"})
    other = enqueue(conn, "add", 3, 3, columns={"lock_key": "user:2"})
    assert claim(store).result_id == first
    # second is blocked; like the Go worker the next candidate in order is considered
    assert claim(store).result_id == other
    assert claim(store) is None
    store.complete_success(_task(store, conn, first), "1", None)
    assert claim(store).result_id == second


def _task(store, conn, rid):
    """A ClaimedTask stand-in for completing a row this store leased."""
    from reproq_cli.models import ClaimedTask

    r = row(conn, rid)
    return ClaimedTask(
        result_id=rid,
        queue_name=r["queue_name"],
        priority=r["priority"],
        spec_text="{}",
        spec_hash=r["spec_hash"],
        enqueued_at=r["enqueued_at"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        timeout_seconds=r["timeout_seconds"],
        lock_key=r["lock_key"],
        concurrency_key=r["concurrency_key"],
        concurrency_limit=r["concurrency_limit"],
        leased_until=r["leased_until"],
        task_path=r["task_path"],
        workflow_id=r["workflow_id"],
    )


def test_concurrency_limit(conn, store):
    ids = [
        enqueue(conn, "add", i, i, columns={"concurrency_key": "acct", "concurrency_limit": 2})
        for i in range(3)
    ]
    assert claim(store).result_id == ids[0]
    assert claim(store).result_id == ids[1]
    assert claim(store) is None
    # a limit of 0 means unlimited
    free = enqueue(conn, "add", 9, 9, columns={"concurrency_key": "acct", "concurrency_limit": 0})
    assert claim(store).result_id == free


def test_rate_limit_token_bucket(conn, store):
    rid = enqueue(conn, "add", 1, 1)
    conn.execute("INSERT INTO rate_limits VALUES ('task:tests.support.tasks.add', 1, 1, 0, now())")
    assert claim(store) is None
    conn.execute("UPDATE rate_limits SET current_tokens = 1 WHERE key LIKE 'task:%%'")
    assert claim(store).result_id == rid
    tokens = conn.execute(
        "SELECT current_tokens FROM rate_limits WHERE key LIKE 'task:%%'"
    ).fetchone()[0]
    assert tokens == pytest.approx(0, abs=0.05)


def test_rate_limit_most_specific_existing_key_wins(conn, store):
    rid = enqueue(conn, "add", 1, 1)
    conn.execute("INSERT INTO rate_limits VALUES ('queue:default', 1, 1, 0, now())")
    assert claim(store) is None  # the queue limit applies: no tokens
    # an inactive task: row shadows the active queue: row (go-worker.md §0.5)
    conn.execute("INSERT INTO rate_limits VALUES ('task:tests.support.tasks.add', 0, 1, 0, now())")
    assert claim(store).result_id == rid


def test_global_limit(conn, store):
    enqueue(conn, "add", 1, 1)
    conn.execute(
        "UPDATE rate_limits SET tokens_per_second = 0.001, burst_size = 1, current_tokens = 0,"
        " last_refilled_at = now() WHERE key = 'global'"
    )
    # Refilled just now: the row's first refill time (the template's, cloned for this test)
    # would have given it a token back once the suite had run for 1,000 s.
    assert claim(store) is None


def test_fencing(conn, pool, store):
    rid = enqueue(conn, "add", 1, 1)
    task = claim(store)
    intruder = TaskStore(pool, "w2", lease_seconds=300)
    with pytest.raises(FencingError):
        intruder.complete_success(task, "1", None)
    with pytest.raises(FencingError):
        intruder.heartbeat(rid)
    assert store.heartbeat(rid) is False
    store.complete_success(task, "3", None)
    with pytest.raises(FencingError):
        store.complete_success(task, "3", None)
    with pytest.raises(FencingError):
        store.complete_failure(task, Failure({"err": "msg"}, retry=False), None)


def test_failure_summary_rules(conn, store):
    rid = enqueue(conn, "add", 1, 1)
    task = claim(store)
    store.complete_failure(task, Failure({"err": "msg"}, retry=False), None)
    assert row(conn, rid)["last_error"] == '{"err":"msg"}'
    assert Failure({"kind": "x"}, retry=False).summary == "x"
    assert Failure({"message": "é" * 600}, retry=False).summary == "é" * 512


def test_round_robin(conn, store):
    q1 = enqueue(conn, "add", 1, 1, columns={"queue_name": "q1"})
    q2 = enqueue(conn, "add", 2, 2, columns={"queue_name": "q2"})
    worker = Worker(_settings(["q1", "q2", "q3"]), store, Logger())
    assert [t.result_id for t in worker._poll(1)] == [q1]
    assert [t.result_id for t in worker._poll(1)] == [q2]
    assert worker._poll(1) == []
    assert worker._round_robin == 3  # the next poll starts at q3


def test_slots_left_by_an_empty_queue_after_a_busy_one_go_to_the_busy_one(conn, store):
    # Go's polls each try the queues until one gives a task: with q2 empty, all six slots
    # go to q1. Each queue asked once for its share, q1 gave three and q2's three were lost.
    busy = [enqueue(conn, "add", i, i, columns={"queue_name": "q1"}) for i in range(10)]
    worker = Worker(_settings(["q1", "q2"]), store, Logger())
    assert [t.result_id for t in worker._poll(6)] == busy[:6]
    assert worker._round_robin % 2 == 1  # q1 gave the last task: the next poll starts at q2


def test_a_queue_that_runs_dry_leaves_its_turns_to_the_one_that_has_more(conn, store):
    # Turn by turn, as Go's one-task polls go: q1, q2, q1, q2, q1, then q2 is empty and q1
    # takes the sixth; the next poll starts after q1.
    q1 = [enqueue(conn, "add", i, i, columns={"queue_name": "q1"}) for i in range(10)]
    q2 = [enqueue(conn, "add", i, -i, columns={"queue_name": "q2"}) for i in range(2)]
    worker = Worker(_settings(["q1", "q2"]), store, Logger())
    got = [t.result_id for t in worker._poll(6)]
    assert sorted(got) == sorted(q1[:4] + q2)
    assert worker._round_robin % 2 == 1


def test_a_task_claimed_as_the_stop_came_is_handed_back_unstarted(conn, store):
    # A claim that returns after the stop signal (it finished before the cancel reached it)
    # hands its task back: READY, the attempt given back, nothing run.
    rid = enqueue(conn, "add", 1, 1)
    worker = Worker(_settings(["default"]), store, Logger())
    [task] = worker._poll(1)
    worker.request_stop()
    assert worker._process(task) is True
    handed_back = row(conn, rid)
    assert (handed_back["status"], handed_back["attempts"]) == ("READY", 0)
    assert handed_back["errors_json"][0]["kind"] == "worker_shutdown"
    assert handed_back["errors_json"][0]["message"] == "worker shut down before the task started"


def _settings(queues):
    from reproq_cli.config import resolve
    from reproq_cli.core.worker import WorkerSettings

    flags = {"worker.queues": ",".join(queues), "worker.allowed_task_modules": ["tests."]}
    config = resolve("worker", env={}, flags=flags)
    return WorkerSettings.from_config(config, burst=True, max_tasks=0, env={})


def test_concurrent_claimers_respect_lock_key(conn, pool):
    """Many threads claim at once; the advisory-lock re-check keeps one RUNNING per key.

    Without the re-check two claimers regularly both pass the NOT EXISTS test (READ
    COMMITTED), so the scenario is repeated to make a regression show reliably.
    """
    for i in range(20):
        enqueue(conn, "add", i, i, columns={"lock_key": "shared"})
    stores = [TaskStore(pool, f"w{i}", lease_seconds=300) for i in range(8)]
    for _ in range(15):
        conn.execute("UPDATE task_runs SET status = 'READY', attempts = 0, leased_by = NULL")
        barrier = threading.Barrier(len(stores))
        won: list[int] = []

        def go(s, barrier=barrier, won=won):
            barrier.wait()
            for _ in range(3):
                task = s.claim("default", aging_factor=0)
                if task is not None:
                    won.append(task.result_id)

        threads = [threading.Thread(target=go, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        running = conn.execute(
            "SELECT count(*), sum(attempts) FROM task_runs WHERE status = 'RUNNING'"
        ).fetchone()
        assert running == (1, 1)
        assert conn.execute(
            "SELECT count(*) FROM task_runs WHERE status = 'READY' AND attempts = 0"
        ).fetchone() == (19,)


def _chord_of_two(conn) -> tuple[int, list[int]]:
    """A workflow of two READY members and a WAITING callback: (callback, members)."""
    wf = uuid.uuid4()
    callback = enqueue(conn, "add", 0, 0, columns={"status": "WAITING", "workflow_id": str(wf)})
    members = [enqueue(conn, "add", i, i, columns={"workflow_id": str(wf)}) for i in (1, 2)]
    conn.execute(
        "INSERT INTO workflow_runs (workflow_id, expected_count, callback_result_id)"
        " VALUES (%s, 2, %s)",
        (wf, callback),
    )
    return callback, members


def test_workflow_chord_release(conn, store):
    callback, members = _chord_of_two(conn)
    first, second = claim(store), claim(store)
    assert {first.result_id, second.result_id} == set(members)
    store.complete_success(first, "1", None)
    wf_row = conn.execute(
        "SELECT success_count, failure_count, status FROM workflow_runs"
    ).fetchone()
    assert wf_row == (1, 0, "RUNNING")
    assert row(conn, callback)["status"] == "WAITING"
    store.complete_success(second, "2", None)
    wf_row = conn.execute(
        "SELECT success_count, failure_count, status FROM workflow_runs"
    ).fetchone()
    assert wf_row == (2, 0, "WAITING_CALLBACK")
    assert row(conn, callback)["status"] == "READY"
    cb = claim(store)
    assert cb.result_id == callback
    store.complete_success(cb, "0", None)
    assert conn.execute("SELECT status FROM workflow_runs").fetchone() == ("SUCCESSFUL",)


def test_a_group_commit_mixing_plain_chain_chord_and_fenced_tasks(conn, store):
    """One group commit of successes: each task's outcome comes back in input order, a lost
    lease changes nothing, and a chain child and a chord callback are released."""
    callback, members = _chord_of_two(conn)
    plain = [enqueue(conn, "add", i, 10) for i in (3, 4, 5)]
    parent = enqueue(conn, "add", 6, 10)
    child = enqueue(
        conn, "add", 7, 10, columns={"status": "WAITING", "parent_id": parent, "wait_count": 1}
    )
    conn.execute(
        "UPDATE task_runs SET logs_uri = 'file:///kept.log' WHERE result_id = %s", (plain[1],)
    )
    by_id = {task.result_id: task for task in store.claim_batch("default", 10, aging_factor=0)[0]}
    assert set(by_id) == {*members, *plain, parent}
    stolen = plain[2]
    conn.execute("UPDATE task_runs SET leased_by = 'w2' WHERE result_id = %s", (stolen,))
    order = [plain[0], members[0], stolen, parent, plain[1], members[1]]
    logs = {plain[0]: "file:///a.log", members[0]: "file:///m.log"}
    written = store.complete_successes(
        [(by_id[rid], f'{{"n": {rid}}}', logs.get(rid)) for rid in order]
    )
    assert written == [rid != stolen for rid in order]
    for rid in (plain[0], plain[1], parent, *members):
        r = row(conn, rid)
        assert (r["status"], r["return_json"], r["leased_by"]) == ("SUCCESSFUL", {"n": rid}, None)
    assert row(conn, plain[0])["logs_uri"] == "file:///a.log"
    assert row(conn, plain[1])["logs_uri"] == "file:///kept.log"
    assert row(conn, members[0])["logs_uri"] == "file:///m.log"
    assert row(conn, stolen)["status"] == "RUNNING"
    assert (row(conn, child)["status"], row(conn, child)["wait_count"]) == ("READY", 0)
    wf_row = conn.execute("SELECT success_count, status FROM workflow_runs").fetchone()
    assert wf_row == (2, "WAITING_CALLBACK")
    assert row(conn, callback)["status"] == "READY"


def test_a_group_commit_of_plain_tasks_keeps_each_tasks_own_values(conn, store):
    """Tasks of no workflow are written by one statement over parallel arrays: each row gets
    its own return value and logs_uri, each chain parent releases only its own child, and a
    lost lease leaves only that row RUNNING."""
    parents = [enqueue(conn, "add", i, 0) for i in range(30)]
    children = {
        p: enqueue(
            conn, "add", p, 1, columns={"status": "WAITING", "parent_id": p, "wait_count": 1}
        )
        for p in parents[:10]
    }
    # Waits for two parents: one success leaves it WAITING.
    twice = enqueue(
        conn, "add", 99, 1, columns={"status": "WAITING", "parent_id": parents[29], "wait_count": 2}
    )
    by_id = {task.result_id: task for task in store.claim_batch("default", 30, aging_factor=0)[0]}
    assert set(by_id) == set(parents)
    stolen = parents[5]
    conn.execute("UPDATE task_runs SET leased_by = 'w2' WHERE result_id = %s", (stolen,))
    order = random.Random(7).sample(parents, len(parents))
    values = {rid: None if rid == parents[7] else f'{{"rid": {rid}}}' for rid in parents}
    logs = {rid: f"file:///{rid}.log" for rid in parents if rid % 2 == 0}
    written = store.complete_successes([(by_id[rid], values[rid], logs.get(rid)) for rid in order])
    assert written == [rid != stolen for rid in order]
    for rid in parents:
        r = row(conn, rid)
        if rid == stolen:
            assert (r["status"], r["return_json"], r["logs_uri"]) == ("RUNNING", None, None)
            continue
        expected = None if rid == parents[7] else {"rid": rid}
        assert (r["status"], r["return_json"], r["leased_by"]) == ("SUCCESSFUL", expected, None)
        assert r["logs_uri"] == logs.get(rid)
    for parent, child in children.items():
        expected = ("WAITING", 1) if parent == stolen else ("READY", 0)
        assert (row(conn, child)["status"], row(conn, child)["wait_count"]) == expected
    assert (row(conn, twice)["status"], row(conn, twice)["wait_count"]) == ("WAITING", 1)


def test_a_group_commit_is_all_or_nothing(conn, pool, store):
    """The batch's statements share one transaction: one that fails takes the others back,
    and the connection goes back to the pool clean."""
    first, second = enqueue(conn, "add", 1, 1), enqueue(conn, "add", 2, 2)
    tasks = store.claim_batch("default", 2, aging_factor=0)[0]
    assert {t.result_id for t in tasks} == {first, second}
    with pytest.raises(DatabaseError, match="complete_successes"):
        store.complete_successes([(tasks[0], "1", None), (tasks[1], "not json", None)])
    assert row(conn, first)["status"] == row(conn, second)["status"] == "RUNNING"
    assert store.complete_successes([(t, "1", None) for t in tasks]) == [True, True]
    assert row(conn, first)["status"] == row(conn, second)["status"] == "SUCCESSFUL"


def _times_out_behind_a_row_lock(blocker, rid: int, write) -> None:
    """``write`` of task ``rid``'s success gives up at the statement timeout while another
    session holds the row."""
    with blocker.transaction():
        # Were the write not bounded, this ends the wait (and the test fails) in 5 s.
        blocker.execute("SET LOCAL idle_in_transaction_session_timeout = '5s'")
        blocker.execute("SELECT 1 FROM task_runs WHERE result_id = %s FOR UPDATE", (rid,))
        with pytest.raises(DatabaseError, match="statement timeout"):
            write()


def test_a_group_commit_is_bounded_by_its_own_statement_timeout(
    conn, db_dsn, conn_for, monkeypatch
):
    """A commit held up by a row lock gives up after the completion timeout (the caller
    retries), and the timeout does not outlive the batch on the pooled connection."""
    monkeypatch.setattr(tasks_module, "COMPLETION_TIMEOUT", 0.3)
    single = create_pool(db_dsn, min_size=1, max_size=1)  # the batch's connection, below
    try:
        store = TaskStore(single, "w1", lease_seconds=300)
        rid = enqueue(conn, "add", 1, 1)
        task = claim(store)
        _times_out_behind_a_row_lock(
            conn_for(db_dsn), rid, lambda: store.complete_successes([(task, "1", None)])
        )
        assert row(conn, rid)["status"] == "RUNNING"
        with single.connection() as pooled:
            setting = pooled.execute("SHOW statement_timeout").fetchone()
        assert setting["statement_timeout"] == "0"
        assert store.complete_successes([(task, "1", None)]) == [True]
    finally:
        single.close()


def test_the_success_writers_connection_is_bounded_and_reconnects(
    conn, db_dsn, store, conn_for, monkeypatch
):
    """The writer's own connection carries the completion timeout for its whole session: a
    success held up by a row lock gives up (the caller retries); after any error the
    connection is dropped and the next batch connects again."""
    monkeypatch.setattr(tasks_module, "COMPLETION_TIMEOUT", 0.3)
    writer = SuccessConnection(store)
    try:
        rid = enqueue(conn, "add", 1, 1)
        task = claim(store)
        _times_out_behind_a_row_lock(
            conn_for(db_dsn), rid, lambda: writer.complete_successes([(task, "1", None)])
        )
        assert row(conn, rid)["status"] == "RUNNING"
        assert writer.complete_successes([(task, "1", None)]) == [True]
        first, second, third = (enqueue(conn, "add", n, n, unique=str(n)) for n in (2, 3, 4))
        tasks = store.claim_batch("default", 3, aging_factor=0)[0]
        by_id = {t.result_id: t for t in tasks}
        backend = writer._conn.info.backend_pid  # the session a restart or a proxy would cut
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(DatabaseError, match="complete_successes"):
            writer.complete_successes([(by_id[third], "1", None)])
        # All or nothing in a batch, on the new connection.
        with pytest.raises(DatabaseError, match="complete_successes"):
            writer.complete_successes([(by_id[first], "1", None), (by_id[second], "x", None)])
        assert writer._conn is None  # dropped after the error; the next batch connects
        assert row(conn, first)["status"] == row(conn, second)["status"] == "RUNNING"
        written = writer.complete_successes([(t, "1", None) for t in tasks])
        assert written == [True, True, True]
        assert {row(conn, rid)["status"] for rid in (first, second, third)} == {"SUCCESSFUL"}
    finally:
        writer.close()


def test_worker_connections_plan_once_and_never_compile(db_dsn, store):
    """Every connection of a worker's pool, and the success writer's, plans its statements
    once and has JIT off before its first statement: with statistics that count thousands of
    READY rows a claim's estimate passes jit_above_cost, and on a server with LLVM each claim
    compiled itself first (measured on PostgreSQL 15: ~90 ms a claim, 1.8 tasks/s)."""
    worker_pool = create_pool(db_dsn, min_size=2, max_size=2, worker=True)
    writer = SuccessConnection(store)
    try:
        held = [worker_pool.getconn() for _ in range(2)]
        writer.complete_successes([])  # connects
        for conn in [*held, writer._conn]:
            settings = conn.execute(
                "SELECT current_setting('jit') AS jit, "
                "current_setting('plan_cache_mode') AS plan_cache_mode, "
                "current_setting('enable_sort') AS enable_sort"
            ).fetchone()
            assert settings == {
                "jit": "off",
                "plan_cache_mode": "force_generic_plan",
                "enable_sort": "off",
            }
        for conn in held:
            worker_pool.putconn(conn)
    finally:
        writer.close()
        worker_pool.close()
    # Other commands' connections keep the server's defaults.
    other = create_pool(db_dsn, min_size=1, max_size=1)
    try:
        with other.connection() as conn:
            unchanged = conn.execute(
                "SELECT bool_and(setting = reset_val) AS same FROM pg_settings "
                "WHERE name IN ('jit', 'plan_cache_mode', 'enable_sort')"
            ).fetchone()
            assert unchanged == {"same": True}
    finally:
        other.close()


@pytest.mark.parametrize("listen", [True, False], ids=["listen", "no-listen"])
def test_successes_take_their_own_connection_unless_no_listen(conn, store, listen):
    """--no-listen is for PgBouncer's transaction pooling, where a session's statement
    timeout would not stay with the writer's statements: successes then go through the pool."""
    import dataclasses

    settings = dataclasses.replace(_settings(["default"]), listen=listen)
    worker = Worker(settings, store, Logger())
    try:
        rid = enqueue(conn, "add", 1, 1)
        write_success(worker._successes, claim(store), "2")
        assert row(conn, rid)["status"] == "SUCCESSFUL"
        assert isinstance(worker._successes.connection, SuccessConnection) == listen
    finally:
        worker._successes.close()


def test_reclaim(conn, pool, store):
    retry = enqueue(conn, "add", 1, 1, columns={"max_attempts": 3})
    final = enqueue(conn, "add", 2, 2, columns={"max_attempts": 1})
    claim(store)
    claim(store)
    conn.execute("UPDATE task_runs SET leased_until = now() - interval '1 second'")
    reclaimed = TaskStore(pool, "w9", lease_seconds=300).reclaim_expired(3)
    assert sorted((r.result_id, r.failed) for r in reclaimed) == [(retry, False), (final, True)]
    r1, r2 = row(conn, retry), row(conn, final)
    assert (r1["status"], r1["leased_by"], r1["attempts"]) == ("READY", None, 1)
    assert r1["errors_json"][0]["kind"] == "lease_expiry"
    assert r2["status"] == "FAILED"
    assert r2["last_error"] == "lease_expiry: Worker heartbeat lost or process crashed"
    # The time as the worker writes its own error objects: UTC with Z, not "+00:00".
    at = r1["errors_json"][0]["at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", at), at
    assert abs(dt.datetime.fromisoformat(at) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def _batch(store, n, queue="default", aging=0.0):
    tasks, _blocked = store.claim_batch(queue, n, aging_factor=aging)
    return sorted(t.result_id for t in tasks)


def test_batch_claims_plain_tasks_in_claim_order(conn, store):
    ids = [enqueue(conn, "add", n, 0, unique=str(n), columns={"priority": n % 3}) for n in range(9)]
    by_priority = sorted(ids, key=lambda rid: (-(ids.index(rid) % 3), rid))
    assert _batch(store, 4) == sorted(by_priority[:4])
    statuses = {rid: row(conn, rid)["status"] for rid in ids}
    assert sorted(r for r, st in statuses.items() if st == "RUNNING") == sorted(by_priority[:4])
    task, blocked = store.claim_batch("default", 100, aging_factor=0)
    assert (len(task), blocked) == (5, False)
    assert task[0].attempts == 1 and task[0].leased_until is not None
    # An empty queue: nothing for claim_task either, so the worker's poll is one statement.
    assert store.claim_batch("default", 100, aging_factor=0) == ([], False)


def test_batch_stops_at_the_first_task_that_needs_checks(conn, store):
    first = enqueue(conn, "add", 1, 0, columns={"priority": 9})
    keyed = enqueue(conn, "add", 2, 0, columns={"priority": 8, "lock_key": "k"})
    later = enqueue(conn, "add", 3, 0, columns={"priority": 7})
    assert _batch(store, 10) == [first]  # not `later`: it must not jump the keyed task
    assert store.claim_batch("default", 10, aging_factor=0) == ([], True)  # for claim_task
    assert claim(store).result_id == keyed
    assert _batch(store, 10) == [later]


def test_batch_leaves_limited_tasks_to_claim(conn, store):
    capped = enqueue(conn, "add", 1, 0, columns={"concurrency_key": "c", "concurrency_limit": 1})
    assert store.claim_batch("default", 5, aging_factor=0) == ([], True)
    assert claim(store).result_id == capped
    conn.execute(
        "INSERT INTO rate_limits (key, tokens_per_second, burst_size, current_tokens) VALUES ('queue:default', 1, 1, 1)"
    )
    limited = enqueue(conn, "add", 2, 0)
    # an active queue limit: tokens are taken one by one
    assert store.claim_batch("default", 5, aging_factor=0) == ([], True)
    assert claim(store).result_id == limited
    # a task: row shadows the queue: row; an inactive one means unlimited
    conn.execute(
        "INSERT INTO rate_limits (key, tokens_per_second, burst_size, current_tokens) VALUES ('task:tests.support.tasks.touch', 0, 0, 0)"
    )
    free = enqueue(conn, "touch", "x")
    assert _batch(store, 5) == [free]


def test_batch_respects_pause_run_after_and_running_lock_keys(conn, store):
    holder = enqueue(conn, "add", 0, 0, columns={"lock_key": "L"})
    assert claim(store).result_id == holder
    blocked = enqueue(conn, "add", 1, 0, columns={"lock_key": "L", "priority": 5})
    enqueue(conn, "add", 2, 0, columns={"run_after": "2999-01-01T00:00:00Z"})
    plain = enqueue(conn, "add", 3, 0)
    assert _batch(store, 5) == [plain]  # the blocked row is not claimable, so not a head
    assert store.claim_batch("default", 5, aging_factor=0) == ([], False)
    conn.execute("INSERT INTO reproq_queue_controls (queue_name, paused) VALUES ('default', true)")
    enqueue(conn, "add", 4, 0)
    assert store.claim_batch("default", 5, aging_factor=0) == ([], False)
    assert row(conn, blocked)["status"] == "READY"


def test_batch_passes_over_rows_another_transaction_holds(conn, store, db_dsn):
    # It took the first n rows and then skipped the locked ones: with the head locked, a worker
    # with one free slot claimed nothing, and a --burst run stopped with work left.
    ids = [enqueue(conn, "add", n, 0, unique=str(n)) for n in range(5)]
    holder = psycopg.connect(db_dsn)
    try:
        holder.execute("SELECT 1 FROM task_runs WHERE result_id = ANY(%s) FOR UPDATE", (ids[:2],))
        assert _batch(store, 1) == [ids[2]]
        assert _batch(store, 5) == ids[3:]
        # Waits for the server: a close alone can return before the locks are gone.
        holder.rollback()
    finally:
        holder.close()
    assert _batch(store, 5) == ids[:2]


def test_a_row_python_cannot_read_does_not_strand_its_batch(conn, store):
    # The batch commits before its rows are read: a timestamp outside Python's datetime made
    # the read fail, and every task claimed with it stayed RUNNING, never run.
    ids = [enqueue(conn, "add", n, 0, unique=str(n)) for n in range(3)]
    conn.execute("UPDATE task_runs SET enqueued_at = '-infinity' WHERE result_id = %s", (ids[1],))
    assert _batch(store, 3) == ids
    far = TaskStore(store.pool, "w2", lease_seconds=999_999_999_999)  # past the year 9999
    late = enqueue(conn, "add", 9, 9)
    (task,) = far.claim_batch("default", 1, aging_factor=0)[0]
    assert task.result_id == late
    # The row keeps its lease (Go's effectively endless one); only what is read back is capped.
    assert conn.execute(
        "SELECT status, leased_until > '9999-12-31Z' FROM task_runs WHERE result_id = %s", (late,)
    ).fetchone() == ("RUNNING", True)


def test_a_tiny_aging_factor_still_claims(conn, store):
    # age / factor overflowed float8 ("value out of range: overflow") and every poll failed.
    rid = enqueue(conn, "add", 1, 1)
    conn.execute("UPDATE task_runs SET enqueued_at = now() - interval '1000 s'")
    assert _batch(store, 1, aging=1e-306) == [rid]
    other = enqueue(conn, "add", 2, 2, columns={"lock_key": "k"})
    conn.execute("UPDATE task_runs SET enqueued_at = now() - interval '1000 s'")
    assert claim(store, aging=1e-306).result_id == other


def test_concurrent_batches_never_share_a_task(conn, pool):
    ids = {enqueue(conn, "add", n, 0, unique=str(n)) for n in range(300)}
    got: list[list[int]] = [[] for _ in range(4)]

    def claimer(index: int) -> None:
        s = TaskStore(pool, f"w{index}", lease_seconds=300)
        while batch := s.claim_batch("default", 7, aging_factor=0)[0]:
            got[index].extend(t.result_id for t in batch)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [rid for part in got for rid in part]
    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == ids


def _write_rest_as_one_batch(writer, db_dsn, write, first, rest) -> None:
    """``write`` each task in a thread of its own: ``first`` while another session holds its
    row, so the writer's first batch waits and ``rest`` queue up behind it, to be written as
    one batch once the row is let go. Returns when every write is done and the writer closed."""
    blocker = psycopg.connect(db_dsn)
    blocker.execute("SELECT 1 FROM task_runs WHERE result_id = %s FOR UPDATE", (first.result_id,))
    threads = [threading.Thread(target=write, args=(first,))]
    threads[0].start()
    wait_for(lambda: writer.batches == 1, what="the first batch to start")
    threads += [threading.Thread(target=write, args=(t,)) for t in rest]
    for t in threads[1:]:
        t.start()
    wait_for(lambda: writer._queue.qsize() == len(rest), what="the rest queued behind it")
    blocker.rollback()
    blocker.close()
    for t in threads:
        t.join(timeout=30)
    writer.close()


def test_success_writer_batches_what_arrives_while_it_writes(conn, pool, store, db_dsn):
    from reproq_cli.core.completions import SuccessWriter

    ids = [enqueue(conn, "add", n, 0, unique=str(n)) for n in range(21)]
    tasks, _ = store.claim_batch("default", 21, aging_factor=0)
    assert len(tasks) == 21
    first, rest = tasks[0], tasks[1:]
    lost = rest[-1]
    conn.execute(
        "UPDATE task_runs SET leased_by = 'someone-else' WHERE result_id = %s", (lost.result_id,)
    )
    writer = SuccessWriter(store)
    outcomes: dict[int, str] = {}

    def write(task) -> None:
        try:
            write_success(writer, task, "1")
            outcomes[task.result_id] = "ok"
        except FencingError:
            outcomes[task.result_id] = "fenced"

    _write_rest_as_one_batch(writer, db_dsn, write, first, rest)
    assert writer.batches == 2
    assert outcomes[lost.result_id] == "fenced"
    assert [outcomes[t.result_id] for t in tasks[:-1]] == ["ok"] * 20
    statuses = [row(conn, rid)["status"] for rid in ids]
    assert statuses.count("SUCCESSFUL") == 20
    assert row(conn, lost.result_id)["status"] == "RUNNING"


def test_a_return_value_the_database_refuses_fails_only_its_own_success(conn, store, db_dsn):
    from reproq_cli.core.completions import SuccessWriter
    from reproq_cli.errors import DatabaseError

    ids = [enqueue(conn, "add", n, 0, unique=str(n)) for n in range(6)]
    tasks, _ = store.claim_batch("default", 6, aging_factor=0)
    first, rest = tasks[0], tasks[1:]
    bad = rest[2]
    writer = SuccessWriter(store)
    outcomes: dict[int, object] = {}

    def write(task) -> None:
        # jsonb refuses the \u0000 escape: the error the whole batch used to share.
        value = '"a\\u0000b"' if task is bad else "1"
        try:
            write_success(writer, task, value)
            outcomes[task.result_id] = "ok"
        except DatabaseError as exc:
            outcomes[task.result_id] = exc

    _write_rest_as_one_batch(writer, db_dsn, write, first, rest)
    refused = outcomes.pop(bad.result_id)
    assert isinstance(refused, DatabaseError) and refused.refused_data
    assert "unsupported Unicode escape sequence" in str(refused)
    assert set(outcomes.values()) == {"ok"}
    statuses = {rid: row(conn, rid)["status"] for rid in ids}
    assert statuses.pop(bad.result_id) == "RUNNING"
    assert set(statuses.values()) == {"SUCCESSFUL"}


@pytest.mark.parametrize(
    ("name", "by_id"),
    [
        ("claim_task", 2),  # the candidate among the heads, the row updated
        ("claim_batch", 3),  # the heads ranked, the heads locked, the rows updated
        ("heartbeat", 1),
        ("complete_success", 2),  # the row, the chord callback it may release
        ("complete_success_batch", 1),
        ("complete_failure", 1),
        ("request_cancel", 1),
    ],
)
def test_rows_found_by_id_never_scan_a_whole_partial_index(conn, name, by_id):
    """Statistics taken while no row was READY or RUNNING estimate none; the generic plans
    (which the worker's connections keep for their whole life) must still find a row by its
    result_id through the primary key, not by reading every entry of a partial index: a
    million READY rows under a backlog, or the dead entries fast turnover leaves."""
    _analyze_finished_history(conn)
    plan = _worker_generic_plan(conn, name)
    text_plan = "\n".join(plan)
    probes = re.findall(r"Index Scan using task_runs_pkey on task_runs", text_plan)
    assert len(probes) == by_id, text_plan
    # No index holding the READY backlog is read whole: a claim's priorities and heads come
    # from the ordered idx_task_runs_claim, not from every active row of
    # idx_task_runs_spec_unique, sorted.
    backlog = re.compile(r"Scan using idx_task_runs_(claim|claim_due|spec_unique) on task_runs")
    for at, line in enumerate(plan):
        depth = len(line) - len(line.lstrip())
        if backlog.search(line):
            details = []
            for below in plan[at + 1 :]:
                if "->" in below or len(below) - len(below.lstrip()) <= depth:
                    break
                details.append(below.strip())
            assert any(d.startswith("Index Cond:") for d in details), text_plan
    if "children AS" in query(name):
        # Chain children are found through the WAITING-only index on parent_id, probed.
        assert "Index Cond: (parent_id = ANY" in text_plan, text_plan


def _analyze_finished_history(conn) -> None:
    """Statistics that count only finished rows: a history of 20,001 SUCCESSFUL rows, as a
    worker that has run a while leaves, analyzed while nothing was READY or RUNNING."""
    rid = enqueue(conn, "add", 1, 0)
    conn.execute("UPDATE task_runs SET status = 'SUCCESSFUL' WHERE result_id = %s", (rid,))
    columns = conn.execute(
        "SELECT string_agg(quote_ident(column_name), ', ') FROM information_schema.columns "
        "WHERE table_name = 'task_runs' AND column_name <> 'result_id'"
    ).fetchone()[0]
    conn.execute(
        f"INSERT INTO task_runs ({columns}) SELECT {columns} FROM task_runs, "
        "generate_series(1, 20000)"
    )
    conn.execute("ANALYZE task_runs")


_PLAN_VALUES = {
    "queue": "default",
    "heads": 66,
    "aging": 0.0,
    "n": 2,
    "lease_seconds": 300,
    "result_id": 1,
    "result_ids": "{1,2}",
    "return_json": "null",
    "return_jsons": "{null,null}",
    "logs_uri": None,
    "logs_uris": "{NULL,NULL}",
    "worker_id": "w1",
    "retry": False,
    "delay": 0,
    "summary": "failed",
    "error": "{}",
    "refund": 0,
    "lock_key": "k",
    "concurrency_key": "c",
    "max_attempts_default": 3,
}


def _worker_generic_plan(conn, name: str) -> list[str]:
    """The EXPLAIN lines of the generic plan a worker's connection makes for query ``name``."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    text = re.sub(r"%\((\w+)\)s", placeholder, query(name))
    conn.execute(query("worker_session"))  # the worker's generic plans, sorting disabled
    with conn.transaction():
        # The simple protocol: through the extended one, the server would take the body's
        # $n for parameters of the PREPARE itself.
        conn.pgconn.exec_(f"PREPARE plan_of AS {text}".encode())
        arguments = sql.SQL(", ").join(sql.Literal(_PLAN_VALUES[n]) for n in names)
        explain = sql.SQL("EXPLAIN EXECUTE plan_of{}").format(
            sql.SQL("({})").format(arguments) if names else sql.SQL("")
        )
        plan = [r[0] for r in conn.execute(explain)]
        conn.execute("DEALLOCATE plan_of")
    return plan


@pytest.mark.parametrize("name", ["claim_task", "claim_batch", "claim_key_recheck"])
def test_running_rows_of_a_key_are_found_through_the_key_indexes(conn, name):
    """A head with a lock_key or a concurrency limit is checked against the RUNNING rows with
    its key. Under statistics that count no active row, those lookups read every active row
    of idx_task_runs_spec_unique instead (once per head for a concurrency key): with 50,000
    READY rows, 0.2 s a claim for lock keys and 6 s for concurrency keys. They must use the
    key's own index, whatever the statistics say."""
    _analyze_finished_history(conn)
    text_plan = "\n".join(_worker_generic_plan(conn, name))
    assert "idx_task_runs_spec_unique" not in text_plan, text_plan
    assert "using idx_task_runs_lock_key" in text_plan, text_plan
    assert "using idx_task_runs_concurrency_active" in text_plan, text_plan


def test_expired_leases_are_found_among_the_running_rows_only(conn):
    """The reclaim looks for RUNNING rows whose lease ran out; under statistics that count no
    active row it read every active row (the READY backlog too) on every reclaim tick."""
    _analyze_finished_history(conn)
    text_plan = "\n".join(_worker_generic_plan(conn, "reclaim_expired"))
    assert "idx_task_runs_spec_unique" not in text_plan, text_plan
    assert "Index Scan using idx_task_runs_lock_key" in text_plan, text_plan


def _keyed_rows(conn, key: str | None, limit: int, count: int, *, running: bool) -> None:
    """``count`` distinct tasks with this concurrency key and limit, READY or RUNNING."""
    for _ in range(count):
        rid = enqueue(
            conn,
            "add",
            1,
            2,
            unique=uuid.uuid4().hex,
            columns={"concurrency_key": key, "concurrency_limit": limit},
        )
        if running:
            conn.execute(
                "UPDATE task_runs SET status = 'RUNNING',"
                " leased_until = now() + interval '1 hour' WHERE result_id = %s",
                (rid,),
            )


def test_concurrency_blocked_metric_counts_the_ready_rows_whose_key_is_full(conn):
    """The gauge reproq_concurrency_blocked_tasks: READY rows whose key already has as many
    RUNNING rows as the row's own limit."""
    for key, limit, running, ready in [
        ("full", 2, 2, 3),  # blocked: 3
        ("room", 2, 1, 4),  # one slot left
        ("unlimited", 0, 5, 2),  # a limit of 0 is no limit
        ("", 1, 1, 2),  # an empty key is a key here too: blocked: 2
        (None, 1, 0, 2),  # no key
    ]:
        _keyed_rows(conn, key, limit, running, running=True)
        _keyed_rows(conn, key, limit, ready, running=False)
    # The same key with a higher limit on the row: room for it.
    enqueue(conn, "add", 1, 2, columns={"concurrency_key": "full", "concurrency_limit": 3})
    blocked = conn.execute(query("metrics_concurrency_blocked")).fetchone()
    assert blocked[0] == 5


def test_concurrency_blocked_metric_reads_running_rows_per_key_not_per_ready_row(conn):
    """Under statistics that count no active row, the metric's plan aggregated the RUNNING
    rows again for each READY row (a nested loop): 13 s a scrape with 50,000 READY rows.
    Each key's RUNNING rows must be read through the key's own index, once per key."""
    _analyze_finished_history(conn)
    text_plan = "\n".join(_worker_generic_plan(conn, "metrics_concurrency_blocked"))
    assert "Nested Loop" not in text_plan, text_plan
    assert "Index Only Scan using idx_task_runs_concurrency_active" in text_plan, text_plan
    assert "Index Cond: (concurrency_key = g.concurrency_key)" in text_plan, text_plan
