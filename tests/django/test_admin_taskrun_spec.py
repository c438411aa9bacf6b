"""TaskRunAdmin against reproq-django.md §2.3: workflow_id search, the expired-lease test task
(URL and action), the change list's counts and reload, and the columns and detail fields."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from reproq_django.models import TaskRun
from tests.django import test_admin
from tests.django.sampleapp import tasks
from tests.django.test_admin_manage_fixes import CHANGELIST, staff_client

pytestmark = pytest.mark.django_db
staff = test_admin.staff  # the fixture: a client logged in as a superuser

CREATE_EXPIRED_LEASE = "admin:reproq_django_taskrun_create_expired_lease"


def row(proxy) -> TaskRun:
    return TaskRun.objects.get(result_id=int(proxy.id))


def listed(client, **params: str) -> list[int]:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return [run.result_id for run in response.context["cl"].result_list]


def test_search_finds_a_workflow_id_and_a_garbage_term_finds_nothing(staff):
    workflow = uuid.uuid4()
    member = row(tasks.add.enqueue(1, 2))
    other = row(tasks.add.enqueue(3, 4))
    TaskRun.objects.filter(pk=member.pk).update(workflow_id=workflow)
    TaskRun.objects.filter(pk=other.pk).update(workflow_id=uuid.uuid4())

    assert listed(staff, q=str(workflow)) == [member.pk]
    assert listed(staff, q=workflow.hex) == [member.pk]  # the dashless form is the same UUID
    assert listed(staff, q="not-a-uuid-at-all") == []


def test_create_expired_lease_inserts_one_running_row_with_a_lapsed_lease(staff):
    response = staff.post(reverse(CREATE_EXPIRED_LEASE))
    assert response.status_code == 302
    assert response["Location"] == reverse(CHANGELIST)

    run = TaskRun.objects.get()
    assert (run.status, run.leased_by) == ("RUNNING", "admin-expired-lease")
    assert run.leased_until < timezone.now() - dt.timedelta(minutes=9)
    assert run.task_path == "reproq_django.tasks.debug_noop_task"
    test_id = run.spec_json["provenance"]["reclaim_test_id"]
    assert test_id and run.metadata_json["reclaim_test_id"] == test_id

    # A second one is a row of its own (the active-spec index would refuse a copy).
    staff.post(reverse(CREATE_EXPIRED_LEASE))
    assert TaskRun.objects.filter(leased_by="admin-expired-lease").count() == 2
    notes = [str(m) for m in staff.get(reverse(CHANGELIST)).context["messages"]]
    assert any(note.startswith("Created expired-lease test task") for note in notes)


def test_create_expired_lease_refuses_a_get(staff):
    response = staff.get(reverse(CREATE_EXPIRED_LEASE))
    assert response.status_code == 405
    assert not TaskRun.objects.exists()


def test_create_expired_lease_refuses_a_view_only_user(client):
    viewer = staff_client(client, "view_taskrun")
    response = viewer.post(reverse(CREATE_EXPIRED_LEASE))
    assert response.status_code == 403
    assert not TaskRun.objects.exists()
    assert b"reproq-create-expired-lease" not in viewer.get(reverse(CHANGELIST)).content


def test_create_expired_lease_action(client):
    editor = staff_client(client, "view_taskrun", "change_taskrun")
    anchor = row(tasks.add.enqueue(1, 1))
    editor.post(
        reverse(CHANGELIST),
        {"action": "create_expired_lease_test_task", "_selected_action": [anchor.pk]},
    )
    created = TaskRun.objects.exclude(pk=anchor.pk).get()
    assert (created.status, created.leased_by) == ("RUNNING", "admin-expired-lease")
    assert created.leased_until < timezone.now()


def test_changelist_shows_counts_the_button_and_reloads(staff):
    for i, status in enumerate(["READY", "RUNNING", "RUNNING", "FAILED", "FAILED", "FAILED"]):
        TaskRun.objects.filter(pk=row(tasks.add.enqueue(i, 0)).pk).update(status=status)
    response = staff.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert response.context["reproq_counts"] == {"ready": 1, "running": 2, "failed": 3}
    html = response.content.decode()
    assert 'id="reproq-counts"' in html
    assert f'action="{reverse(CREATE_EXPIRED_LEASE)}"' in html
    assert 'data-reproq-reload="10000"' in html
    assert "window.location.reload()" in html


def test_list_columns(staff):
    started = timezone.now() - dt.timedelta(seconds=90)
    run = row(tasks.add.enqueue(5, 6))
    TaskRun.objects.filter(pk=run.pk).update(
        status="SUCCESSFUL",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=2.5),
        workflow_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        wait_count=1,
        attempts=1,
    )
    html = staff.get(reverse(CHANGELIST)).content.decode()
    assert "background:#2e7d32" in html  # the SUCCESSFUL badge's colour
    assert "2.50s" in html  # duration
    assert "1/2" in html  # attempts "n/max" (MAX_ATTEMPTS 2 in the test settings)
    assert ">12345678</small>" in html and "wait 1 | parent -" in html  # workflow info


def test_detail_pretty_prints_json_and_lists_duplicate_specs(staff):
    first = row(tasks.add.enqueue(7, 8))
    TaskRun.objects.filter(pk=first.pk).update(status="SUCCESSFUL", return_json={"sum": 15})
    second = row(tasks.add.enqueue(7, 8))  # the same spec again, now that the first is done
    assert second.pk != first.pk and second.spec_hash == first.spec_hash

    html = staff.get(reverse("admin:reproq_django_taskrun_change", args=[first.pk]))
    html = html.content.decode()
    assert "<pre>{\n  &quot;sum&quot;: 15\n}</pre>" in html  # pretty_return
    assert "&quot;task_path&quot;: &quot;tests.django.sampleapp.tasks.add&quot;" in html
    link = reverse("admin:reproq_django_taskrun_change", args=[second.pk])
    assert f'<a href="{link}">{second.pk}</a> (READY)' in html  # duplicate_specs


def test_workflow_runs_are_found_by_their_uuid_in_either_form(staff):
    from reproq_django.models import WorkflowRun

    wanted = WorkflowRun.objects.create(workflow_id=uuid.uuid4(), expected_count=2)
    WorkflowRun.objects.create(workflow_id=uuid.uuid4(), expected_count=1)
    changelist = reverse("admin:reproq_django_workflowrun_changelist")

    def found(term: str) -> list[uuid.UUID]:
        response = staff.get(changelist, {"q": term})
        assert response.status_code == 200
        return [run.workflow_id for run in response.context["cl"].result_list]

    assert found(str(wanted.workflow_id)) == [wanted.workflow_id]
    assert found(wanted.workflow_id.hex) == [wanted.workflow_id]  # was no match: text compare
    assert found("no-such-workflow") == []
