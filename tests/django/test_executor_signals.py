"""Django's task_started and task_finished, sent by reproq_django.executor around a task."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from reproq_django.executor import run_spec
from reproq_django.models import TaskRun
from tests.django.sampleapp import signal_tasks
from tests.django.support import run_worker
from tests.support.harness import WorkerFactory

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND = "reproq_django.backend.ReproqBackend"
DOUBLED = "tests.django.sampleapp.signal_tasks.doubled"
REFUSED = "tests.django.sampleapp.signal_tasks.refused"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.executors("spawn", "pool")
def test_a_worker_run_sends_both_signals_with_the_row_behind_them(tmp_path, executor_kind):
    record = tmp_path / "signals.jsonl"
    ok = signal_tasks.doubled.enqueue(21, record=str(record))
    bad = signal_tasks.refused.enqueue(7, record=str(record))
    factory = WorkerFactory(os.environ["REPROQ_TEST_DJANGO_DSN"], tmp_path, executor=executor_kind)
    try:
        run_worker(
            factory,
            "--max-tasks",
            "2",
            "--concurrency",
            "1",
            modules=("tests.django.sampleapp.signal_tasks.",),
        )
    finally:
        factory.cleanup()
    ok.refresh()
    assert ok.return_value == 42  # the receivers' prints stayed off the envelope
    bad.refresh()
    assert bad.raw_status == "READY"  # a retry is left (MAX_ATTEMPTS 2)
    rows = {str(row.result_id): row for row in TaskRun.objects.all()}
    seen = _records(record)
    assert [(s["signal"], s["id"]) for s in seen] == [
        ("task_started", ok.id),
        ("task_finished", ok.id),
        ("task_started", bad.id),
        ("task_finished", bad.id),
    ]
    started, finished, bad_started, bad_finished = seen
    for entry, task_id in ((started, ok.id), (bad_started, bad.id)):
        row = rows[task_id]
        assert entry["sender"] == BACKEND
        assert entry["status"] == "RUNNING"
        assert entry["enqueued_at"] == row.enqueued_at.isoformat()
        assert entry["started_at"] == row.started_at.isoformat()
        assert entry["backend"] == "default"
        assert entry["finished"] is False
        assert entry["handling"] is None
    assert started["module_path"] == DOUBLED
    assert started["args"] == [21]
    assert finished["status"] == "SUCCESSFUL"
    assert finished["return"] == 42
    assert finished["finished"] is True
    assert finished["errors"] == []
    assert bad_finished["status"] == "FAILED"
    assert bad_finished["errors"] == ["builtins.LookupError"]
    # Sent while the exception is being handled, so Django's own receiver logs its traceback.
    assert bad_finished["handling"] == "LookupError"
    assert bad_finished["finished"] is True


def _spec(task_path: str, record: Path, *, full: bool) -> dict:
    return {
        "task_path": task_path,
        "args": [5],
        "kwargs": {"record": str(record), "full": full},
        "queue_name": "default",
    }


def test_receivers_that_ask_only_for_what_the_executor_knows_cost_no_query(tmp_path):
    record = tmp_path / "signals.jsonl"
    row = signal_tasks.doubled.enqueue(5, record=str(record), full=False)
    with CaptureQueriesContext(connection) as queries:
        ok, envelope = run_spec(_spec(DOUBLED, record, full=False), result_id=row.id, attempt=1)
    assert ok, envelope
    assert [q["sql"] for q in queries.captured_queries] == []
    assert [(s["signal"], s["status"]) for s in _records(record)] == [
        ("task_started", "RUNNING"),
        ("task_finished", "SUCCESSFUL"),
    ]


@pytest.mark.parametrize("task", [signal_tasks.doubled, signal_tasks.refused])
def test_the_row_is_read_once_when_a_receiver_asks_for_it(tmp_path, task):
    record = tmp_path / "signals.jsonl"
    row = task.enqueue(5, record=str(record))
    with CaptureQueriesContext(connection) as queries:
        ok, envelope = run_spec(
            _spec(task.module_path, record, full=True), result_id=row.id, attempt=1
        )
    assert len(queries.captured_queries) == 1
    started, finished = _records(record)
    # Read while READY (nothing claimed it here): the row's columns, the executor's status.
    assert started["enqueued_at"] == row.enqueued_at.isoformat()
    assert started["started_at"] is None
    assert started["status"] == "RUNNING"
    if ok:
        assert finished["return"] == 10
        assert finished["errors"] == []
    else:
        assert json.loads(envelope)["exception_class"] == "builtins.LookupError"
        assert finished["errors"] == ["builtins.LookupError"]


def test_a_run_without_a_row_still_signals(tmp_path):
    """An executor run by hand has no row: what it would hold reads as empty."""
    record = tmp_path / "signals.jsonl"
    ok, _ = run_spec(_spec(DOUBLED, record, full=True), result_id="", attempt=1)
    assert ok
    started, finished = _records(record)
    assert (started["signal"], finished["signal"]) == ("task_started", "task_finished")
    assert started["enqueued_at"] is None
    assert started["backend"] == "default"
    assert finished["return"] == 10
