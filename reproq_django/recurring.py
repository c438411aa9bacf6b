"""Recurring tasks declared in code and synced into ``periodic_tasks`` (reproq-django.md §4).

``@recurring`` works on Django ``Task`` objects (frozen dataclasses) and on plain functions,
stacked either way round with ``@task``: nothing is set on the object, entries live in a
registry. ``reproq beat`` enqueues the rows when they are due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections
from django.utils import timezone

from reproq_cli.core import cron
from reproq_django.concurrency import concurrency_for
from reproq_django.db import resolve_queue_db
from reproq_django.serialization import encode_args_kwargs

T = TypeVar("T")


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


_registry: dict[str, RecurringTask] = {}


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
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue_name: str | None = None,
    priority: int = 0,
    max_attempts: int = 3,
    enabled: bool = True,
) -> Callable[[T], T]:
    """Run the decorated task on a 5-field cron ``schedule``, as periodic task ``key``.

    The schedule is checked by the beat's own parser (the Go worker's dialect), so one the
    beat would refuse at every pass (``@daily``, day of week 7) fails here, at import."""
    _next_run(schedule, timezone.now())

    def decorate(obj: T) -> T:
        concurrency_key, concurrency_limit = concurrency_for(obj)
        _registry[key] = RecurringTask(
            key=key,
            schedule=schedule,
            task_path=_task_path(obj),
            args=list(args or []),
            kwargs=dict(kwargs or {}),
            queue_name=queue_name or getattr(obj, "queue_name", None) or "default",
            priority=priority,
            max_attempts=max_attempts,
            concurrency_key=concurrency_key if isinstance(concurrency_key, str) else None,
            concurrency_limit=concurrency_limit,
            enabled=enabled,
        )
        return obj

    return decorate


def get_recurring_tasks() -> list[RecurringTask]:
    return list(_registry.values())


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
            args, kwargs = encode_args_kwargs(entry.args, entry.kwargs)
            PeriodicTask.objects.using(alias).update_or_create(
                name=entry.key,
                defaults={
                    "cron_expr": entry.schedule,
                    "task_path": entry.task_path,
                    "payload_json": {"args": args, "kwargs": kwargs},
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
