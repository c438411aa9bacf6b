"""Tasks enqueued through Django's API, run by `reproq worker` via reproq_django.executor."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus

from reproq_django.models import TaskRun, WorkflowRun
from reproq_django.workflows import chain, chord, group
from tests.django.sampleapp import tasks
from tests.django.support import run_worker
from tests.support.harness import WorkerFactory, process_alive, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.executors("spawn", "pool")]


@pytest.fixture
def django_workers(tmp_path, executor_kind):
    factory = WorkerFactory(os.environ["REPROQ_TEST_DJANGO_DSN"], tmp_path, executor=executor_kind)
    yield factory
    factory.cleanup()


def test_success_failure_context_async_and_prints(django_workers, tmp_path):
    ok = tasks.add.enqueue(20, 22)
    loud = tasks.shout.enqueue("hi")
    bad = tasks.explode.enqueue("kaboom")
    ctx = tasks.with_context.enqueue(note="remember me")
    outside = tasks.note_from_outside.enqueue()
    coro = tasks.async_double.enqueue(21)
    env = tasks.settings_module.enqueue()
    run_worker(django_workers, "--logs-dir", str(tmp_path / "logs"))

    ok.refresh()
    assert ok.status == TaskResultStatus.SUCCESSFUL
    assert ok.return_value == 42
    assert tasks.add.get_result(ok.id).return_value == 42

    loud.refresh()
    assert loud.return_value == "HI"
    log_text = Path(loud.data.logs_uri).read_text()
    assert "[reproq executor] Task wrote" in log_text
    assert "this print must not reach the envelope" not in log_text

    bad.refresh()
    assert bad.raw_status == "READY"  # MAX_ATTEMPTS 2: one retry left
    assert bad.errors[0].exception_class is ValueError
    assert bad.errors_json[0]["message"] == "kaboom"

    ctx.refresh()
    assert ctx.return_value == {"attempt": 1, "result_id": ctx.id}
    assert ctx.metadata == {"note": "remember me"}
    outside.refresh()
    assert outside.return_value == "noted"
    # The task never read its context's metadata, so the executor wrote nothing back.
    assert outside.metadata == {"written_by": "another process"}

    coro.refresh()
    assert coro.return_value == 42
    env.refresh()
    assert env.return_value == "tests.django.settings"


def test_retry_then_failed(django_workers):
    bad = tasks.explode.enqueue("again")
    run_worker(django_workers)
    TaskRun.objects.filter(result_id=int(bad.id)).update(run_after=None)
    run_worker(django_workers)
    bad.refresh()
    assert bad.status == TaskResultStatus.FAILED
    assert bad.attempts == 2
    assert len(bad.errors) == 2
    assert bad.data.last_error == "again"


def test_chain_group_chord(django_workers):
    steps = chain((tasks.add, (1, 2), {}), (tasks.add, (3, 4), {}), tasks.settings_module).enqueue()
    parallel = group((tasks.add, (5, 5)), (tasks.add, (6, 6))).enqueue()
    members, callback = chord(
        (tasks.add, (1, 1)),
        (tasks.add, (2, 2)),
        (tasks.add, (3, 3)),
        callback=(tasks.shout, ("done",)),
    ).enqueue()
    ordered = chain((tasks.stamp, ("first",), {}), (tasks.stamp, ("second",), {})).enqueue()
    stamp_members, stamp_callback = chord(
        (tasks.stamp, ("m1",)),
        (tasks.stamp, ("m2",)),
        (tasks.stamp, ("m3",)),
        callback=(tasks.stamp, ("callback",)),
    ).enqueue()
    assert [s.raw_status for s in steps] == ["READY", "WAITING", "WAITING"]
    assert callback.raw_status == "WAITING"
    run_worker(django_workers, "--concurrency", "3")
    for result in [*steps, *parallel, *members, callback, *ordered, *stamp_members, stamp_callback]:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, (result.id, result.errors_json)
    assert [s.return_value for s in steps] == [3, 7, "tests.django.settings"]
    assert callback.return_value == "DONE"
    # order, by the task bodies' own clocks
    first, second = [r.return_value for r in ordered]
    assert first["end"] <= second["start"]
    stamped = [m.return_value for m in stamp_members]
    assert stamp_callback.return_value["start"] >= max(m["end"] for m in stamped)
    wf = WorkflowRun.objects.get(workflow_id=callback.data.workflow_id)
    assert (wf.success_count, wf.status) == (3, "SUCCESSFUL")


def test_failing_chord_member_fails_callback(django_workers):
    _members, callback = chord(
        (tasks.add, (1, 1)), (tasks.explode, ("member",)), callback=(tasks.shout, ("never",))
    ).enqueue()
    run_worker(django_workers, "--concurrency", "2")
    TaskRun.objects.filter(status="READY").update(run_after=None)
    run_worker(django_workers, "--concurrency", "2")
    callback.refresh()
    assert callback.status == TaskResultStatus.FAILED
    assert callback.errors_json[0]["kind"] == "workflow_failed"


def test_identical_chains_do_not_deduplicate(django_workers):
    a = chain((tasks.add, (1, 1)), (tasks.add, (2, 2))).enqueue()
    b = chain((tasks.add, (1, 1)), (tasks.add, (2, 2))).enqueue()
    assert len({r.id for r in a + b}) == 4


@pytest.mark.parametrize("executor", ["spawn", "pool"])
def test_a_killed_worker_leaves_no_task_running(django_workers, tmp_path, executor):
    """The executor runs in a session of its own; without a watch on its parent it (and what
    it started) would keep running after a SIGKILL of the worker, and the task would run
    twice at once once the lease expired. With the pool, the fork server between them goes
    too."""
    result = tasks.linger.enqueue(str(tmp_path))
    worker = django_workers.start(
        "--queues", "default",
        env={"DJANGO_SETTINGS_MODULE": "tests.django.settings"},
        executor=executor,
        executor_module="reproq_django.executor",
        allowed_task_modules=["tests.django.sampleapp.tasks."],
    )  # fmt: skip
    marker = tmp_path / "linger.pids"
    wait_for(marker.exists, timeout=60, what="the task running")
    pids = [int(pid) for pid in marker.read_text().split()]
    assert (pids[2] == worker.pid) == (executor == "spawn")
    assert all(process_alive(pid) for pid in pids)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for(
        lambda: not any(process_alive(pid) for pid in pids),
        timeout=10,
        what="the executor and its child gone with the worker",
    )
    assert TaskRun.objects.get(result_id=int(result.id)).status == "RUNNING"  # left to reclaim
