"""`@recurring`: arguments stored as enqueue stores them, queue and concurrency limit read from
the fully decorated task whatever the stacking order, and bad arguments refused in one line.

Each test writes a real tasks module (decorators at module level, as in a project) and
imports it; the registries it fills are put back afterwards, so other tests see only the
sample app's recurring task.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import io
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal

from reproq_cli.core.cron import CronError
from reproq_django import concurrency
from reproq_django import recurring as recurring_module
from reproq_django.models import PeriodicTask, TaskRun
from reproq_django.recurring import get_recurring_tasks, recurring, sync_recurring_tasks

HEADER = """
import datetime
import decimal
import uuid

from django.tasks import task

from reproq_django.concurrency import limits_concurrency
from reproq_django.recurring import recurring
"""


@pytest.fixture
def tasks_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., ModuleType]]:
    registry = dict(recurring_module._registry)
    limits = dict(concurrency._LIMITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded: list[str] = []

    def load(name: str, body: str) -> ModuleType:
        (tmp_path / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
    recurring_module._registry.clear()
    recurring_module._registry.update(registry)
    concurrency._LIMITS.clear()
    concurrency._LIMITS.update(limits)


def entry(key: str) -> recurring_module.RecurringTask:
    return next(e for e in get_recurring_tasks() if e.key == key)


def one_line_error(excinfo: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# --- F1: arguments Django's JSON encoder would write as strings ---------------------------------


@pytest.mark.django_db
def test_migrate_and_sync_store_dates_decimals_and_uuids_as_enqueue_does(tasks_module):
    module = tasks_module(
        "rq_fix_invoice",
        """
        CUTOFF = datetime.date(2025, 1, 1)
        AT = datetime.datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
        BATCH = uuid.UUID("12345678-1234-5678-1234-567812345678")


        @recurring(
            schedule="0 3 * * *",
            key="fix-invoice-run",
            args=[datetime.timedelta(minutes=5), AT],
            kwargs={"cutoff": CUTOFF, "fee": decimal.Decimal("1.50"), "batch": BATCH},
        )
        @task()
        def invoice_run(delay, at, cutoff, fee, batch):
            return None
        """,
    )
    PeriodicTask.objects.all().delete()
    # What `manage.py migrate` runs after every migration (it raised TypeError here).
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    row = PeriodicTask.objects.get(name="fix-invoice-run")

    # The same call enqueued by hand: the beat's runs must get what it gets.
    result = module.invoice_run.enqueue(
        dt.timedelta(minutes=5),
        module.AT,
        cutoff=module.CUTOFF,
        fee=decimal.Decimal("1.50"),
        batch=module.BATCH,
    )
    run = TaskRun.objects.get(result_id=int(result.id))
    assert row.payload_json == {"args": run.spec_json["args"], "kwargs": run.spec_json["kwargs"]}
    assert row.payload_json["kwargs"] == {
        "cutoff": "2025-01-01",
        "fee": "1.50",
        "batch": "12345678-1234-5678-1234-567812345678",
    }
    assert row.payload_json["args"][1] == "2025-01-01T12:00:00.123Z"
    assert row.payload_json["args"][0]["__reproq_type__"] == "timedelta"

    out = io.StringIO()
    call_command("reproq", "sync-recurring", stdout=out)
    assert out.getvalue().startswith("Synced ")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ratio": float("nan")}, "Out of range float values are not JSON compliant"),
        ({"tags": {"a", "b"}}, "Object of type set is not JSON serializable"),
        ({"note": "a\x00b"}, "NUL"),
    ],
)
def test_a_value_that_cannot_be_stored_fails_at_decoration(kwargs, reason):
    with pytest.raises(ValueError) as excinfo:
        recurring(schedule="0 3 * * *", key="fix-unstorable", kwargs=kwargs)
    one_line_error(excinfo, "@recurring key 'fix-unstorable'", reason, "pass JSON values")
    assert "fix-unstorable" not in recurring_module._registry


# --- F4 and F5: stacking order ------------------------------------------------------------------


@pytest.mark.django_db
def test_queue_comes_from_the_task_stacked_either_way(tasks_module):
    tasks_module(
        "rq_fix_queues",
        """
        @recurring(schedule="*/5 * * * *", key="fix-rec-over")
        @task(queue_name="high", priority=7)
        def rec_over(x=1):
            return x


        @task(queue_name="high", priority=7)
        @recurring(schedule="*/5 * * * *", key="fix-rec-under")
        def rec_under(x=1):
            return x


        @task(queue_name="high")
        @recurring(schedule="*/5 * * * *", key="fix-rec-explicit", queue_name="default")
        def rec_explicit(x=1):
            return x
        """,
    )
    assert entry("fix-rec-over").queue_name == "high"
    assert entry("fix-rec-under").queue_name == "high"
    assert entry("fix-rec-explicit").queue_name == "default"  # an explicit queue wins
    sync_recurring_tasks()
    queues = dict(PeriodicTask.objects.values_list("name", "queue_name"))
    assert queues["fix-rec-over"] == queues["fix-rec-under"] == "high"
    assert queues["fix-rec-explicit"] == "default"


@pytest.mark.django_db
def test_concurrency_limit_applies_stacked_either_way_and_a_callable_key_is_called(tasks_module):
    tasks_module(
        "rq_fix_limits",
        """
        @limits_concurrency(key="reports", to=1)
        @recurring(schedule="0 * * * *", key="fix-above")
        @task()
        def report_above():
            return 1


        @recurring(schedule="0 * * * *", key="fix-below")
        @limits_concurrency(key="reports", to=1)
        @task()
        def report_below():
            return 1


        @limits_concurrency(key=lambda account: f"account:{account}", to=2)
        @recurring(schedule="0 * * * *", key="fix-per-account", kwargs={"account": 7})
        @task()
        def per_account(account):
            return account
        """,
    )
    sync_recurring_tasks()
    limits = {
        name: (key, limit)
        for name, key, limit in PeriodicTask.objects.values_list(
            "name", "concurrency_key", "concurrency_limit"
        )
    }
    assert limits["fix-above"] == ("reports", 1)
    assert limits["fix-below"] == ("reports", 1)
    assert limits["fix-per-account"] == ("account:7", 2)


def test_a_failing_concurrency_key_function_names_the_recurring_key(tasks_module):
    tasks_module(
        "rq_fix_bad_key",
        """
        @limits_concurrency(key=lambda account: f"account:{account}", to=2)
        @recurring(schedule="0 * * * *", key="fix-no-account")
        @task()
        def needs_account(account=0):
            return account
        """,
    )
    with pytest.raises(ValueError) as excinfo:
        get_recurring_tasks()
    one_line_error(excinfo, "@recurring key 'fix-no-account'", "concurrency key function")


# --- F11: bad arguments -------------------------------------------------------------------------


def test_schedule_none_is_refused_naming_the_key():
    with pytest.raises(TypeError) as excinfo:
        recurring(schedule=None, key="fix-k0")  # type: ignore[arg-type]
    one_line_error(excinfo, "@recurring key 'fix-k0'", "schedule must be a cron string", "5 fields")


def test_a_malformed_cron_names_the_key_and_the_form():
    with pytest.raises(CronError) as excinfo:
        recurring(schedule="0 3 * *", key="fix-k1")
    one_line_error(
        excinfo,
        "@recurring key 'fix-k1'",
        "schedule '0 3 * *'",
        "expected exactly 5 fields, found 4",
        "e.g. '0 3 * * *'",
    )


@pytest.mark.parametrize(
    ("arguments", "parts"),
    [
        ({"args": "ab"}, ("args must be a list or tuple", "got str 'ab'", "args=['ab']")),
        ({"args": {"a": 1}}, ("args must be a list or tuple", "kwargs=")),
        ({"args": 5}, ("args must be a list or tuple", "args=[5]")),
        ({"kwargs": [1, 2]}, ("kwargs must be a dict",)),
        ({"kwargs": {1: "x"}}, ("kwargs must be a dict",)),
        ({"queue_name": 3}, ("queue_name must be a string",)),
    ],
)
def test_arguments_of_the_wrong_shape_are_refused(arguments, parts):
    with pytest.raises(TypeError) as excinfo:
        recurring(schedule="* * * * *", key="fix-shape", **arguments)
    one_line_error(excinfo, "@recurring key 'fix-shape'", *parts)


@pytest.mark.parametrize("key", [None, "", "  ", 5])
def test_a_missing_key_is_refused(key):
    with pytest.raises(TypeError, match=re.escape(f"got {key!r}")):
        recurring(schedule="* * * * *", key=key)  # type: ignore[arg-type]
