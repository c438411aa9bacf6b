"""ReproqBackend through Django's Tasks API, on the Django test database (PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import decimal
import re
import subprocess
import sys
import uuid

import pytest
from django.db import connection, transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.utils import timezone

from reproq_cli.spec import canonical_json, spec_hash
from reproq_django import signals
from reproq_django.models import TaskRun
from reproq_django.proxy import TaskResultProxy
from tests.django.sampleapp import tasks
from tests.django.support import sqlite_env

pytestmark = pytest.mark.django_db


def backend():
    return task_backends["default"]


def test_enqueue_inserts_a_ready_row_with_the_canonical_spec():
    result = tasks.add.enqueue(2, 3)
    assert isinstance(result, TaskResultProxy)
    run = TaskRun.objects.get(result_id=int(result.id))
    assert run.status == "READY"
    assert run.task_path == "tests.django.sampleapp.tasks.add"
    assert run.queue_name == "default"
    assert run.max_attempts == 2  # OPTIONS MAX_ATTEMPTS
    assert run.spec_json == {
        "v": 1,
        "task_path": "tests.django.sampleapp.tasks.add",
        "args": [2, 3],
        "kwargs": {},
        "takes_context": False,
        "queue_name": "default",
        "priority": 0,
        "lock_key": None,
        "concurrency_key": None,
        "concurrency_limit": 0,
        "run_after": None,
        "exec": {"timeout_seconds": 900, "max_attempts": 2},
        "provenance": {"code_ref": None, "pip_lock_hash": None},
    }
    assert run.spec_hash.strip() == spec_hash(run.spec_json)
    assert result.status == TaskResultStatus.READY
    assert result.raw_status == "READY"
    assert result.is_finished is False
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value


def test_reserved_kwargs_do_not_reach_the_task():
    when = timezone.now() + dt.timedelta(hours=1)
    result = tasks.add.enqueue(
        1,
        b=2,
        run_after=when,
        lock_key="user:1",
        priority=7,
        concurrency_key="k",
        concurrency_limit=3,
    )
    run = TaskRun.objects.get(result_id=int(result.id))
    assert run.spec_json["kwargs"] == {"b": 2}
    assert run.lock_key == "user:1"
    assert run.priority == 7
    assert (run.concurrency_key, run.concurrency_limit) == ("k", 3)
    assert run.run_after == when
    assert run.spec_json["run_after"] == when.astimezone(dt.UTC).isoformat()


def test_run_after_must_be_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        tasks.add.enqueue(1, 2, run_after=dt.datetime(2030, 1, 1))


def test_dedup_returns_the_active_row_and_sends_the_signal_each_time():
    seen = []
    signals.task_enqueued.connect(lambda **kw: seen.append(kw["task_result"].id), weak=False)
    try:
        first = tasks.add.enqueue(5, 5)
        second = tasks.add.enqueue(5, 5)
    finally:
        signals.task_enqueued.receivers.clear()
    assert first.id == second.id
    assert seen == [first.id, first.id]
    assert TaskRun.objects.count() == 1
    TaskRun.objects.update(status="SUCCESSFUL")
    third = tasks.add.enqueue(5, 5)
    assert third.id != first.id


def test_dedup_off_inserts_every_time():
    b = backend()
    b.options["DEDUP_ACTIVE"] = False
    try:
        ids = {tasks.add.enqueue(1, 1).id for _ in range(3)}
        bulk = b.bulk_enqueue([(tasks.add, (9, 9), {}), (tasks.add, (9, 9), {})])
    finally:
        b.options.pop("DEDUP_ACTIVE")
    assert len(ids) == 3
    assert len({r.id for r in bulk}) == 2  # reproq-django returned the same id twice


def test_bulk_enqueue_dedups_within_the_batch_and_against_the_table():
    existing = tasks.add.enqueue(1, 2)
    results = backend().bulk_enqueue(
        [
            (tasks.add, (1, 2), {}),
            (tasks.add, (3, 4), {}),
            (tasks.add, (3, 4), {}),
            (tasks.shout, ("hi",), {}),
        ]
    )
    assert results[0].id == existing.id
    assert results[1].id == results[2].id
    assert len({r.id for r in results}) == 3
    assert TaskRun.objects.count() == 3
    assert [r.args for r in results] == [[1, 2], [3, 4], [3, 4], ["hi"]]


def test_a_result_holds_the_task_as_it_was_enqueued():
    """As Django's own backends do: a task adjusted with using() stays adjusted in its result
    (get_result, which has only the row, finds the task by its path)."""
    adjusted = tasks.add.using(priority=7)
    result = adjusted.enqueue(1, 2)
    assert result.task == adjusted
    assert result.task.priority == 7
    (bulk,) = backend().bulk_enqueue([(adjusted, (3, 4), {})])
    assert bulk.task == adjusted
    assert tasks.add.get_result(result.id).task == tasks.add


def test_decimal_uuid_datetime_arguments_are_canonicalised():
    token = uuid.uuid4()
    moment = dt.datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    result = tasks.add.enqueue(decimal.Decimal("1.50"), token, when=moment)
    run = TaskRun.objects.get(result_id=int(result.id))
    assert run.spec_json["args"] == ["1.50", str(token)]
    assert run.spec_json["kwargs"] == {"when": "2025-01-01T12:00:00.123Z"}
    assert run.spec_hash.strip() == spec_hash(run.spec_json)
    assert canonical_json(run.spec_json).startswith('{"args":["1.50"')


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"priority": 101}, InvalidTask, "priority 101 is out of range: use -100 to 100"),
        ({"priority": 2**40}, InvalidTask, "priority 1099511627776 is out of range"),
        ({"priority": 1.7}, InvalidTask, "priority must be an int, not float"),
        ({"priority": "abc"}, InvalidTask, "priority must be an int, not str"),
        ({"lock_key": {"a": 1}}, TypeError, "lock_key must be a string or None, not dict"),
        ({"concurrency_key": ["a"]}, TypeError, "concurrency_key must be a string or None"),
        (
            {"concurrency_limit": 2**31},
            InvalidTask,
            "concurrency_limit 2147483648 is out of range: use 0 to 2147483647",
        ),
        ({"x": float("nan")}, ValueError, "cannot store a task's arguments or metadata: Out of"),
        ({"x": "a\x00b"}, ValueError, "cannot store a task's arguments or metadata: a string"),
    ],
)
def test_bad_enqueue_values_are_refused_before_the_database(options, error, message):
    # Refused by PostgreSQL instead, they aborted the caller's transaction.
    with transaction.atomic():
        with pytest.raises(error, match=f"^{re.escape(message)}"):
            tasks.add.enqueue(1, 2, **options)
        with pytest.raises(error, match=f"^{re.escape(message)}"):
            backend().bulk_enqueue([(tasks.add, (3, 4), {}), (tasks.add, (1, 2), options)])
        tasks.add.enqueue(5, 6)  # the transaction is still usable
    assert TaskRun.objects.count() == 1


def test_a_literal_backslash_u0000_is_not_a_nul():
    result = tasks.add.enqueue("\\u0000", "x")
    assert TaskRun.objects.get(result_id=int(result.id)).spec_json["args"] == ["\\u0000", "x"]


def test_unknown_queue_is_rejected():
    from django.tasks.exceptions import InvalidTask

    with pytest.raises(InvalidTask):
        tasks.add.using(queue_name="nope").enqueue(1, 2)


def test_limits_concurrency_works_on_a_real_task():
    result = tasks.per_account.enqueue(42)
    run = TaskRun.objects.get(result_id=int(result.id))
    assert (run.concurrency_key, run.concurrency_limit) == ("account:42", 2)


def test_get_result_works_through_djangos_api():
    result = tasks.add.enqueue(20, 22)
    TaskRun.objects.filter(result_id=int(result.id)).update(
        status="SUCCESSFUL", return_json=42, finished_at=timezone.now(), worker_ids=["w"]
    )
    fetched = tasks.add.get_result(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 42
    assert fetched.result == 42
    assert fetched.is_finished
    result.refresh()
    assert result.return_value == 42
    assert result.worker_ids == ["w"]
    with pytest.raises(TaskResultDoesNotExist):
        backend().get_result(999_999)
    from django.tasks.exceptions import TaskResultMismatch

    with pytest.raises(TaskResultMismatch):
        tasks.shout.get_result(result.id)


def test_failed_result_errors_are_django_task_errors():
    result = tasks.explode.enqueue("x")
    TaskRun.objects.filter(result_id=int(result.id)).update(
        status="FAILED",
        errors_json=[
            {
                "kind": "app_error",
                "exception_class": "builtins.ValueError",
                "traceback": "tb",
                "message": "x",
            },
            {"kind": "timeout", "message": "too slow"},
        ],
    )
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert all(isinstance(e, TaskError) for e in result.errors)
    assert result.errors[0].exception_class is ValueError
    assert result.errors[1].exception_class is TimeoutError
    assert result.errors_json[1]["message"] == "too slow"
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    with pytest.raises(RuntimeError, match="failed"):
        _ = result.result


@pytest.mark.parametrize(
    ("raw", "mapped", "finished"),
    [
        ("WAITING", TaskResultStatus.READY, False),
        ("CANCELLED", TaskResultStatus.FAILED, True),
    ],
)
def test_non_django_statuses_never_raise(raw, mapped, finished):
    result = tasks.add.enqueue(7, 7)
    TaskRun.objects.filter(result_id=int(result.id)).update(status=raw)
    result.refresh()
    assert result.status == mapped
    assert result.raw_status == raw
    assert result.is_finished is finished


def test_wait_times_out_and_returns_on_terminal_status():
    result = tasks.add.enqueue(1, 0)
    with pytest.raises(TimeoutError):
        result.wait(timeout=0.2, poll_interval=0.05)
    TaskRun.objects.filter(result_id=int(result.id)).update(status="CANCELLED")
    assert result.wait(timeout=1, poll_interval=0.05).raw_status == "CANCELLED"


def test_save_metadata():
    result = tasks.add.enqueue(3, 3)
    assert backend().save_metadata(result.id, {"amount": decimal.Decimal("2.5")}) == 1
    result.refresh()
    assert result.metadata == {"amount": "2.5"}
    with pytest.raises(TypeError, match=r"^metadata must be a dict, not list$"):
        backend().save_metadata(result.id, [1, 2])
    result.refresh()
    assert result.metadata == {"amount": "2.5"}


def test_a_row_with_wrong_json_types_still_reads_as_a_result():
    # Rows written by other tools or by hand: the worker fails such a task, and its result
    # must stay readable to show why.
    result = tasks.add.enqueue(4, 4)
    TaskRun.objects.filter(result_id=int(result.id)).update(
        status="FAILED",
        spec_json={"task_path": 5, "args": 5, "kwargs": "abc"},
        task_path="x.y",
        metadata_json=[1, 2],
        worker_ids=5,
        errors_json=[{"exception_class": 5, "kind": "app_error", "message": "boom"}, "junk"],
    )
    fetched = backend().get_result(result.id)
    assert (fetched.args, fetched.kwargs, fetched.metadata, fetched.worker_ids) == ([], {}, {}, [])
    (error,) = fetched.errors
    assert (error.exception_class_path, error.traceback) == ("builtins.RuntimeError", "boom")
    TaskRun.objects.filter(result_id=int(result.id)).update(task_path="")
    assert backend().get_result(result.id).task.name == "unknown_task"


def test_schema_came_from_reproq_sql():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'task_runs' ORDER BY 1")
        indexes = [r[0] for r in cursor.fetchall()]
    assert "idx_task_runs_spec_unique" in indexes
    assert "idx_task_runs_claim_due" in indexes


# --- round trips and races on PostgreSQL ----------------------------------------------------------


def _verbs(captured: list[dict[str, str]]) -> list[str]:
    # A prepared statement is logged as "QUERY = '<sql>' - PARAMS = ...": psycopg keeps no
    # bound text for it, so Django falls back to its generic form.
    return [re.search(r"\b(INSERT|SELECT|SAVEPOINT|RELEASE)\b", q["sql"])[1] for q in captured]


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
        return [row[0].split()[0] for row in cursor.fetchall()]


@pytest.fixture(params=[False, True], ids=["client-bound", "prepared"])
def prepare_enqueue(request):
    """The test runs with the backend's defaults, then with PREPARE_ENQUEUE on; its connection
    counts as one that enqueued before, so the very first INSERT is already prepared."""
    from reproq_django import pg_enqueue

    if request.param:
        backend().options["PREPARE_ENQUEUE"] = True
        connection.ensure_connection()
        pg_enqueue._used_once.add(connection.connection)
    try:
        yield request.param
        if request.param:
            # Proof that the prepared path ran, not Django's own cursor.
            assert "INSERT" in _prepared_statements()
    finally:
        backend().options.pop("PREPARE_ENQUEUE", None)


@pytest.mark.django_db(transaction=True)
def test_prepare_enqueue_prepares_the_insert_from_a_connections_second_enqueue():
    connection.close()  # a connection that has not enqueued yet
    tasks.add.enqueue(30, 1)
    tasks.add.enqueue(30, 2)
    assert _prepared_statements() == []  # off by default: Django's client-side binding
    connection.close()
    backend().options["PREPARE_ENQUEUE"] = True
    try:
        first = tasks.add.enqueue(31, 1)
        assert _prepared_statements() == []  # a one-enqueue connection pays no PREPARE
        second = tasks.add.enqueue(31, 2)
        assert _prepared_statements() == ["INSERT"]
        again = tasks.add.enqueue(31, 2)  # dedup: the active row, read by a prepared SELECT
        assert _prepared_statements() == ["INSERT", "SELECT"]
        with transaction.atomic():
            tasks.add.enqueue(31, 3)
            transaction.set_rollback(True)
        after_rollback = tasks.add.enqueue(31, 4)
    finally:
        backend().options.pop("PREPARE_ENQUEUE")
    assert again.id == second.id
    assert int(after_rollback.id) > int(second.id) > int(first.id)
    # Only reproq's statements were prepared, and the connection keeps Django's setting.
    assert connection.connection.prepare_threshold is None
    assert sorted(
        tuple(run.spec_json["args"]) for run in TaskRun.objects.filter(spec_json__args__0=31)
    ) == [(31, 1), (31, 2), (31, 4)]


@pytest.mark.django_db(transaction=True)
def test_a_lost_prepared_statement_stops_preparing_and_is_named(caplog):
    """What a pooler in transaction mode does to a prepared statement, done by DEALLOCATE."""
    from django.db import ProgrammingError

    from reproq_django import pg_enqueue

    backend().options["PREPARE_ENQUEUE"] = True
    try:
        tasks.add.enqueue(32, 1)
        tasks.add.enqueue(32, 2)
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        with pytest.raises(ProgrammingError) as refused, transaction.atomic():
            tasks.add.enqueue(32, 3)  # in a transaction: it is aborted, so said, not retried
        assert "set PREPARE_ENQUEUE to False" in str(refused.value)
        assert "'default' lost its prepared enqueue statement" in str(refused.value)
        # From then on this process enqueues there without preparing.
        tasks.add.enqueue(32, 4)
        assert _prepared_statements() == []

        pg_enqueue._unpreparable.clear()
        tasks.add.enqueue(32, 5)  # prepared again
        assert _prepared_statements() == ["INSERT"]
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        caplog.clear()
        with caplog.at_level("WARNING", logger="reproq_django"):
            outside = tasks.add.enqueue(32, 6)  # outside a transaction: run again, unprepared
        assert "set PREPARE_ENQUEUE to False" in caplog.text
    finally:
        backend().options.pop("PREPARE_ENQUEUE")
        pg_enqueue._unpreparable.clear()
    assert TaskRun.objects.get(result_id=int(outside.id)).spec_json["args"] == [32, 6]
    assert sorted(
        run.spec_json["args"][1] for run in TaskRun.objects.filter(spec_json__args__0=32)
    ) == [1, 2, 4, 5, 6]


def test_enqueue_is_one_statement_and_a_dedup_hit_two_without_savepoints(prepare_enqueue):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as new:
        first = tasks.add.enqueue(40, 2)
    with CaptureQueriesContext(connection) as hit:
        second = tasks.add.enqueue(40, 2)
    assert second.id == first.id
    # This test runs inside Django's transaction: the ORM path needed a savepoint here.
    assert _verbs(new.captured_queries) == ["INSERT"]
    assert _verbs(hit.captured_queries) == ["INSERT", "SELECT"]
    assert second.data.spec_json == first.data.spec_json  # the row read back, JSON parsed
    assert second.data.worker_ids == [] and second.data.enqueued_at == first.data.enqueued_at


def test_bulk_enqueue_is_one_statement():
    from django.test.utils import CaptureQueriesContext

    tasks.add.enqueue(0, 1)
    with CaptureQueriesContext(connection) as ctx:
        results = backend().bulk_enqueue([(tasks.add, (0, n), {}) for n in range(300)])
    assert len(ctx.captured_queries) == 1
    assert len({r.id for r in results}) == 300
    assert TaskRun.objects.count() == 300  # (0, 1) was already active: deduplicated


@pytest.mark.django_db(transaction=True)
def test_a_failing_enqueue_insert_raises_djangos_error_and_the_connection_recovers(prepare_enqueue):
    import os

    import psycopg
    from django.db import InternalError, OperationalError

    locker = psycopg.connect(os.environ["REPROQ_TEST_DJANGO_DSN"])  # not autocommit
    try:
        locker.execute("LOCK TABLE task_runs IN ACCESS EXCLUSIVE MODE")
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '50ms'")
            with pytest.raises(OperationalError, match="lock timeout"):
                tasks.add.enqueue(1, 1)
            with pytest.raises(InternalError, match="current transaction is aborted"):
                tasks.add.enqueue(1, 2)
    finally:
        locker.close()
    assert int(tasks.add.enqueue(1, 3).id) > 0


def test_returned_rows_match_what_was_stored(prepare_enqueue):
    when = timezone.now() + dt.timedelta(minutes=5)
    backend().options["EXPIRES_IN"] = dt.timedelta(days=1)
    try:
        single = tasks.add.enqueue(8, 9, run_after=when, lock_key="k", priority=3)
        (bulk,) = backend().bulk_enqueue([(tasks.shout, ("x",), {"concurrency_key": "c"})])
    finally:
        backend().options.pop("EXPIRES_IN")
    for result in (single, bulk):
        stored = TaskRun.objects.get(result_id=int(result.id))
        fields = [f.attname for f in TaskRun._meta.concrete_fields]
        assert {f: getattr(result.data, f) for f in fields} == {
            f: getattr(stored, f) for f in fields
        }
        assert result.data._state.adding is False
        assert result.data._state.db == "default"


def _conflicting_enqueue(task, args, finish):
    """Insert the spec ``task(*args)`` would get in another session, hold it uncommitted until
    a session waits on it, then ``finish`` ("commit" or "rollback"). Returns (thread, ids)."""
    import os
    import threading

    import psycopg

    from reproq_django.serialization import normalize_and_hash

    spec, _fields = backend().build_spec(task, args, {})
    normalized, digest = normalize_and_hash(spec)
    ids: list[int] = []
    other = psycopg.connect(os.environ["REPROQ_TEST_DJANGO_DSN"])  # not autocommit
    ids.append(
        other.execute(
            "INSERT INTO task_runs (spec_json, spec_hash, task_path) VALUES (%s, %s, %s) "
            "RETURNING result_id",
            (psycopg.types.json.Jsonb(normalized), digest, task.module_path),
        ).fetchone()[0]
    )
    watcher = psycopg.connect(os.environ["REPROQ_TEST_DJANGO_DSN"], autocommit=True)

    def release():
        from tests.support.harness import wait_for

        try:
            wait_for(
                lambda: watcher.execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
                ).fetchone(),
                what="an enqueue waiting on the uncommitted row",
            )
            other.commit() if finish == "commit" else other.rollback()
        finally:
            other.close()
            watcher.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread, ids


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_enqueue_returns_the_winners_row(prepare_enqueue):
    thread, ids = _conflicting_enqueue(tasks.add, (6, 6), "commit")
    result = tasks.add.enqueue(6, 6)  # waits for the other session, then reads its row
    thread.join()
    assert int(result.id) == ids[0]
    assert TaskRun.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_enqueue_that_rolls_back_leaves_ours(prepare_enqueue):
    thread, ids = _conflicting_enqueue(tasks.add, (7, 7), "rollback")
    result = tasks.add.enqueue(7, 7)
    thread.join()
    assert int(result.id) != ids[0]
    assert list(TaskRun.objects.values_list("result_id", flat=True)) == [int(result.id)]


@pytest.mark.django_db(transaction=True)
def test_bulk_enqueue_racing_a_concurrent_enqueue_returns_its_row():
    thread, ids = _conflicting_enqueue(tasks.add, (5, 5), "commit")
    # The winner commits after this statement's snapshot: the statement neither inserts the
    # spec nor sees the winner's row, and the batch asks again for that one spec.
    results = backend().bulk_enqueue([(tasks.add, (5, 5), {}), (tasks.add, (5, 6), {})])
    thread.join()
    assert int(results[0].id) == ids[0]
    assert results[0].raw_status == "READY"
    assert TaskRun.objects.count() == 2


def test_the_system_check_reports_bad_options_and_routing(settings):
    from reproq_django.backend import ReproqBackend

    def ids_and_text(params):
        messages = ReproqBackend("bad", params).check()
        return [(m.id, m.msg) for m in messages if m.id.startswith("reproq_django.E")]

    assert ids_and_text({"OPTIONS": [1]}) == [
        ("reproq_django.E001", "TASKS['bad']['OPTIONS'] must be a dict, not list")
    ]
    options = {
        "TIMEOUT_SECONDS": "abc",
        "MAX_ATTEMPTS": 2**31,
        "DEDUP_ACTIVE": "false",
        "PREPARE_ENQUEUE": "no",
        "EXPIRES_IN": 60,
    }
    where = "TASKS['bad']['OPTIONS']"
    assert ids_and_text({"OPTIONS": options}) == [
        ("reproq_django.E001", f"{where}: TIMEOUT_SECONDS must be a whole number from 1 to 2147483647, not 'abc'"),
        ("reproq_django.E001", f"{where}: MAX_ATTEMPTS must be a whole number from 1 to 2147483647, not 2147483648"),
        ("reproq_django.E001", f"{where}: DEDUP_ACTIVE must be True or False, not 'false'"),
        ("reproq_django.E001", f"{where}: PREPARE_ENQUEUE must be True or False, not 'no'"),
        ("reproq_django.E001", f"{where}: EXPIRES_IN must be a datetime.timedelta or None, not 60"),
    ]  # fmt: skip
    assert ids_and_text({"OPTIONS": {"MAX_ATTEMPTS": 0}}) == [
        ("reproq_django.E001", f"{where}: MAX_ATTEMPTS must be a whole number from 1 to 2147483647, not 0"),
    ]  # fmt: skip
    good = {"TIMEOUT_SECONDS": 2**31 - 1, "MAX_ATTEMPTS": 1, "EXPIRES_IN": dt.timedelta(days=1)}
    assert ids_and_text({"OPTIONS": good}) == []
    settings.REPROQ_QUEUE_DATABASES = {"high": "nosuchdb"}
    (routing,) = ids_and_text({"QUEUES": ["default", "high"]})
    assert routing[0] == "reproq_django.E002"
    assert "the queue routing names no usable database" in routing[1]
    assert "nosuchdb" in routing[1]


def test_manage_py_check_runs_the_backends_check(tmp_path):
    # Nothing in `manage.py check` imports django.tasks, whose import registers the check.
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        env=sqlite_env(),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert "reproq_django.W001" in result.stderr + result.stdout
