"""Recurring tasks declared in code and synced into ``periodic_tasks`` (reproq-django.md §4).

``@recurring`` works on Django ``Task`` objects (frozen dataclasses) and on plain functions,
stacked either way round with ``@task``: nothing is set on the object, entries live in a
registry. ``reproq beat`` enqueues the rows when they are due.

What depends on the other decorators — the task's queue and its concurrency limit — is read
when the entries are asked for (at sync), from the object the task path names, as enqueue
reads them: at decoration time ``@recurring`` may see only the function under ``@task``, and
a ``@limits_concurrency`` above it has not run yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
from django.utils import timezone
from django.utils.module_loading import import_string

from reproq_cli.core import cron
from reproq_django.concurrency import concurrency_for
from reproq_django.db import resolve_queue_db
from reproq_django.serialization import encode_args_kwargs, normalize_json

T = TypeVar("T")

CRON_FORM = (
    "5 fields, minute hour day-of-month month day-of-week, e.g. '0 3 * * *' "
    "(optionally after 'TZ=Zone ')"
)
STORABLE = "JSON values, Decimal, UUID, dates and times, timedeltas or saved model instances"


@dataclass(frozen=True)
class RecurringTask:
    key: str
    schedule: str
    task_path: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue_name: str = "default"
    priority: int = 0
    max_attempts: int = 3
    concurrency_key: str | None = None
    concurrency_limit: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class _Declaration:
    """What ``@recurring`` was given; ``task``'s queue and concurrency are filled in by
    ``_resolve``."""

    task: RecurringTask
    decorated: Any
    queue_name: str | None


_registry: dict[str, _Declaration] = {}


def _task_path(obj: Any) -> str:
    for attribute in ("module_path", "path", "name"):
        value = getattr(obj, attribute, None)
        if isinstance(value, str) and "." in value:
            return value
    inner = getattr(obj, "task", None)
    if inner is not None and inner is not obj:
        return _task_path(inner)
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and name:
        return f"{module}.{name}"
    raise ValueError(f"cannot tell the task path of {obj!r}")


def recurring(
    *,
    schedule: str,
    key: str,
    args: list[Any] | tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue_name: str | None = None,
    priority: int = 0,
    max_attempts: int = 3,
    enabled: bool = True,
) -> Callable[[T], T]:
    """Run the decorated task on a 5-field cron ``schedule``, as periodic task ``key``.

    These are refused here, at import, in one line naming ``key``, rather than later:
    a schedule the beat would refuse at every pass (``@daily``, day of week 7), arguments
    that are not a list and a dict, values that cannot be stored as JSON (a ``migrate``
    would otherwise fail in its post_migrate sync), and a ``priority`` or ``max_attempts``
    outside what enqueue accepts (the database refused it at sync, or the beat's runs
    carried it)."""
    if not isinstance(key, str) or not key.strip():
        raise TypeError(f"@recurring key must be a non-empty string, got {key!r}")
    _check_schedule(key, schedule)
    _check_limits(key, priority, max_attempts)
    arg_list = _args(key, args)
    kwarg_dict = _kwargs(key, kwargs)
    _payload(key, arg_list, kwarg_dict)
    if queue_name is not None and not isinstance(queue_name, str):
        raise TypeError(
            f"@recurring key {key!r}: queue_name must be a string or None, "
            f"got {type(queue_name).__name__} {queue_name!r}"
        )

    def decorate(obj: T) -> T:
        declared = RecurringTask(
            key=key,
            schedule=schedule,
            task_path=_task_path(obj),
            args=arg_list,
            kwargs=kwarg_dict,
            priority=priority,
            max_attempts=max_attempts,
            enabled=enabled,
        )
        _registry[key] = _Declaration(declared, obj, queue_name)
        return obj

    return decorate


def _check_schedule(key: str, schedule: Any) -> None:
    if not isinstance(schedule, str):
        raise TypeError(
            f"@recurring key {key!r}: schedule must be a cron string of {CRON_FORM}, "
            f"got {type(schedule).__name__} {schedule!r}"
        )
    try:
        _next_run(schedule, timezone.now())
    except cron.CronError as exc:
        # The same class, so callers catching CronError still do; the message gains the key.
        raise cron.CronError(
            f"@recurring key {key!r}: schedule {schedule!r}: {exc}; use {CRON_FORM}"
        ) from None


def _check_limits(key: str, priority: Any, max_attempts: Any) -> None:
    """The ranges enqueue holds these to: Django's ``Task.priority`` range, and the backend's
    MAX_ATTEMPTS option (a positive 32-bit integer, the column's type)."""
    # The backend imports the models; imported here so this module stays importable before
    # the app registry is ready, as it was.
    from reproq_django.backend import INT_MAX

    for name, value, low, high in (
        ("priority", priority, TASK_MIN_PRIORITY, TASK_MAX_PRIORITY),
        ("max_attempts", max_attempts, 1, INT_MAX),
    ):
        # bool is an int subclass: True would have been stored as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"@recurring key {key!r}: {name} must be a whole number from {low} to {high}, "
                f"got {type(value).__name__} {value!r}"
            )
        if not low <= value <= high:
            raise ValueError(
                f"@recurring key {key!r}: {name} {value} is out of range: use {low} to {high}"
            )


