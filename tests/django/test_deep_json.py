"""Rows holding JSON nested deeper than Python's decoder goes (jsonb takes 10,000 levels,
Python ~1,500): other tools write them (an executor's return value, a row written by hand).
The row still loads, its value is refused by name where it is asked for, and a save writes
it back unchanged."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.forms import modelform_factory
from django.urls import reverse
from django.utils import timezone

from reproq_django.models import PeriodicTask, TaskRun, UndecodableJSON
from tests.django import test_admin
from tests.django.sampleapp import tasks
from tests.django.test_manage import manage

pytestmark = pytest.mark.django_db
staff = test_admin.staff

DEPTH = 3000
DEEP = "[" * DEPTH + "]" * DEPTH


def deep_spec(depth: int) -> str:
    nested = "[" * depth + "]" * depth
    return '{"task_path": "tests.django.sampleapp.tasks.add", "args": ' + nested + "}"


def set_json(result_id: int, **columns: str) -> None:
    """Write jsonb text as it is: the ORM cannot encode values this deep."""
    assignments = ", ".join(f"{name} = %s::jsonb" for name in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE task_runs SET {assignments} WHERE result_id = %s",
            [*columns.values(), result_id],
        )


def expire(row: int) -> None:
    TaskRun.objects.filter(pk=row).update(
        status="RUNNING", leased_until=timezone.now() - dt.timedelta(hours=1), leased_by="dead"
    )


def stored(result_id: int, column: str) -> tuple[str, str]:
    """The column's jsonb type and text, read without Python's decoder."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT jsonb_typeof({column}), {column}::text FROM task_runs WHERE result_id = %s",
            [result_id],
        )
        return cursor.fetchone()


def test_a_return_value_too_deep_for_python_is_refused_by_name():
    result = tasks.add.enqueue(1, 2)
    TaskRun.objects.filter(pk=int(result.id)).update(status="SUCCESSFUL")
    set_json(int(result.id), return_json=DEEP)

    fetched = tasks.add.get_result(result.id)  # was RecursionError: nothing could load it
    assert (fetched.raw_status, fetched.is_finished) == ("SUCCESSFUL", True)
    reason = (
        rf"^the return value of task {result.id} is JSON nested too deeply for Python's "
        r"decoder \(6,000 characters\); read it as text: SELECT return_json::text FROM "
        rf"task_runs WHERE result_id = {result.id}$"
    )
    with pytest.raises(ValueError, match=reason):
        _ = fetched.return_value
    with pytest.raises(ValueError, match=reason):
        _ = fetched.result
    result.refresh()
    with pytest.raises(ValueError, match=reason):
        _ = result.return_value

    run = TaskRun.objects.get(pk=int(result.id))
    assert isinstance(run.return_json, UndecodableJSON) and run.return_json == DEEP


def test_decodable_values_read_as_before():
    result = tasks.add.enqueue(1, 2)
    TaskRun.objects.filter(pk=int(result.id)).update(status="SUCCESSFUL")
    shallow = "[" * 100 + "]" * 100
    set_json(int(result.id), return_json=shallow)
    fetched = tasks.add.get_result(result.id)
    value = fetched.return_value
    for _ in range(99):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []
    assert not isinstance(TaskRun.objects.get(pk=int(result.id)).return_json, UndecodableJSON)


# 1,200: Python decodes it, but Django's normalize_json (TaskResult's __post_init__) recurses
# too deeply; 3,000: past the decoder too.
@pytest.mark.parametrize("depth", [1200, DEPTH])
def test_a_spec_too_deep_for_python_loads_with_no_arguments(depth):
    result = tasks.add.enqueue(1, 2)
    set_json(int(result.id), spec_json=deep_spec(depth))
    fetched = tasks.add.get_result(result.id)
    assert (fetched.raw_status, fetched.args, fetched.kwargs) == ("READY", [], {})
    assert fetched.task == tasks.add  # found by the row's task_path


def test_a_save_writes_undecodable_values_back_unchanged():
    result = tasks.add.enqueue(1, 2)
    row = int(result.id)
    set_json(row, spec_json=deep_spec(DEPTH), return_json=DEEP, metadata_json=DEEP)
    before = {column: stored(row, column) for column in ("spec_json", "return_json")}

    run = TaskRun.objects.get(pk=row)
    run.priority = 5
    run.save()  # every column, the undecodable ones included

    assert stored(row, "spec_json") == before["spec_json"]
    assert stored(row, "return_json") == before["return_json"] == ("array", DEEP)
    assert stored(row, "metadata_json") == ("array", DEEP)  # not a JSON string of its text
    assert TaskRun.objects.get(pk=row).priority == 5


