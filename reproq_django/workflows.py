"""Chains, groups and chords (reproq-django.md §3).

A chain runs its tasks one after another (each waits for its parent's success); a group
runs them in parallel; a chord runs a group, then a callback once every member succeeded.
The worker releases waiting rows; a failure fails what waited on it (kinds ``parent_failed``
and ``workflow_failed``) instead of leaving it waiting.

Each row's spec carries its workflow id and position, so spec hashes stay deterministic and
distinct: two identical chains never deduplicate into each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.tasks import Task, task_backends
from django.utils import timezone

from reproq_django.db import format_result_id, resolve_queue_db
from reproq_django.models import TaskRun, TaskRunStatus, WorkflowRun
from reproq_django.proxy import TaskResultProxy
from reproq_django.serialization import normalize_and_hash

Item = Task | tuple[Task, Sequence[Any], dict[str, Any]] | tuple[Task, Sequence[Any]]


def _split(item: Item) -> tuple[Task, Sequence[Any], dict[str, Any]]:
    if isinstance(item, Task):
        return item, (), {}
    if len(item) == 2:
        return item[0], item[1], {}  # type: ignore[misc]
    return item[0], item[1], dict(item[2])  # type: ignore[misc]


class _Workflow:
    def __init__(self, *items: Item) -> None:
        self.items = [_split(item) for item in items]
        self.workflow_id = uuid.uuid4()

    def _rows(
        self, items: list[tuple[Task, Sequence[Any], dict[str, Any]]], offset: int = 0
    ) -> list[tuple[TaskRun, str]]:
        rows: list[tuple[TaskRun, str]] = []
        for index, (task, args, kwargs) in enumerate(items, start=offset):
            backend = task_backends[task.backend]
            spec, fields = backend.build_spec(task, args, kwargs)
            spec["workflow"] = {"id": str(self.workflow_id), "index": index}
            normalized, digest = normalize_and_hash(spec)
            alias = resolve_queue_db(fields["queue_name"])
            fields.pop("expires_at", None)
            run = TaskRun(
                spec_json=normalized,
                spec_hash=digest,
                status=TaskRunStatus.READY,
                workflow_id=self.workflow_id,
                **fields,
            )
            rows.append((run, alias))
        return rows

    @staticmethod
    def _alias(rows: list[tuple[TaskRun, str]]) -> str:
        aliases = {alias for _, alias in rows}
        if len(aliases) > 1:
            raise ValueError(
                f"all tasks of a workflow must use one database, got {sorted(aliases)}"
            )
        return aliases.pop() if aliases else resolve_queue_db("default")


def _proxy(run: TaskRun, alias: str) -> TaskResultProxy:
    return TaskResultProxy.from_row(
        run, alias=alias, result_id=format_result_id(run.result_id, alias)
    )


class Chain(_Workflow):
    def enqueue(self) -> list[TaskResultProxy]:
        rows = self._rows(self.items)
        alias = self._alias(rows)
        with transaction.atomic(using=alias):
            previous: TaskRun | None = None
            for run, _ in rows:
                if previous is not None:
                    run.status = TaskRunStatus.WAITING
                    run.parent = previous
                    run.wait_count = 1
                run.save(using=alias, force_insert=True)
                previous = run
        return [_proxy(run, alias) for run, _ in rows]


class Group(_Workflow):
    def enqueue(self) -> list[TaskResultProxy]:
        rows = self._rows(self.items)
        alias = self._alias(rows)
        with transaction.atomic(using=alias):
            for run, _ in rows:
                run.save(using=alias, force_insert=True)
        return [_proxy(run, alias) for run, _ in rows]


class Chord(_Workflow):
    def __init__(self, *items: Item, callback: Item) -> None:
        super().__init__(*items)
        self.callback = _split(callback)

    def enqueue(self) -> tuple[list[TaskResultProxy], TaskResultProxy]:
        rows = self._rows(self.items)
        (callback_row,) = self._rows([self.callback], offset=len(self.items))
        alias = self._alias([*rows, callback_row])
        callback_run = callback_row[0]
        if rows:
            callback_run.status = TaskRunStatus.WAITING
            callback_run.wait_count = len(rows)
        with transaction.atomic(using=alias):
            for run, _ in rows:
                run.save(using=alias, force_insert=True)
            callback_run.save(using=alias, force_insert=True)
            now = timezone.now()
            WorkflowRun.objects.using(alias).create(
                workflow_id=self.workflow_id,
                expected_count=len(rows),
                callback_result_id=callback_run.result_id,
                status="RUNNING" if rows else "WAITING_CALLBACK",
                created_at=now,
                updated_at=now,
            )
        return [_proxy(run, alias) for run, _ in rows], _proxy(callback_run, alias)


def chain(*items: Item) -> Chain:
    return Chain(*items)


def group(*items: Item) -> Group:
    return Group(*items)


def chord(*items: Item, callback: Item) -> Chord:
    return Chord(*items, callback=callback)
