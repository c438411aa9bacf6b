"""Audit of ReproqBackend against reproq-django.md §1/§2.4 and Django's Tasks API contract."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks import signals as django_signals
from django.tasks.base import Task

from reproq_django.backend import ReproqBackend
from reproq_django.models import TaskRun
from reproq_django.proxy import unknown_task
from tests.conftest import REPO_ROOT
from tests.django.sampleapp import audit_tasks, tasks

pytestmark = pytest.mark.django_db


def test_djangos_task_enqueued_signal_is_sent_for_every_enqueue():
    received: list[tuple[Any, Any]] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        received.append((sender, task_result))

    django_signals.task_enqueued.connect(receiver)
    try:
        one = tasks.add.enqueue(1, 2)
        many = task_backends["default"].bulk_enqueue(
            [(tasks.add, (3, 4), {}), (tasks.shout, ("a",), {})]
        )
    finally:
        django_signals.task_enqueued.disconnect(receiver)
    assert [sender for sender, _ in received] == [ReproqBackend] * 3
    assert [result.id for _, result in received] == [one.id, *(r.id for r in many)]
    assert received[0][1].task.module_path == "tests.django.sampleapp.tasks.add"


def _row(task_path: str, queue: str, backend_alias: str = "default") -> TaskRun:
    return TaskRun.objects.create(
        task_path=task_path,
        spec_json={"task_path": task_path, "args": [], "kwargs": {}},
        spec_hash=task_path.encode().hex()[:64].ljust(64, "0"),
        queue_name=queue,
        backend_alias=backend_alias,
    )


def test_get_result_reads_rows_this_projects_backends_would_not_accept(settings):
    # Rows written by other tools (beat, the CLI, another project): a plain function, a
    # backend alias not in TASKS, a QUEUES without "default".
    settings.TASKS = {
        "default": {"BACKEND": "reproq_django.backend.ReproqBackend", "QUEUES": ["high"]}
    }
    backend = task_backends["default"]
    plain = backend.get_result(_row("os.getcwd", "high").result_id)
    assert plain.task.func is os.getcwd
    assert plain.status == TaskResultStatus.READY
    gone = backend.get_result(_row("no.such.task", "high", backend_alias="gone").result_id)
    assert (gone.task.func, gone.task.backend, gone.backend) == (unknown_task, "gone", "gone")
    assert isinstance(gone.task, Task)
    gone.refresh()
    assert gone.raw_status == "READY"


@pytest.mark.django_db(transaction=True)
def test_djangos_async_api_enqueues_reads_and_refreshes():
    async def scenario() -> tuple[Any, Any]:
        try:
            result = await tasks.add.aenqueue(2, 40)
            fetched = await tasks.add.aget_result(result.id)
            await TaskRun.objects.filter(result_id=int(result.id)).aupdate(
                status="SUCCESSFUL", return_json=42
            )
            await result.arefresh()
            return result, fetched
        finally:
            # The ORM ran in asgiref's worker thread: its connection would outlive the test
            # and keep the test database from being dropped.
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    result, fetched = asyncio.run(scenario())
    assert fetched.id == result.id
    assert fetched.task.func is tasks.add.func
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)


@pytest.mark.django_db(transaction=True)
def test_a_task_reads_djangos_task_result_from_its_context():
    result = audit_tasks.own_result.enqueue(label="mine")
    run = TaskRun.objects.get(result_id=int(result.id))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django.settings",
        "PYTHONPATH": str(REPO_ROOT),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "reproq_django.executor",
            "--payload-stdin",
            "--result-id",
            result.id,
        ],
        input=json.dumps(run.spec_json),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    envelope = json.loads(completed.stdout.strip().splitlines()[-1])
    assert envelope == {
        "ok": True,
        "return": {
            "id": result.id,
            "task_path": "tests.django.sampleapp.audit_tasks.own_result",
            "kwargs": {"label": "mine"},
            "same_object": True,
        },
    }, completed.stderr


@pytest.mark.django_db(transaction=True)
def test_an_enqueue_belongs_to_the_callers_transaction():
    # Django leaves "enqueue on commit" to the caller: a rolled-back enqueue must leave no
    # task, and one deferred with on_commit appears only at the commit.
    with transaction.atomic():
        rolled_back = tasks.add.enqueue(1, 1)
        transaction.set_rollback(True)
    assert not TaskRun.objects.filter(result_id=int(rolled_back.id)).exists()
    deferred: list[Any] = []
    with transaction.atomic():
        transaction.on_commit(lambda: deferred.append(tasks.add.enqueue(2, 2)))
        assert deferred == []
    assert TaskRun.objects.get(result_id=int(deferred[0].id)).status == "READY"