def test_reclaim_fails_a_row_whose_spec_is_too_deep_and_keeps_the_spec():
    result = tasks.add.enqueue(1, 2)
    row = int(result.id)
    expire(row)
    set_json(row, spec_json=deep_spec(DEPTH))
    before = stored(row, "spec_json")

    out, _ = manage("reclaim", "--action", "fail")  # loads each row and saves it

    assert out.strip() == "Reclaimed 1 task(s) (fail)."
    run = TaskRun.objects.get(pk=row)
    assert run.status == "FAILED" and run.errors_json[-1]["kind"] == "reclaim"
    assert stored(row, "spec_json") == before and before[0] == "object"


# What the worker's SQL (errors_json || jsonb_build_array(entry)) keeps of a history: each
# kept as the first element where it is not an array, an array's elements kept as they are.
@pytest.mark.parametrize(
    ("history", "kept"),
    [
        (DEEP, "[" * (DEPTH - 1) + "]" * (DEPTH - 1)),  # too deep for Python: spliced as text
        ('[{"kind": "app_error"}]', '{"kind": "app_error"}'),
        ('{"odd": 1}', '{"odd": 1}'),  # was ["odd", {reclaim}]: the object's keys
        ('"text"', '"text"'),  # was ["t", "e", "x", "t", {reclaim}]
    ],
)
def test_reclaim_adds_its_error_to_any_history_as_the_worker_would(history, kept):
    result = tasks.add.enqueue(1, 2)
    row = int(result.id)
    expire(row)
    set_json(row, errors_json=history)

    manage("reclaim", "--action", "fail")

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT jsonb_array_length(errors_json), (errors_json -> 0)::text,"
            " errors_json -> -1 ->> 'kind' FROM task_runs WHERE result_id = %s",
            [row],
        )
        assert cursor.fetchone() == (2, kept, "reclaim")


def test_admin_shows_the_start_of_a_value_too_deep_to_pretty_print(staff):
    result = tasks.add.enqueue(1, 2)
    TaskRun.objects.filter(pk=int(result.id)).update(status="SUCCESSFUL")
    set_json(int(result.id), return_json=DEEP)

    response = staff.get(reverse("admin:reproq_django_taskrun_change", args=[int(result.id)]))

    assert response.status_code == 200
    html = response.content.decode()
    assert (
        "<p>Nested too deeply for Python's JSON decoder to show (6,000 characters); "
        "it begins:</p><pre>" + "[" * 200 + "…</pre>"
    ) in html


def test_admin_replay_copies_a_spec_too_deep_for_python(staff):
    result = tasks.add.enqueue(1, 2)
    row = int(result.id)
    TaskRun.objects.filter(pk=row).update(status="FAILED")
    set_json(row, spec_json=deep_spec(DEPTH))

    test_admin.action(staff, "taskrun", "replay_tasks", [row])

    (copy,) = TaskRun.objects.exclude(pk=row).values_list("result_id", flat=True)
    assert stored(copy, "spec_json") == stored(row, "spec_json")
    assert TaskRun.objects.get(pk=copy).task_path == "tests.django.sampleapp.tasks.add"


def deep_periodic_task() -> PeriodicTask:
    PeriodicTask.objects.create(
        name="deep", cron_expr="* * * * *", task_path="x.y", next_run_at=timezone.now()
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE periodic_tasks SET payload_json = %s::jsonb WHERE name = 'deep'", [DEEP]
        )
    return PeriodicTask.objects.get(name="deep")


def payload() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT jsonb_typeof(payload_json), payload_json::text FROM periodic_tasks"
            " WHERE name = 'deep'"
        )
        return cursor.fetchone()


def test_a_form_shows_and_saves_a_value_too_deep_for_python_as_its_text(staff):
    # Shown as a JSON string of its text, a save stored it as that string.
    task = deep_periodic_task()
    page = staff.get(reverse("admin:reproq_django_periodictask_change", args=["deep"]))
    assert page.status_code == 200
    assert page.context["adminform"].form["payload_json"].value() == DEEP

    form_class = modelform_factory(PeriodicTask, fields=["payload_json", "cron_expr"])
    shown = form_class(instance=task)
    data = {name: shown[name].value() for name in ("payload_json", "cron_expr")}
    assert data["payload_json"] == DEEP
    # A field whose default is callable (dict) sends its initial value in a hidden input.
    assert shown["payload_json"].field.show_hidden_initial
    data["initial-payload_json"] = data["payload_json"]
    unchanged = form_class(data, instance=task)
    assert unchanged.is_valid(), unchanged.errors
    assert not unchanged.has_changed()
    unchanged.save()
    assert payload() == ("array", DEEP)

    other = "[" * 2500 + "1" + "]" * 2500
    edited = form_class({**data, "payload_json": other}, instance=task)
    assert edited.is_valid(), edited.errors
    assert edited.has_changed()
    edited.save()
    assert payload() == ("array", other)

    broken = form_class({**data, "payload_json": DEEP + "]"}, instance=task)
    assert not broken.is_valid()  # was RecursionError: a 500 from the admin
    assert broken.errors["payload_json"] == ["Enter a valid JSON."]
    assert broken["payload_json"].value() == DEEP + "]"  # shown again as typed
    assert payload() == ("array", other)
