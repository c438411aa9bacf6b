"""--task-memory-limit and --task-cpu-limit: caps set in the executor child, reported as
kind resource_limit naming the limit, never retried, and the worker carries on."""

from __future__ import annotations

import pytest

from tests.support.harness import enqueue, row

pytestmark = pytest.mark.executors("spawn", "pool")


def _resource_error(conn, rid) -> dict:
    task = row(conn, rid)
    assert task["status"] == "FAILED", task
    assert task["attempts"] == 1  # not retried, although attempts remain
    (error,) = task["errors_json"]
    assert error["kind"] == "resource_limit", error
    return error


def test_cpu_limit_stops_a_spinning_task(conn, workers):
    spinner = enqueue(conn, "burn_cpu", 60, columns={"max_attempts": 3})
    after = enqueue(conn, "add", 2, 2)
    run = workers.run("--task-cpu-limit", "1", "--concurrency", "1", timeout=60)
    assert run.returncode == 0, run.stderr
    error = _resource_error(conn, spinner)
    assert error["limit"] == "cpu"
    assert error["limit_value"] == "1s"
    assert "CPU time limit of 1s" in error["message"]
    # the worker (and, with the pool, a fresh process) runs the next task normally
    assert row(conn, after)["status"] == "SUCCESSFUL"
    assert "Task exceeded a resource limit" in run.messages()


def test_cpu_limit_holds_when_the_task_ignores_sigxcpu(conn, workers):
    rid = enqueue(conn, "burn_cpu", 60, kwargs={"ignore_sigxcpu": True})
    run = workers.run("--task-cpu-limit", "1", timeout=60)
    assert run.returncode == 0, run.stderr
    assert _resource_error(conn, rid)["limit"] == "cpu"


def test_cpu_limit_is_per_task_not_per_pool_process(conn, workers):
    """Four tasks of 0.6 s CPU each in one process stay under a 1 s cap each."""
    ids = [enqueue(conn, "burn_cpu", 0.6, unique=str(i)) for i in range(4)]
    run = workers.run("--task-cpu-limit", "1", "--concurrency", "1", timeout=60)
    assert run.returncode == 0, run.stderr
    assert [row(conn, i)["status"] for i in ids] == ["SUCCESSFUL"] * 4


def test_memory_limit_fails_a_greedy_task(conn, workers):
    greedy = enqueue(conn, "allocate", 2048, columns={"max_attempts": 3})
    modest = enqueue(conn, "allocate", 16)
    run = workers.run("--task-memory-limit", "512", "--concurrency", "1", timeout=60)
    assert run.returncode == 0, run.stderr
    error = _resource_error(conn, greedy)
    assert error["limit"] == "memory"
    assert error["limit_value"] == "512 MiB"
    assert row(conn, modest)["status"] == "SUCCESSFUL"


def test_memory_limit_from_the_environment(conn, workers):
    rid = enqueue(conn, "allocate", 2048)
    run = workers.run(env={"REPROQ_TASK_MEMORY_LIMIT": "400"})
    assert run.returncode == 0, run.stderr
    assert _resource_error(conn, rid)["limit_value"] == "400 MiB"


def test_without_limits_the_same_task_succeeds(conn, workers):
    rid = enqueue(conn, "allocate", 600)
    run = workers.run()
    assert run.returncode == 0, run.stderr
    assert row(conn, rid)["status"] == "SUCCESSFUL"
