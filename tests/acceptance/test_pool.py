"""`reproq worker --executor pool`: warm processes, and the rules that keep tasks isolated.

The behaviour shared with spawn mode (results, retries, timeouts, cancellation, signals,
leases, locks) is covered by test_worker_basics and test_worker_reliability, which run in
both modes; this file covers what only a pool has.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from reproq_cli.core.executor import ExecSpec
from reproq_cli.core.pool import ExecutorPool
from tests.support.harness import REPO_ROOT, TASKS, enqueue, make_spec, row, wait_for

pytestmark = pytest.mark.executors("pool")


def _pids(conn, ids: list[int]) -> list[int]:
    return [row(conn, rid)["return_json"] for rid in ids]


def test_a_process_serves_many_tasks(conn, workers):
    ids = [enqueue(conn, "pid", unique=str(n)) for n in range(6)]
    run = workers.run("--concurrency", "1")
    assert run.returncode == 0, run.stderr
    assert len(set(_pids(conn, ids))) == 1


def test_claiming_waits_until_the_processes_are_set_up(conn, workers, tmp_path):
    runs = tmp_path / "runs.log"
    rid = enqueue(conn, "record", str(runs), 0.0)
    run = workers.run("--concurrency", "2", env={"REPROQ_TEST_SERVE_DELAY": "2"})
    assert run.returncode == 0, run.stderr
    ((_, body_began, _),) = [line.split() for line in runs.read_text().splitlines()]
    claimed = row(conn, rid)["started_at"].timestamp()
    # Claimed once a process could run it, not 2 s earlier with its lease ticking.
    assert float(body_began) - claimed < 1.0
    (ready,) = [e for e in run.logs if e["msg"] == "Executor pool ready"]
    assert (ready["processes"], ready["size"]) == (2, 2)
    assert ready["seconds"] >= 2.0


def test_processes_are_recycled_after_max_tasks(conn, workers):
    ids = [enqueue(conn, "pid", unique=str(n)) for n in range(5)]
    run = workers.run("--concurrency", "1", "--pool-max-tasks", "2")
    pids = _pids(conn, ids)
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    replaced = [e for e in run.logs if e["msg"] == "Executor process replaced"]
    assert [e["reason"] for e in replaced[:2]] == ["ran 2 tasks", "ran 2 tasks"]


def test_processes_are_recycled_above_the_memory_limit(conn, workers):
    big = enqueue(conn, "hold_memory", 120)
    after = enqueue(conn, "pid", columns={"priority": -1})  # runs second
    run = workers.run("--concurrency", "1", "--pool-max-memory-mb", "100")
    assert row(conn, big)["status"] == "SUCCESSFUL"
    assert row(conn, after)["return_json"] != row(conn, big)["return_json"]
    reasons = [e["reason"] for e in run.logs if e["msg"] == "Executor process replaced"]
    assert any(r.startswith("RSS ") and r.endswith("MB over the limit") for r in reasons), reasons


def test_a_replacement_still_setting_up_waits_behind_a_ready_process():
    spec = ExecSpec(sys.executable, "tests.support.executor", "stdin", 1 << 20, 1 << 20, 1 << 20)
    env = {**os.environ, "REPROQ_TEST_SERVE_DELAY": "3"}
    # Without the fork server (which would make the replacement ready at once): each process
    # sets itself up, as with --pool-no-fork or an executor module that has no fork server.
    pool = ExecutorPool(
        spec, size=2, max_tasks=1, max_memory_mb=0, env=env, cwd=str(REPO_ROOT), fork=False
    )
    payload = json.dumps(make_spec(f"{TASKS}.pid"))

    def pid_of_next_task() -> tuple[int, float]:
        started = time.monotonic()
        result = pool.run_attempt(result_id=1, attempt=1, payload=payload, timeout=60)
        assert result.envelope is not None and result.envelope.ok, result.stderr
        return json.loads(result.envelope.return_raw or "null"), time.monotonic() - started

    pool.start()
    try:
        assert pool.wait_ready() == 2
        first, _ = pid_of_next_task()  # its process is replaced by one that takes 3 s to start
        second, waited = pid_of_next_task()
        assert second != first
        assert waited < 2.0  # the other process ran it, not the replacement once set up
        assert pool.replaced == 2
    finally:
        pool.close()


def test_an_idle_process_whose_fork_server_died_gets_no_task():
    # A forked process stops itself once it sees its fork server gone, but only when its
    # watcher thread gets to run; until then it looks alive. A task handed to it then was
    # lost with it and charged an attempt (retried 30 s later). SIGSTOP holds it in that
    # state for as long as the test needs.
    spec = ExecSpec(sys.executable, "tests.support.executor", "stdin", 1 << 20, 1 << 20, 1 << 20)
    pool = ExecutorPool(spec, size=1, max_tasks=100, max_memory_mb=0, cwd=str(REPO_ROOT))
    payload = json.dumps(make_spec(f"{TASKS}.pid"))

    def run_task():
        result = pool.run_attempt(result_id=1, attempt=1, payload=payload, timeout=10)
        assert result.envelope is not None and result.envelope.ok, result.stderr
        return json.loads(result.envelope.return_raw or "null")

    replaced = []
    pool.on_replace = lambda pid, reason: replaced.append((pid, reason))
    pool.start()
    try:
        assert pool.wait_ready() == 1 and pool.forking
        orphan = run_task()
        server = pool._server
        os.kill(orphan, signal.SIGSTOP)
        os.kill(server.proc.pid, signal.SIGKILL)
        wait_for(lambda: server.gone, what="the pool to see its fork server gone")
        assert run_task() != orphan
        assert (orphan, "its fork server is gone") in replaced
    finally:
        pool.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


def _spread(conn, ids: list[int]) -> float:
    """Seconds from the first task's start to the last one's end."""
    rows = [row(conn, rid) for rid in ids]
    return (
        max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    ).total_seconds()


def test_replacements_are_forked_from_a_process_set_up_once(conn, workers):
    ids = [enqueue(conn, "pid", unique=str(n), columns={"priority": -n}) for n in range(3)]
    run = workers.run(
        "--concurrency", "1", "--pool-max-tasks", "1", env={"REPROQ_TEST_SERVE_DELAY": "2"}
    )
    assert run.returncode == 0, run.stderr
    assert len(set(_pids(conn, ids))) == 3
    # Started afresh, each of the two replacements would have taken 2 s to set up.
    assert _spread(conn, ids) < 1.5
    (ready,) = [e for e in run.logs if e["msg"] == "Executor pool ready"]
    assert ready["forked"] is True


def test_forked_processes_leave_the_set_up_to_the_fork_server(conn, workers):
    # Frozen, what Django's set-up made is never walked by a forked process's collections,
    # which would write to (and so copy) every page it shares with the fork server.
    frozen = {}
    for flags in [(), ("--pool-no-fork",)]:
        rid = enqueue(conn, "frozen_objects", unique=str(flags))
        run = workers.run("--concurrency", "1", *flags)
        assert run.returncode == 0, run.stderr
        frozen[flags] = row(conn, rid)["return_json"]
    # A process set up on its own shares nothing, so the set-up stays collectable there.
    assert frozen[()] > 10 * max(frozen[("--pool-no-fork",)], 1_000), frozen


@pytest.mark.parametrize("thread", [False, True], ids=["one-thread", "threaded"])
def test_a_threaded_fork_server_is_warned_about(conn, workers, thread):
    rid = enqueue(conn, "pid")
    env = {"REPROQ_TEST_SERVE_THREAD": "1"} if thread else {}
    run = workers.run("--concurrency", "1", env=env)
    assert row(conn, rid)["status"] == "SUCCESSFUL"
    warned = [e for e in run.logs if e["msg"].startswith("Executor fork server runs threads")]
    assert [e["threads"] for e in warned] == ([2] if thread else [])
    assert all("--pool-no-fork" in e["msg"] for e in warned)


def test_an_executor_module_without_a_fork_server_gets_fresh_processes(conn, workers):
    ids = [enqueue(conn, "pid", unique=str(n), columns={"priority": -n}) for n in range(3)]
    env = {"REPROQ_TEST_SERVE_DELAY": "1", "REPROQ_TEST_NO_FORK_SERVER": "1"}
    run = workers.run("--concurrency", "1", "--pool-max-tasks", "1", env=env)
    assert run.returncode == 0, run.stderr
    assert all(row(conn, rid)["status"] == "SUCCESSFUL" for rid in ids)
    assert len(set(_pids(conn, ids))) == 3
    assert _spread(conn, ids) >= 2.0  # each replacement set itself up
    (ready,) = [e for e in run.logs if e["msg"] == "Executor pool ready"]
    assert ready["forked"] is False


def _fork_servers(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and b"REPROQ_EXECUTOR_FORK_SERVER=1" in environ:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("flags", [(), ("--pool-no-fork",)], ids=["fork", "no-fork"])
def test_who_starts_the_pool_processes(conn, workers, flags):
    ids = [enqueue(conn, "parent_pid", unique=str(n)) for n in range(2)]
    proc = workers.start("--concurrency", "1", "--pool-max-tasks", "1", *flags)
    wait_for(lambda: all(row(conn, rid)["status"] == "SUCCESSFUL" for rid in ids), what="tasks")
    parents = {row(conn, rid)["return_json"] for rid in ids}
    if flags:
        assert parents == {proc.pid}
        assert _fork_servers(proc.pid) == []
    else:
        assert parents == set(_fork_servers(proc.pid))
    proc.terminate()
    assert workers.finish(proc).returncode == 0


def test_a_killed_fork_server_is_started_again(conn, workers):
    first = enqueue(conn, "pid", unique="first")
    proc = workers.start("--concurrency", "1", "--pool-max-tasks", "1")
    wait_for(lambda: row(conn, first)["status"] == "SUCCESSFUL", what="the first task")
    (server,) = wait_for(lambda: _fork_servers(proc.pid), what="the fork server")
    os.kill(server, signal.SIGKILL)
    later = [enqueue(conn, "pid", unique=str(n)) for n in range(3)]
    wait_for(
        lambda: all(row(conn, rid)["status"] == "SUCCESSFUL" for rid in later),
        what="the tasks after the kill",
    )
    (successor,) = wait_for(lambda: _fork_servers(proc.pid), what="a new fork server")
    assert successor != server
    proc.terminate()
    run = workers.finish(proc)
    assert run.returncode == 0, run.stderr
    restarts = [e for e in run.logs if e.get("reason") == "fork server gone; starting another"]
    assert [e["pid"] for e in restarts] == [server]


def test_a_crash_fails_only_its_task(conn, workers):
    crash = enqueue(conn, "kill_self", 9, columns={"max_attempts": 1})
    ids = [enqueue(conn, "pid", unique=str(n), columns={"priority": -1}) for n in range(3)]
    run = workers.run("--concurrency", "1")
    task = row(conn, crash)
    assert task["status"] == "FAILED"
    assert task["last_error"] == "terminated by signal 9 (SIGKILL)"
    assert all(row(conn, rid)["status"] == "SUCCESSFUL" for rid in ids)
    assert any(e["msg"] == "Executor process replaced" for e in run.logs)


def test_a_timeout_replaces_the_process(conn, workers):
    slow = enqueue(conn, "sleep", 30, columns={"timeout_seconds": 1, "max_attempts": 1})
    before = enqueue(conn, "pid", columns={"priority": 5})
    after = enqueue(conn, "pid", unique="after", columns={"priority": -5})
    workers.run("--concurrency", "1")
    assert row(conn, slow)["errors_json"][0]["kind"] == "timeout"
    assert row(conn, before)["return_json"] != row(conn, after)["return_json"]


def test_writes_to_file_descriptor_1_cannot_corrupt_the_protocol(conn, workers, tmp_path):
    # In spawn mode the same task fails with "Invalid JSON on stdout" (test_worker_basics).
    rid = enqueue(conn, "corrupt_stdout")
    logs = tmp_path / "logs"
    workers.run("--logs-dir", str(logs))
    task = row(conn, rid)
    assert task["status"] == "SUCCESSFUL"
    assert "this is not json" in (logs / f"task-{rid}-attempt-1.log").read_text()


def test_an_interpreter_that_cannot_start_stops_the_worker(conn, workers):
    rid = enqueue(conn, "add", 1, 2)
    run = workers.run(python_bin="/nonexistent/python")
    assert run.returncode == 1
    first = run.stderr.strip().splitlines()[0]
    assert first.startswith("error: cannot start the executor pool: cannot start '/nonexistent")
    assert row(conn, rid)["status"] == "READY"  # nothing claimed, nothing lost


def test_an_executor_that_dies_at_start_up_is_an_infra_error(conn, workers):
    rid = enqueue(conn, "add", 1, 2, columns={"max_attempts": 1})
    workers.run(executor_module="tests.support.no_such_module")
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    (error,) = task["errors_json"]
    assert error["kind"] == "infra_error"
    assert error["message"].startswith("executor pool process exited before it was ready: ")
    assert "No module named tests.support.no_such_module" in error["message"]
