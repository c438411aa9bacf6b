"""The admin pages and actions, through Django's test client as a superuser."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from reproq_django.models import QueueControl, TaskRun, Worker
from tests.django.sampleapp import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(user)
    return client


def action(client, model: str, name: str, ids: list) -> None:
    response = client.post(
        reverse(f"admin:reproq_django_{model}_changelist"),
        {"action": name, "_selected_action": [str(i) for i in ids]},
        follow=True,
    )
    assert response.status_code == 200


def test_changelists_render(staff):
    tasks.add.enqueue(1, 2)
    Worker.objects.create(worker_id="w1", hostname="h", concurrency=2, queues=["default"])
    for model in ("taskrun", "worker", "queuecontrol", "periodictask", "workflowrun", "ratelimit"):
        response = staff.get(reverse(f"admin:reproq_django_{model}_changelist"))
        assert response.status_code == 200, model
    run = TaskRun.objects.get()
    detail = staff.get(reverse("admin:reproq_django_taskrun_change", args=[run.result_id]))
    assert detail.status_code == 200
    assert b"tests.django.sampleapp.tasks.add" in detail.content


def test_task_actions(staff):
    failed = TaskRun.objects.get(result_id=int(tasks.add.enqueue(1, 1).id))
    TaskRun.objects.filter(pk=failed.pk).update(status="FAILED", attempts=2, last_error="x")
    action(staff, "taskrun", "retry_failed_tasks", [failed.pk])
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.last_error) == ("READY", 0, None)

    TaskRun.objects.filter(pk=failed.pk).update(status="FAILED")
    action(staff, "taskrun", "discard_failed_tasks", [failed.pk])
    failed.refresh_from_db()
    assert (failed.status, failed.last_error) == ("CANCELLED", "Discarded in admin")

    running = TaskRun.objects.get(result_id=int(tasks.add.enqueue(2, 2).id))
    queued = TaskRun.objects.get(result_id=int(tasks.add.enqueue(3, 3).id))
    TaskRun.objects.filter(pk=running.pk).update(status="RUNNING")
    action(staff, "taskrun", "cancel_tasks", [running.pk, queued.pk])
    running.refresh_from_db()
    queued.refresh_from_db()
    assert (running.status, running.cancel_requested) == ("RUNNING", True)
    assert queued.status == "CANCELLED"

    TaskRun.objects.filter(pk=running.pk).update(status="SUCCESSFUL")
    action(staff, "taskrun", "replay_tasks", [running.pk])
    replay = TaskRun.objects.order_by("-result_id").first()
    assert replay.pk != running.pk
    assert (replay.status, replay.spec_hash) == ("READY", running.spec_hash)
    # replaying again while the copy is still READY is refused by the dedupe index, not a crash
    action(staff, "taskrun", "replay_tasks", [running.pk])
    assert TaskRun.objects.filter(spec_hash=running.spec_hash, status="READY").count() == 1

    action(staff, "taskrun", "delete_successful_tasks", [running.pk, replay.pk])
    assert not TaskRun.objects.filter(pk=running.pk).exists()
    assert TaskRun.objects.filter(pk=replay.pk).exists()


def test_worker_and_queue_actions(staff):
    old = Worker.objects.create(
        worker_id="old", last_seen_at=timezone.now() - dt.timedelta(hours=1)
    )
    fresh = Worker.objects.create(worker_id="fresh")
    action(staff, "worker", "delete_stale_workers", [old.pk, fresh.pk])
    assert list(Worker.objects.values_list("worker_id", flat=True)) == ["fresh"]
    QueueControl.objects.create(queue_name="mail")
    action(staff, "queuecontrol", "pause_queues", ["mail"])
    assert QueueControl.objects.get().paused is True
    action(staff, "queuecontrol", "resume_queues", ["mail"])
    assert QueueControl.objects.get().paused is False


def test_retry_skips_a_spec_that_is_active_again(staff):
    first = tasks.add.enqueue(5, 5)
    TaskRun.objects.filter(pk=int(first.id)).update(status="FAILED")
    again = tasks.add.enqueue(5, 5)  # the same spec, queued anew
    assert again.id != first.id
    response = staff.post(
        reverse("admin:reproq_django_taskrun_changelist"),
        {"action": "retry_failed_tasks", "_selected_action": [first.id]},
        follow=True,
    )
    assert response.status_code == 200
    notes = [str(m) for m in response.context["messages"]]
    assert notes == [
        "Retried 0 task(s).",
        "Skipped 1 task(s) whose spec is already queued or running, or that wait on a task "
        "that has not succeeded.",
    ]
    # Both failed, selected together: one of them can be queued again.
    TaskRun.objects.filter(pk=int(again.id)).update(status="FAILED")
    action(staff, "taskrun", "retry_failed_tasks", [first.id, again.id])
    statuses = sorted(TaskRun.objects.values_list("status", flat=True))
    assert statuses == ["FAILED", "READY"]


def test_a_nul_in_a_filter_or_search_is_a_bad_filter_not_a_500(staff):
    tasks.add.enqueue(1, 2)
    for model, query in (("taskrun", "queue_name__exact=%00"), ("worker", "q=a%00b")):
        url = reverse(f"admin:reproq_django_{model}_changelist")
        response = staff.get(f"{url}?{query}")
        assert response.status_code == 302, model
        assert response["Location"] == f"{url}?e=1"


def test_retry_leaves_a_chain_child_whose_parent_failed(staff):
    parent = TaskRun.objects.get(result_id=int(tasks.add.enqueue(7, 7).id))
    child = TaskRun.objects.get(result_id=int(tasks.add.enqueue(8, 8).id))
    TaskRun.objects.filter(pk=child.pk).update(parent_id=parent.pk)
    TaskRun.objects.filter(pk__in=[parent.pk, child.pk]).update(status="FAILED")
    action(staff, "taskrun", "retry_failed_tasks", [parent.pk, child.pk])
    parent.refresh_from_db()
    child.refresh_from_db()
    assert (parent.status, child.status) == ("READY", "FAILED")
