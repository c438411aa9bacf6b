"""Several real workers at once, crashes, signals and workflows."""

from __future__ import annotations

import signal
import uuid

import pytest

from tests.support.harness import enqueue, holds_for, row, wait_for, waiting_on_task_runs

pytestmark = pytest.mark.executors("spawn", "pool")


def _all_done(conn, count: int) -> bool:
    done = conn.execute("SELECT count(*) FROM task_runs WHERE status = 'SUCCESSFUL'").fetchone()[0]
    return done == count


def _stop(workers, procs) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert workers.finish(proc).returncode == 0


def _executions(path) -> list[tuple[int, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        rid, start, end = line.split()
        rows.append((int(rid), float(start), float(end)))
    return rows


def _max_overlap(executions) -> int:
    """The most executions that were running at the same instant."""
    return max(sum(1 for _, s, e in executions if s <= start < e) for _, start, _ in executions)


def _count(executor_kind: str, pool: int) -> int:
    """How many tasks a race test enqueues. The claim races are the worker's, whatever runs
    the task; a spawned task costs a Python and Django start-up (~0.1 s of CPU), so spawn
    mode races with a third as many, which still keeps all four workers claiming at once."""
    return pool if executor_kind == "pool" else pool // 3


def _four_workers(conn, workers, log, *, seconds: float, columns: dict, count: int):
    """Enqueue ``count`` recording tasks, run four workers until all are done, return the
    recorded executions."""
    for i in range(count):
        enqueue(conn, "record", str(log), seconds, unique=str(i), columns=columns)
    procs = [
        workers.start("--concurrency", "4", "--worker-id", f"w-{i}", "--heartbeat-seconds", "0")
        for i in range(4)
    ]
    wait_for(lambda: _all_done(conn, count), timeout=300, interval=0.5, what=f"{count} tasks")
    _stop(workers, procs)
    executions = _executions(log)
    assert sorted(rid for rid, _, _ in executions) == sorted(
        r[0] for r in conn.execute("SELECT result_id FROM task_runs").fetchall()
    )
    assert conn.execute("SELECT max(attempts) FROM task_runs").fetchone() == (1,)
    return executions


@pytest.mark.slow
def test_four_workers_never_overlap_one_lock_key(conn, workers, tmp_path, executor_kind):
    executions = _four_workers(
        conn, workers, tmp_path / "executions.log", seconds=0.005,
        columns={"lock_key": "account:7"}, count=_count(executor_kind, 400),
    )  # fmt: skip
    assert _max_overlap(executions) == 1
    used = conn.execute(
        "SELECT count(DISTINCT w) FROM task_runs, jsonb_array_elements_text(worker_ids) w"
    ).fetchone()[0]
    assert used >= 2  # the work really was shared between workers


@pytest.mark.slow
def test_batched_claims_interleaved_with_keyed_tasks(conn, workers, tmp_path, executor_kind):
    """Plain tasks are claimed in batches, keyed ones one by one: mixed in one queue, every
    task runs exactly once and the keyed ones never overlap."""
    log = tmp_path / "executions.log"
    keyed = set()
    count = _count(executor_kind, 300)
    for i in range(count):
        columns = {"lock_key": "account:9"} if i % 3 == 0 else {}
        rid = enqueue(conn, "record", str(log), 0.005, unique=str(i), columns=columns)
        if columns:
            keyed.add(rid)
    procs = [
        workers.start("--concurrency", "6", "--worker-id", f"w-{i}", "--heartbeat-seconds", "0")
        for i in range(4)
    ]
    wait_for(lambda: _all_done(conn, count), timeout=300, interval=0.5, what=f"{count} tasks")
    _stop(workers, procs)
    executions = _executions(log)
    assert sorted(rid for rid, _, _ in executions) == sorted(
        r[0] for r in conn.execute("SELECT result_id FROM task_runs").fetchall()
    )
    assert _max_overlap([e for e in executions if e[0] in keyed]) == 1
    assert _max_overlap(executions) > 1  # the plain ones did run side by side


@pytest.mark.slow
def test_four_workers_respect_a_concurrency_limit_of_two(conn, workers, tmp_path, executor_kind):
    executions = _four_workers(
        conn, workers, tmp_path / "executions.log", seconds=0.05,
        columns={"concurrency_key": "tenant:3", "concurrency_limit": 2},
        count=_count(executor_kind, 400),
    )  # fmt: skip
    assert _max_overlap(executions) == 2


def test_killed_worker_is_reclaimed_by_another(conn, workers):
    rid = enqueue(conn, "sleep", 3, columns={"max_attempts": 3})
    doomed = workers.start(
        "--worker-id", "doomed", "--lease-seconds", "2", "--heartbeat-seconds", "1"
    )
    wait_for(lambda: row(conn, rid)["status"] == "RUNNING", what="task running")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    rescuer = workers.start(
        "--worker-id", "rescuer", "--reclaim-interval-seconds", "1", "--lease-seconds", "30"
    )
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", timeout=60, what="rescue")
    _stop(workers, [rescuer])
    task = row(conn, rid)
    assert task["attempts"] == 2
    assert task["worker_ids"] == ["doomed", "rescuer"]
    (error,) = task["errors_json"]
    assert error["kind"] == "lease_expiry"
    assert error["worker_id"] == "doomed"


def test_a_slot_is_free_again_while_its_success_commits(conn, workers, conn_for, db_dsn):
    """Concurrency counts executing tasks: a finished task whose success is still being
    written (here: held up by a row lock) does not keep the next task waiting."""
    first = enqueue(conn, "sleep", 1, columns={"priority": 5})
    second = enqueue(conn, "add", 2, 3)
    proc = workers.start("--concurrency", "1", "--heartbeat-seconds", "0")
    wait_for(lambda: row(conn, first)["status"] == "RUNNING", what="the first task running")
    blocker = conn_for(db_dsn)
    with blocker.transaction():
        blocker.execute("SELECT 1 FROM task_runs WHERE result_id = %s FOR UPDATE", (first,))
        wait_for(lambda: row(conn, second)["status"] == "SUCCESSFUL", what="the second task")
        assert row(conn, first)["status"] == "RUNNING"  # its success waits for the lock
    wait_for(lambda: row(conn, first)["status"] == "SUCCESSFUL", what="the first success")
    _stop(workers, [proc])


def test_no_claim_waits_for_a_runner_while_successes_are_held_up(
    conn, workers, conn_for, db_dsn, tmp_path
):
    """At most `concurrency` slots go back before their success commits: with more commits
    held up, a new claim would sit without a runner thread or heartbeats, its lease running
    out. So the third task stays READY until a commit lands."""
    first_done, second_done = tmp_path / "first", tmp_path / "second"
    first = enqueue(conn, "record", str(first_done), 1.0, columns={"priority": 9})
    second = enqueue(conn, "record", str(second_done), 1.0, columns={"priority": 8})
    third = enqueue(conn, "add", 2, 3)
    proc = workers.start("--concurrency", "1", "--heartbeat-seconds", "0")
    blocker = conn_for(db_dsn)
    lock = "SELECT 1 FROM task_runs WHERE result_id = %s FOR UPDATE"
    with blocker.transaction():
        wait_for(lambda: row(conn, first)["status"] == "RUNNING", what="the first task running")
        blocker.execute(lock, (first,))
        wait_for(lambda: row(conn, second)["status"] == "RUNNING", what="the second task running")
        blocker.execute(lock, (second,))
        wait_for(second_done.exists, what="the second task's executor done")
        # Without the cap the worker claims the third task at once (its slot went back when
        # the second answered); watch for that well past one claim.
        holds_for(lambda: row(conn, third)["status"] == "READY", 1.5, what="third task READY")
    wait_for(lambda: _all_done(conn, 3), what="all three tasks")
    _stop(workers, [proc])


def test_sigterm_lets_running_tasks_finish(conn, workers):
    ids = [enqueue(conn, "sleep", 2, unique=str(i)) for i in range(3)]
    proc = workers.start("--concurrency", "3", "--worker-id", "drainer")
    workers.wait_executing(proc, count=3)
    later = enqueue(conn, "add", 1, 1)
    proc.send_signal(signal.SIGTERM)
    run = workers.finish(proc)
    assert run.returncode == 0
    assert [row(conn, i)["status"] for i in ids] == ["SUCCESSFUL"] * 3
    assert row(conn, later)["status"] == "READY"  # nothing new is claimed while draining
    assert "Shutdown requested, waiting for tasks..." in run.messages()
    assert conn.execute(
        "SELECT count(*) FROM reproq_workers WHERE worker_id = 'drainer'"
    ).fetchone() == (0,)


def test_second_signal_stops_tasks_and_they_retry(conn, workers, tmp_path):
    pidfile = tmp_path / "gc.pid"
    rid = enqueue(conn, "sleep_with_grandchild", str(pidfile), 60, columns={"max_attempts": 1})
    proc = workers.start()
    wait_for(lambda: row(conn, rid)["status"] == "RUNNING" and pidfile.exists(), what="running")
    proc.send_signal(signal.SIGTERM)
    wait_for(
        lambda: "Shutdown requested" in workers.output(proc), what="first signal seen", timeout=10
    )
    proc.send_signal(signal.SIGINT)
    run = workers.finish(proc, timeout=30)
    assert run.returncode == 0
    task = row(conn, rid)
    assert task["status"] == "READY"
    assert task["attempts"] == 0  # a shutdown does not use up the task's attempts
    assert task["errors_json"][0]["kind"] == "worker_shutdown"


def test_a_claim_waiting_on_a_lock_is_interrupted_by_the_stop_signal(
    conn, conn_for, db_dsn, workers
):
    # The claim used to finish its wait first: a lock held for an hour held the stop up for
    # an hour (and the task it then claimed was handed back). As Go's cancelled context
    # does, the stop now cancels the claim statement.
    rid = enqueue(conn, "add", 1, 1)
    blocker = conn_for(db_dsn)
    with blocker.transaction():
        blocker.execute("LOCK TABLE task_runs IN SHARE MODE")  # the claim's UPDATE waits
        proc = workers.start("--concurrency", "1", reclaim_interval_seconds=0)
        wait_for(lambda: waiting_on_task_runs(conn), what="the claim waiting on the lock")
        proc.send_signal(signal.SIGTERM)
        run = workers.finish(proc, timeout=30)  # with the lock still held
        assert run.returncode == 0, run.stderr
        assert not waiting_on_task_runs(conn)
    assert "Polling error" not in run.messages()  # the cancel is the stop's own doing
    assert "Worker stopped" in run.messages()
    task = row(conn, rid)
    assert (task["status"], task["attempts"], task["errors_json"]) == ("READY", 0, [])


def test_shutdown_timeout_stops_tasks(conn, workers):
    rid = enqueue(conn, "sleep", 60)
    proc = workers.start(shutdown_timeout="1s")
    workers.wait_executing(proc)
    proc.send_signal(signal.SIGTERM)
    run = workers.finish(proc, timeout=30)
    assert run.returncode == 0
    assert "Shutdown timeout reached; stopping running tasks" in run.messages()
    assert row(conn, rid)["errors_json"][0]["kind"] == "worker_shutdown"


def test_sigterm_with_the_database_gone_exits_promptly(tmp_path):
    # A claim waiting for a pool connection waited the pool's 30 s, and unregistering at exit
    # another 30: about a minute to stop a worker whose database was down.
    import time

    from tests.support.harness import WorkerFactory
    from tests.support.private_pg import PrivateServer

    server = PrivateServer()
    factory = WorkerFactory(server.dsn, tmp_path)
    try:
        proc = factory.start()
        wait_for(lambda: "Starting reproq worker" in factory.output(proc), what="the worker")
        server.stop()
        wait_for(lambda: "LISTEN connection lost" in factory.output(proc), what="lost database")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        run = factory.finish(proc, timeout=40)
        assert time.monotonic() - signalled < 15, run.stdout
        assert run.returncode == 0
        assert "Worker stopped" in run.messages()
    finally:
        factory.cleanup()
        server.cleanup()


# Order is judged by the executions' own clocks (the `record` task), not by the rows' now()
# timestamps: now() is taken when a statement arrives, which on a busy server can be before
# the snapshot that first sees the parent's commit.


def _ran(log) -> dict[int, tuple[float, float]]:
    return {rid: (start, end) for rid, start, end in _executions(log)}


def test_chain_of_three_runs_in_order(conn, workers, tmp_path):
    log = tmp_path / "runs.log"
    a = enqueue(conn, "record", str(log), 0.05)
    b = enqueue(
        conn,
        "record",
        str(log),
        0.05,
        columns={"status": "WAITING", "parent_id": a, "wait_count": 1},
    )
    c = enqueue(
        conn,
        "record",
        str(log),
        0.05,
        columns={"status": "WAITING", "parent_id": b, "wait_count": 1},
    )
    run = workers.run()
    assert run.returncode == 0
    assert [row(conn, i)["status"] for i in (a, b, c)] == ["SUCCESSFUL"] * 3
    ran = _ran(log)
    assert ran[a][1] <= ran[b][0]
    assert ran[b][1] <= ran[c][0]


def test_chord_of_five_then_callback(conn, workers, tmp_path):
    log = tmp_path / "runs.log"
    wf = str(uuid.uuid4())
    callback = enqueue(
        conn, "record", str(log), 0.01, columns={"status": "WAITING", "workflow_id": wf}
    )
    members = [
        enqueue(conn, "record", str(log), 0.05 * i, unique=str(i), columns={"workflow_id": wf})
        for i in range(1, 6)
    ]
    conn.execute(
        "INSERT INTO workflow_runs (workflow_id, expected_count, callback_result_id)"
        " VALUES (%s, 5, %s)",
        (wf, callback),
    )
    workers.run("--concurrency", "5")
    assert [row(conn, i)["status"] for i in members] == ["SUCCESSFUL"] * 5
    assert row(conn, callback)["status"] == "SUCCESSFUL"
    ran = _ran(log)
    assert ran[callback][0] >= max(ran[m][1] for m in members)
    assert conn.execute(
        "SELECT success_count, failure_count, status FROM workflow_runs"
    ).fetchone() == (5, 0, "SUCCESSFUL")


def test_failing_chord_member_fails_the_callback_and_chain(conn, workers):
    wf = str(uuid.uuid4())
    callback = enqueue(conn, "add", 0, 0, columns={"status": "WAITING", "workflow_id": wf})
    good = enqueue(conn, "add", 1, 1, columns={"workflow_id": wf})
    bad = enqueue(conn, "fail", "member broke", columns={"workflow_id": wf, "max_attempts": 1})
    after_cb = enqueue(
        conn, "add", 5, 5, columns={"status": "WAITING", "parent_id": callback, "wait_count": 1}
    )
    conn.execute(
        "INSERT INTO workflow_runs (workflow_id, expected_count, callback_result_id)"
        " VALUES (%s, 2, %s)",
        (wf, callback),
    )
    workers.run("--concurrency", "2")
    assert row(conn, good)["status"] == "SUCCESSFUL"
    assert row(conn, bad)["status"] == "FAILED"
    cb = row(conn, callback)
    assert cb["status"] == "FAILED"
    assert cb["last_error"] == "workflow_failed: Workflow failed due to task failure"
    assert cb["errors_json"][0]["failed_result_id"] == bad
    chained = row(conn, after_cb)
    assert chained["status"] == "FAILED"
    assert chained["errors_json"][0]["kind"] == "parent_failed"
    assert chained["errors_json"][0]["failed_result_id"] == callback
    assert conn.execute("SELECT failure_count, status FROM workflow_runs").fetchone() == (
        1,
        "FAILED",
    )


def test_failed_parent_fails_waiting_descendants(conn, workers):
    a = enqueue(conn, "fail", columns={"max_attempts": 1})
    b = enqueue(conn, "add", 2, 2, columns={"status": "WAITING", "parent_id": a, "wait_count": 1})
    c = enqueue(conn, "add", 3, 3, columns={"status": "WAITING", "parent_id": b, "wait_count": 1})
    workers.run()
    assert [row(conn, i)["status"] for i in (a, b, c)] == ["FAILED"] * 3
    assert row(conn, c)["errors_json"][0]["failed_result_id"] == b
