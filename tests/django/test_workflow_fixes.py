"""Workflows: a second enqueue of one object, bad items, rows ended outside the worker (admin
cancel, `manage.py reproq reclaim --action fail`), and the router's `allow_relation`."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from reproq_django.db_router import ReproqRouter
from reproq_django.models import PeriodicTask, TaskRun, WorkflowRun
from reproq_django.workflows import chain, chord, group
from tests.django.sampleapp import tasks


def rows(proxies) -> list[TaskRun]:
    return [TaskRun.objects.get(result_id=int(p.id)) for p in proxies]


def state(proxy) -> tuple[str, str | None]:
    run = TaskRun.objects.get(result_id=int(proxy.id))
    kinds = [error.get("kind") for error in run.errors_json or []]
    return run.status, kinds[-1] if kinds else None


# --- F6: enqueueing the same workflow object again ----------------------------------------------


@pytest.mark.django_db
def test_a_second_enqueue_of_a_chain_or_group_is_a_second_independent_run():
    nightly = chain((tasks.add, (1, 2)), (tasks.add, (3, 4)))
    first_id = nightly.workflow_id
    first = rows(nightly.enqueue())
    second = rows(nightly.enqueue())  # raised IntegrityError (idx_task_runs_spec_unique)
    assert {run.workflow_id for run in first} == {first_id}
    assert len({run.workflow_id for run in second}) == 1
    assert second[0].workflow_id != first_id
    assert nightly.workflow_id == second[0].workflow_id
    assert [(run.status, run.parent_id) for run in second] == [
        ("READY", None),
        ("WAITING", second[0].result_id),
    ]
    assert second[0].spec_json["workflow"] == {"id": str(second[0].workflow_id), "index": 0}

    fanout = group((tasks.add, (1, 2)), (tasks.add, (3, 4)))
    runs = rows(fanout.enqueue()) + rows(fanout.enqueue())
    assert len({run.result_id for run in runs}) == 4
    assert len({run.workflow_id for run in runs}) == 2


@pytest.mark.django_db
def test_a_second_enqueue_of_a_chord_has_its_own_workflow_row():
    report = chord((tasks.add, (1, 2)), (tasks.add, (3, 4)), callback=(tasks.add, (0, 0)))
    members_1, callback_1 = report.enqueue()
    members_2, callback_2 = report.enqueue()
    assert callback_1.id != callback_2.id
    assert {p.id for p in members_1}.isdisjoint(p.id for p in members_2)
    runs = WorkflowRun.objects.order_by("created_at")
    assert [(w.expected_count, w.status) for w in runs] == [(2, "RUNNING"), (2, "RUNNING")]
    assert {w.callback_result_id for w in runs} == {int(callback_1.id), int(callback_2.id)}
    assert {run.workflow_id for run in rows(members_2)} == {report.workflow_id}


# --- F11: bad items -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "parts"),
    [
        (
            lambda: chain("app.tasks.add"),
            TypeError,
            (
                "chain item 0: expected a Task or a (task, args[, kwargs]) tuple",
                "str 'app.tasks.add'",
            ),
        ),
        (lambda: chain(tasks.add.func), TypeError, ("chain item 0", "decorate the function")),
        (lambda: chain((tasks.add,)), ValueError, ("chain item 0", "a tuple of 1")),
        (lambda: chain((tasks.add, (1, 2), {}, 9)), ValueError, ("a tuple of 4",)),
        (lambda: chain((tasks.add, 1, {})), TypeError, ("args must be a list or tuple",)),
        (lambda: chain((tasks.add, "ab")), TypeError, ("got str 'ab'", "(add, ['ab'])")),
        (lambda: chain((tasks.add, (1, 2), [1])), TypeError, ("kwargs must be a dict",)),
        (lambda: chain(["not", "varargs"]), TypeError, ("separate arguments",)),
        (lambda: chain(("app.add", (1,))), TypeError, ("first element must be a Task",)),
        (lambda: group(tasks.add, 7), TypeError, ("group item 1", "got int 7")),
        (
            lambda: chord((tasks.add, (1, 2)), callback=None),
            TypeError,
            ("chord callback", "got NoneType None"),
        ),
    ],
)
def test_a_bad_item_is_refused_in_one_line_naming_it(build, error, parts):
    with pytest.raises(error) as excinfo:
        build()
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_a_task_on_another_backend_is_refused(settings):
    settings.TASKS = {
        **settings.TASKS,
        "dummy": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"},
    }
    elsewhere = tasks.add.using(backend="dummy")
    with pytest.raises(TypeError, match=r"^chain item 1: .*add uses task backend 'dummy' "):
        chain((tasks.add, (1, 2)), (elsewhere, (1, 2)))


# --- F3: rows ended outside the worker ----------------------------------------------------------


@pytest.fixture
def staff(client):
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    return client


def cancel_in_admin(client, *proxies) -> None:
    response = client.post(
        reverse("admin:reproq_django_taskrun_changelist"),
        {"action": "cancel_tasks", "_selected_action": [p.id for p in proxies]},
        follow=True,
    )
    assert response.status_code == 200


def workflow_status(proxy) -> str:
    workflow_id = TaskRun.objects.get(result_id=int(proxy.id)).workflow_id
    return WorkflowRun.objects.get(workflow_id=workflow_id).status


@pytest.mark.django_db
def test_admin_cancel_fails_what_waits_on_the_cancelled_rows(staff):
    members, callback = chord(
        (tasks.add, (1, 1)), (tasks.add, (2, 2)), callback=(tasks.add, (0, 0))
    ).enqueue()
    steps = chain((tasks.add, (10, 10)), (tasks.add, (20, 20)), (tasks.add, (30, 30))).enqueue()
    cancel_in_admin(staff, members[0], steps[0])

    assert state(members[0]) == ("CANCELLED", None)
    assert state(members[1]) == ("READY", None)  # runs, but the callback never will
    assert state(callback) == ("FAILED", "workflow_failed")
    assert workflow_status(callback) == "FAILED"
    assert state(steps[0]) == ("CANCELLED", None)
    assert state(steps[1]) == state(steps[2]) == ("FAILED", "parent_failed")
    last = TaskRun.objects.get(result_id=int(steps[2].id))
    assert (last.wait_count, last.errors_json[-1]["failed_result_id"]) == (0, int(steps[1].id))


@pytest.mark.django_db
def test_admin_cancel_of_a_waiting_step_or_callback(staff):
    members, callback = chord((tasks.add, (1, 1)), callback=(tasks.add, (0, 0))).enqueue()
    steps = chain((tasks.add, (10, 10)), (tasks.add, (20, 20)), (tasks.add, (30, 30))).enqueue()
    cancel_in_admin(staff, callback, steps[1])

    assert state(callback) == ("CANCELLED", None)
    assert workflow_status(callback) == "FAILED"
    assert state(members[0]) == ("READY", None)
    assert [state(step) for step in steps] == [
        ("READY", None),
        ("CANCELLED", None),
        ("FAILED", "parent_failed"),
    ]


@pytest.mark.django_db
def test_reclaim_fail_fails_what_waits_on_the_reclaimed_rows():
    members, callback = chord(
        (tasks.add, (1, 1)), (tasks.add, (2, 2)), callback=(tasks.add, (0, 0))
    ).enqueue()
    steps = chain((tasks.add, (10, 10)), (tasks.add, (20, 20))).enqueue()
    expired = timezone.now() - dt.timedelta(minutes=10)
    TaskRun.objects.filter(result_id__in=[int(members[0].id), int(steps[0].id)]).update(
        status="RUNNING", leased_until=expired, leased_by="gone", attempts=1
    )
    out = io.StringIO()
    call_command("reproq", "reclaim", "--action", "fail", stdout=out)
    assert out.getvalue().strip() == "Reclaimed 2 task(s) (fail)."

    assert state(members[0]) == ("FAILED", "reclaim")
    assert state(callback) == ("FAILED", "workflow_failed")
    assert workflow_status(callback) == "FAILED"
    assert state(steps[0]) == ("FAILED", "reclaim")
    assert state(steps[1]) == ("FAILED", "parent_failed")


# --- F10: the router's allow_relation -----------------------------------------------------------


@pytest.mark.django_db(databases=["default", "second"])
def test_allow_relation_answers_only_for_two_reproq_rows():
    router = ReproqRouter()
    on_default = TaskRun.objects.create(spec_json={"task_path": "x.y"}, spec_hash="a" * 64)
    on_second = TaskRun.objects.using("second").create(
        spec_json={"task_path": "x.y"}, spec_hash="b" * 64
    )
    unsaved = TaskRun(spec_json={}, spec_hash="c" * 64)
    assert router.allow_relation(on_default, on_second) is False
    assert router.allow_relation(on_default, TaskRun.objects.get(pk=on_default.pk)) is True
    assert router.allow_relation(on_default, unsaved) is True  # database not known yet
    assert router.allow_relation(unsaved, PeriodicTask()) is True
    user = User(username="u")
    user._state.db = "second"
    assert router.allow_relation(user, on_default) is None  # left to the other routers
    assert router.allow_relation(on_default, user) is None
    assert router.allow_relation(User(), unsaved) is None