def _args(key: str, args: Any) -> list[Any]:
    if args is None:
        return []
    # A string is a sequence too: "ab" would have been run as the arguments "a", "b".
    if not isinstance(args, list | tuple):
        fix = (
            "pass named arguments as kwargs="
            if isinstance(args, Mapping)
            else f"wrap a single argument in a list: args=[{args!r}]"
        )
        raise TypeError(
            f"@recurring key {key!r}: args must be a list or tuple of arguments, "
            f"got {type(args).__name__} {args!r}; {fix}"
        )
    return list(args)


def _kwargs(key: str, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(name, str) for name in kwargs):
        raise TypeError(
            f"@recurring key {key!r}: kwargs must be a dict of argument names to values, "
            f"got {type(kwargs).__name__} {kwargs!r}"
        )
    return dict(kwargs)


def _payload(key: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``{"args", "kwargs"}`` as enqueue stores them: tagged model instances and timedeltas,
    then the canonical JSON text parsed back (a date becomes ``"2025-01-01"``, a Decimal
    ``"1.50"``), so the beat's runs get what an enqueue of the same call would."""
    try:
        encoded_args, encoded_kwargs = encode_args_kwargs(args, kwargs)
        return normalize_json({"args": encoded_args, "kwargs": encoded_kwargs})
    except ValueError as exc:  # NaN, a NUL character, an unsaved model instance
        raise ValueError(f"@recurring key {key!r}: {exc}; pass {STORABLE}") from None
    except TypeError as exc:  # a type JSON has no form for
        raise ValueError(
            f"@recurring key {key!r}: cannot store a task's arguments: {exc}; pass {STORABLE}"
        ) from None


def _task_object(declaration: _Declaration) -> Any:
    """The fully decorated task, as the executor will import it; what ``@recurring``
    decorated when the path does not import (the executor will say why at run time)."""
    try:
        return import_string(declaration.task.task_path)
    except ImportError:
        return declaration.decorated


def _resolve(declaration: _Declaration) -> RecurringTask:
    entry = declaration.task
    task = _task_object(declaration)
    queue = declaration.queue_name or getattr(task, "queue_name", None) or "default"
    concurrency_key, limit = concurrency_for(task)
    if callable(concurrency_key):
        # Enqueue calls it with the call's arguments; a recurring task's are fixed.
        try:
            concurrency_key = concurrency_key(*entry.args, **entry.kwargs)
        except Exception as exc:
            raise ValueError(
                f"@recurring key {entry.key!r}: the concurrency key function of "
                f"{entry.task_path} failed on its args/kwargs: {exc!r}; make it accept them"
            ) from exc
    if isinstance(concurrency_key, str) and not concurrency_key.strip():
        concurrency_key = None
    if concurrency_key is not None and not isinstance(concurrency_key, str):
        raise TypeError(
            f"@recurring key {entry.key!r}: the concurrency key of {entry.task_path} must be "
            f"a string or None, got {type(concurrency_key).__name__} {concurrency_key!r}"
        )
    return dataclasses.replace(
        entry,
        queue_name=queue,
        concurrency_key=concurrency_key,
        concurrency_limit=max(int(limit or 0), 0),
    )


def get_recurring_tasks() -> list[RecurringTask]:
    return [_resolve(declaration) for declaration in _registry.values()]


def _next_run(schedule: str, now: dt.datetime) -> dt.datetime:
    """The first run after ``now``; ValueError (CronError) for a schedule the beat refuses or
    one that never matches (30 February)."""
    following = cron.parse(schedule).next_after(now)
    if following is None:
        raise cron.CronError(f"cron expression {schedule!r} never matches")
    return following


def sync_recurring_tasks(*, using: str | None = None, clear_missing: bool = False) -> int:
    """Upsert every registered recurring task into periodic_tasks; returns how many."""
    from reproq_django.models import PeriodicTask

    entries = get_recurring_tasks()
    if not entries:
        return 0
    aliases = {using} if using else {resolve_queue_db(e.queue_name) for e in entries}
    now = timezone.now()
    count = 0
    for alias in sorted(aliases):
        if "periodic_tasks" not in connections[alias].introspection.table_names():
            continue
        routed = [e for e in entries if using or resolve_queue_db(e.queue_name) == alias]
        for entry in routed:
            PeriodicTask.objects.using(alias).update_or_create(
                name=entry.key,
                defaults={
                    "cron_expr": entry.schedule,
                    "task_path": entry.task_path,
                    "payload_json": _payload(entry.key, entry.args, entry.kwargs),
                    "queue_name": entry.queue_name,
                    "priority": entry.priority,
                    "max_attempts": entry.max_attempts,
                    "concurrency_key": entry.concurrency_key,
                    "concurrency_limit": entry.concurrency_limit,
                    "next_run_at": _next_run(entry.schedule, now),
                    "enabled": entry.enabled,
                    "updated_at": now,
                },
            )
            count += 1
        if clear_missing:
            PeriodicTask.objects.using(alias).exclude(name__in=[e.key for e in routed]).update(
                enabled=False, updated_at=now
            )
    return count


def autodiscover() -> None:
    """Import every installed app's ``tasks`` module so its decorators register."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")


def maybe_sync_recurring_tasks(sender: Any = None, **kwargs: Any) -> None:
    """post_migrate hook: keep periodic_tasks in step with the code."""
    if not getattr(settings, "REPROQ_RECURRING_AUTOSYNC", True):
        return
    autodiscover()
    sync_recurring_tasks(using=kwargs.get("using") or "default")
