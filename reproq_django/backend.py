"""``ReproqBackend``: Django 6's Tasks API on top of reproq's task_runs table.

Enqueueing builds the task's spec (reproq-django.md §1.4), hashes its canonical JSON with
``reproq_cli.spec`` and inserts a READY row; with ``DEDUP_ACTIVE`` an identical READY or
RUNNING spec is returned instead of inserted twice. The worker (`reproq worker`) runs it.
On PostgreSQL one statement does this for one task or a whole batch (``pg_enqueue``); other
databases go through the ORM.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage
from django.core.checks import Error as CheckError
from django.core.checks import Warning as CheckWarning
from django.db import IntegrityError, connections, transaction
from django.tasks import Task
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued as django_task_enqueued
from django.utils import timezone
from django.utils.connection import ConnectionDoesNotExist

from reproq_django import pg_enqueue, raytask, signals
from reproq_django.db import (
    format_result_id,
    parse_result_id,
    resolve_queue_db,
    should_prefix_result_ids,
)
from reproq_django.models import TaskRun, TaskRunStatus
from reproq_django.proxy import TaskResultProxy
from reproq_django.serialization import (
    canonical_spec,
    encode_args_kwargs,
    normalize_and_hash,
    normalize_json,
)

RESERVED_KWARGS = (
    "run_after",
    "lock_key",
    "priority",
    "concurrency_key",
    "concurrency_limit",
    "ray_options",
)
DEDUP_CHUNK = 1000


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# The largest value of task_runs' integer columns (concurrency_limit, max_attempts, ...).
INT_MAX = 2**31 - 1


class ReproqBackend(BaseTaskBackend):
    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self._configured_queues = list(params.get("QUEUES") or [])

    def validate_task(self, task: Task) -> None:
        """Django's checks, with a timedelta ``run_after`` allowed: Django's own check calls
        ``is_aware()`` on it (an AttributeError), so ``Task.using(run_after=timedelta(...))``,
        the deferral reproq-django documents, failed; enqueue resolves it to now + delta."""
        run_after = task.run_after
        if isinstance(run_after, dt.timedelta):
            super().validate_task(dataclasses.replace(task, run_after=None))
            return
        if run_after is not None and not isinstance(run_after, dt.datetime):
            raise InvalidTask(
                f"run_after must be a datetime or timedelta, not {type(run_after).__name__}"
            )
        super().validate_task(task)

    # --- spec ---------------------------------------------------------------------------------

    def _queue_name(self, task: Task) -> str:
        return task.queue_name or "default"

    def _validate_queue(self, queue: str) -> None:
        if self._configured_queues and queue not in self._configured_queues:
            raise ValueError(
                f"Unknown queue {queue!r} for task backend {self.alias!r}; "
                f"configured: {', '.join(self._configured_queues)}"
            )

    def build_spec(
        self, task: Task, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(spec, row fields) for one enqueue; pops the reserved kwargs from ``kwargs``."""
        kwargs = dict(kwargs)
        run_after = kwargs.pop("run_after", task.run_after)
        lock_key = kwargs.pop("lock_key", getattr(task, "lock_key", None))
        priority = kwargs.pop("priority", task.priority)
        concurrency_key = kwargs.pop("concurrency_key", concurrency_key_of(task))
        concurrency_limit = kwargs.pop("concurrency_limit", concurrency_limit_of(task))
        ray = raytask.options_for(task, kwargs.pop("ray_options", None))
        priority = _priority(priority)
        run_after = _normalize_run_after(run_after)
        if callable(concurrency_key):
            concurrency_key = concurrency_key(*args, **kwargs)
        if isinstance(concurrency_key, str) and not concurrency_key.strip():
            concurrency_key = None
        _text_or_none("lock_key", lock_key)
        _text_or_none("concurrency_key", concurrency_key)
        limit = max(_int(concurrency_limit, 0), 0)
        if limit > INT_MAX:
            # The column is an integer: PostgreSQL would refuse the row and abort the
            # caller's transaction.
            raise InvalidTask(f"concurrency_limit {limit} is out of range: use 0 to {INT_MAX}")
        options = self.options
        timeout_seconds = _int(options.get("TIMEOUT_SECONDS", 900), 900)
        max_attempts = _int(options.get("MAX_ATTEMPTS", 3), 3)
        queue = self._queue_name(task)
        encoded_args, encoded_kwargs = encode_args_kwargs(args, kwargs)
        spec = {
            "v": 1,
            "task_path": task.module_path,
            "args": encoded_args,
            "kwargs": encoded_kwargs,
            "takes_context": bool(task.takes_context),
            "queue_name": queue,
            "priority": priority,
            "lock_key": lock_key,
            "concurrency_key": concurrency_key,
            "concurrency_limit": limit,
            "run_after": run_after.astimezone(dt.UTC).isoformat() if run_after else None,
            "exec": {"timeout_seconds": timeout_seconds, "max_attempts": max_attempts},
            "provenance": {
                "code_ref": options.get("CODE_REF"),
                "pip_lock_hash": options.get("PIP_LOCK_HASH"),
            },
        }
        if ray:
            # Only present when asked for, so every other spec (and its hash) is unchanged.
            spec["ray"] = ray
        if not self._dedup():
            # Each enqueue is its own task: a nonce keeps the hash apart from identical specs,
            # which the partial unique index would otherwise refuse while one is active.
            spec["nonce"] = uuid.uuid4().hex
        expires_in = options.get("EXPIRES_IN")
        fields = {
            "backend_alias": self.alias,
            "queue_name": queue,
            "priority": priority,
            "run_after": run_after,
            "task_path": task.module_path,
            "max_attempts": max_attempts,
            "timeout_seconds": timeout_seconds,
            "lock_key": lock_key,
            "concurrency_key": concurrency_key,
            "concurrency_limit": limit,
            "expires_at": timezone.now() + expires_in if expires_in else None,
        }
        return spec, fields

    # --- enqueue --------------------------------------------------------------------------------

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: dict[str, Any]) -> TaskResultProxy:
        self.validate_task(task)
        self._validate_queue(self._queue_name(task))
        spec, fields = self.build_spec(task, args, kwargs)
        normalized, digest, text = canonical_spec(spec)
        alias = resolve_queue_db(fields["queue_name"])
        if connections[alias].vendor == "postgresql":
            prepare = bool(self.options.get("PREPARE_ENQUEUE", False))
            run = pg_enqueue.insert_task(alias, normalized, digest, fields, text, prepare=prepare)
        else:
            run = self._insert(alias, normalized, digest, fields)
        result = self._result(run, alias, task=task)
        self._announce(result, normalized)
        return result

    def _announce(self, result: TaskResultProxy, spec: dict[str, Any]) -> None:
        # Django's own signal too: receivers a project connected to django.tasks (and
        # Django's enqueue log line) expect it from every backend.
        signals.task_enqueued.send(sender=type(self), task_result=result, spec=spec)
        django_task_enqueued.send(sender=type(self), task_result=result)

    def _dedup(self) -> bool:
        return bool(self.options.get("DEDUP_ACTIVE", True))

    def _active(self, alias: str, digest: str) -> TaskRun | None:
        return (
            TaskRun.objects.using(alias)
            .filter(spec_hash=digest, status__in=TaskRunStatus.ACTIVE)
            .order_by("result_id")
            .first()
        )

    def _insert(
        self, alias: str, spec: dict[str, Any], digest: str, fields: dict[str, Any]
    ) -> TaskRun:
        row = TaskRun(spec_json=spec, spec_hash=digest, status=TaskRunStatus.READY, **fields)
        if not self._dedup():
            row.save(using=alias, force_insert=True)
            return row
        for _ in range(2):
            existing = self._active(alias, digest)
            if existing is not None:
                return existing
            try:
                with transaction.atomic(using=alias):
                    row.save(using=alias, force_insert=True)
                return row
            except IntegrityError:
                # Another process inserted the same active spec between our check and insert
                # (the partial unique index); return theirs.
                row.pk = None
                continue
        existing = self._active(alias, digest)
        if existing is not None:
            return existing
        raise RuntimeError(f"Failed to enqueue or find duplicate for spec_hash {digest}")

    async def aenqueue(
        self, task: Task, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> TaskResultProxy:
        return await sync_to_async(self.enqueue, thread_sensitive=True)(task, args, kwargs)

    def bulk_enqueue(
        self, items: Iterable[tuple[Task, Sequence[Any], dict[str, Any]]]
    ) -> list[TaskResultProxy]:
        """Enqueue many tasks with few round trips; results come back in input order.

        On PostgreSQL that is one statement per database (per 10,000 tasks).
        """
        prepared: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = []
        tasks: list[Task] = []
        queue_dbs: dict[str, str] = {}
        for task, args, kwargs in items:
            tasks.append(task)
            self.validate_task(task)
            self._validate_queue(self._queue_name(task))
            spec, fields = self.build_spec(task, args, dict(kwargs))
            normalized, digest = normalize_and_hash(spec)
            queue = fields["queue_name"]
            if queue not in queue_dbs:
                queue_dbs[queue] = resolve_queue_db(queue)
            prepared.append((queue_dbs[queue], normalized, digest, fields))
        runs: list[TaskRun | None] = [None] * len(prepared)
        by_alias: dict[str, list[int]] = {}
        for index, (alias, *_rest) in enumerate(prepared):
            by_alias.setdefault(alias, []).append(index)
        for alias, indexes in by_alias.items():
            if connections[alias].vendor == "postgresql":
                self._bulk_insert_pg(alias, indexes, prepared, runs)
            else:
                self._bulk_insert(alias, indexes, prepared, runs)
        results = []
        prefix = should_prefix_result_ids()  # one settings lookup, not one per task
        for (alias, spec, _digest, _fields), run, task in zip(prepared, runs, tasks, strict=True):
            assert run is not None
            result = self._result(run, alias, prefix=prefix, task=task)
            self._announce(result, spec)
            results.append(result)
        return results

    def _bulk_insert_pg(
        self,
        alias: str,
        indexes: list[int],
        prepared: list[tuple[str, dict[str, Any], str, dict[str, Any]]],
        runs: list[TaskRun | None],
    ) -> None:
        # Each spec_hash is sent once: with dedup a repeat within the batch gets the first
        # one's row; without, the nonce already makes every hash distinct.
        first_of_hash: dict[str, int] = {}
        for i in indexes:
            first_of_hash.setdefault(prepared[i][2], i)
        unique = list(first_of_hash.values())
        created = pg_enqueue.insert_tasks(alias, [prepared[i][1:] for i in unique])
        for i, run in zip(unique, created, strict=True):
            runs[i] = run
        for i in indexes:
            if runs[i] is None:
                runs[i] = runs[first_of_hash[prepared[i][2]]]

    def _bulk_insert(
        self,
        alias: str,
        indexes: list[int],
        prepared: list[tuple[str, dict[str, Any], str, dict[str, Any]]],
        runs: list[TaskRun | None],
    ) -> None:
        first_of_hash: dict[str, int] = {}
        to_create: list[int] = []
        if self._dedup():
            digests = sorted({prepared[i][2] for i in indexes})
            existing: dict[str, TaskRun] = {}
            for start in range(0, len(digests), DEDUP_CHUNK):
                chunk = digests[start : start + DEDUP_CHUNK]
                for run in TaskRun.objects.using(alias).filter(
                    spec_hash__in=chunk, status__in=TaskRunStatus.ACTIVE
                ):
                    existing.setdefault(run.spec_hash.strip(), run)
            for i in indexes:
                digest = prepared[i][2]
                if digest in existing:
                    runs[i] = existing[digest]
                elif digest in first_of_hash:
                    continue  # a duplicate within the batch: filled in below
                else:
                    first_of_hash[digest] = i
                    to_create.append(i)
        else:
            to_create = list(indexes)
        rows = [
            TaskRun(
                spec_json=prepared[i][1],
                spec_hash=prepared[i][2],
                status=TaskRunStatus.READY,
                **prepared[i][3],
            )
            for i in to_create
        ]
        try:
            with transaction.atomic(using=alias):
                created = TaskRun.objects.using(alias).bulk_create(rows, batch_size=1000)
            for i, run in zip(to_create, created, strict=True):
                runs[i] = run
        except IntegrityError:
            # A concurrent enqueue took one of the hashes: fall back to one by one, which
            # returns the winner's row for that hash.
            for i in to_create:
                runs[i] = self._insert(alias, prepared[i][1], prepared[i][2], prepared[i][3])
        for i in indexes:
            if runs[i] is None:
                runs[i] = runs[first_of_hash[prepared[i][2]]]

    # --- results --------------------------------------------------------------------------------

    def _result(
        self, run: TaskRun, alias: str, prefix: bool | None = None, task: Task | None = None
    ) -> TaskResultProxy:
        return TaskResultProxy.from_row(
            run, alias=alias, result_id=format_result_id(run.result_id, alias, prefix), task=task
        )

    def get_result(self, result_id: int | str) -> TaskResultProxy:
        alias, raw = parse_result_id(result_id)
        return TaskResultProxy.read(alias, raw, str(result_id))

    async def aget_result(self, result_id: int | str) -> TaskResultProxy:
        return await sync_to_async(self.get_result, thread_sensitive=True)(result_id)

    def save_metadata(self, result_id: int | str, metadata: dict[str, Any]) -> int:
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        alias, raw = parse_result_id(result_id)
        return (
            TaskRun.objects.using(alias)
            .filter(result_id=int(raw))
            .update(metadata_json=normalize_json(metadata), updated_at=timezone.now())
        )

    async def asave_metadata(self, result_id: int | str, metadata: dict[str, Any]) -> int:
        return await sync_to_async(self.save_metadata, thread_sensitive=True)(result_id, metadata)

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        messages = self._check_options()
        try:
            aliases = {resolve_queue_db(q) for q in (self._configured_queues or ["default"])}
            vendors = {alias: connections[alias].vendor for alias in aliases}
        except (ValueError, ConnectionDoesNotExist) as exc:
            # A check reports; raising here would stop every management command instead.
            messages.append(
                CheckError(
                    f"task backend {self.alias!r}: the queue routing names no usable "
                    f"database: {exc}",
                    hint="REPROQ_QUEUE_DATABASES maps queue names (or globs) to aliases in "
                    "DATABASES",
                    id="reproq_django.E002",
                )
            )
            return messages
        for alias, vendor in vendors.items():
            if vendor != "postgresql":
                messages.append(
                    CheckWarning(
                        f"database {alias!r} is {vendor}: tasks can be "
                        "enqueued and inspected, but `reproq worker` needs PostgreSQL",
                        id="reproq_django.W001",
                    )
                )
        return messages

    def _check_options(self) -> list[CheckMessage]:
        """OPTIONS of the wrong type: at enqueue they were read as the default, or failed there."""
        options = self.options
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        if not isinstance(options, dict):
            return [
                CheckError(
                    f"{where} must be a dict, not {type(options).__name__}",
                    id="reproq_django.E001",
                )
            ]
        problems = []
        for name in ("TIMEOUT_SECONDS", "MAX_ATTEMPTS"):
            value = options.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_MAX
            ):
                problems.append(f"{name} must be a whole number from 1 to {INT_MAX}, not {value!r}")
        for name, default in (("DEDUP_ACTIVE", True), ("PREPARE_ENQUEUE", False)):
            if not isinstance(options.get(name, default), bool | int):
                # A string is the trap: "false" is true.
                problems.append(f"{name} must be True or False, not {options[name]!r}")
        expires = options.get("EXPIRES_IN")
        if expires is not None and not isinstance(expires, dt.timedelta):
            problems.append(f"EXPIRES_IN must be a datetime.timedelta or None, not {expires!r}")
        return [CheckError(f"{where}: {problem}", id="reproq_django.E001") for problem in problems]


def concurrency_key_of(task: Task) -> Any:
    from reproq_django.concurrency import concurrency_for

    return concurrency_for(task)[0]


def concurrency_limit_of(task: Task) -> Any:
    from reproq_django.concurrency import concurrency_for

    return concurrency_for(task)[1]


def _priority(value: Any) -> int:
    """The enqueue-time ``priority`` kwarg, held to the range Django holds ``Task.priority`` to
    (a value past a 32-bit int failed in the INSERT, inside the caller's transaction)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTask(f"priority must be an int, not {type(value).__name__}")
    if not TASK_MIN_PRIORITY <= value <= TASK_MAX_PRIORITY:
        raise InvalidTask(
            f"priority {value} is out of range: use {TASK_MIN_PRIORITY} to {TASK_MAX_PRIORITY}"
        )
    return value


def _text_or_none(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")


def _normalize_run_after(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return timezone.now() + value
    if isinstance(value, dt.datetime):
        if timezone.is_naive(value):
            raise ValueError("run_after must be timezone-aware")
        return value
    raise TypeError(f"run_after must be a datetime or timedelta, not {type(value).__name__}")
