"""Chains, groups and chords (reproq-django.md §3).

A chain runs its tasks one after another (each waits for its parent's success); a group
runs them in parallel; a chord runs a group, then a callback once every member succeeded.
The worker releases waiting rows; a failure fails what waited on it (kinds ``parent_failed``
and ``workflow_failed``) instead of leaving it waiting, and so does a row cancelled in the
admin or failed by ``manage.py reproq reclaim`` (``fail_dependents``).

Each row's spec carries its workflow id and position, so spec hashes stay deterministic and
distinct: two identical chains never deduplicate into each other. Every ``enqueue()`` is a
run of its own: enqueueing the same object again starts a second run under a fresh id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connections, transaction
from django.db.models import QuerySet
from django.tasks import Task, task_backends
from django.utils import timezone

from reproq_cli.db.queries import query
from reproq_django.backend import ReproqBackend
from reproq_django.db import format_result_id, resolve_queue_db
from reproq_django.models import TaskRun, TaskRunStatus, WorkflowRun
from reproq_django.proxy import TaskResultProxy
from reproq_django.serialization import normalize_and_hash

Item = Task | tuple[Task, Sequence[Any], dict[str, Any]] | tuple[Task, Sequence[Any]]
Split = tuple[Task, list[Any], dict[str, Any]]
ITEM_FORM = "a Task or a (task, args[, kwargs]) tuple"


def _show(value: Any) -> str:
    """A short one-line form of an item: a Task by its path, not its dataclass repr."""
    if isinstance(value, Task):
        text = f"<task {value.module_path}>"
    elif isinstance(value, tuple | list):
        inner = ", ".join(_show(element) for element in value)
        text = f"[{inner}]" if isinstance(value, list) else f"({inner}{',' * (len(value) == 1)})"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _split(item: Any, where: str) -> Split:
    """(task, args, kwargs) of one item; a one-line TypeError/ValueError naming ``where``
    for anything else, rather than reading it some other way (a string as its letters)."""
    if isinstance(item, Task):
        task: Any = item
        args: Any = ()
        kwargs: Any = {}
    elif isinstance(item, tuple):
        if len(item) not in (2, 3):
            raise ValueError(
                f"{where}: expected {ITEM_FORM}, got a tuple of {len(item)}: {_show(item)}"
            )
        task, args = item[0], item[1]
        kwargs = item[2] if len(item) == 3 else {}
        if not isinstance(task, Task):
            raise TypeError(
                f"{where}: the first element must be a Task (a function decorated with "
                f"@task), got {type(task).__name__} {_show(task)}"
            )
        if not isinstance(args, list | tuple):
            raise TypeError(
                f"{where}: args must be a list or tuple, got {type(args).__name__} "
                f"{_show(args)}; wrap a single argument: ({task.name}, [{_show(args)}])"
            )
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise TypeError(
                f"{where}: kwargs must be a dict of argument names to values, got "
                f"{type(kwargs).__name__} {_show(kwargs)}"
            )
    else:
        hint = ""
        if isinstance(item, list):
            hint = "; pass the items as separate arguments"
        elif callable(item):
            hint = "; decorate the function with @task"
        raise TypeError(
            f"{where}: expected {ITEM_FORM}, got {type(item).__name__} {_show(item)}{hint}"
        )
    backend = task_backends[task.backend]
    if not isinstance(backend, ReproqBackend):
        raise TypeError(
            f"{where}: {task.module_path} uses task backend {task.backend!r} "
            f"({type(backend).__name__}); workflows need a ReproqBackend: "
            "use task.using(backend=<a ReproqBackend alias>)"
        )
    return task, list(args), dict(kwargs)


class _Workflow:
    def __init__(self, *items: Item) -> None:
        kind = type(self).__name__.lower()
        self.items = [_split(item, f"{kind} item {i}") for i, item in enumerate(items)]
        self.workflow_id = uuid.uuid4()
        self._enqueued = False
        self._lock = threading.Lock()

    def _run_id(self) -> uuid.UUID:
        """The workflow id of this enqueue: the one made at construction the first time, a
        fresh one after (its rows' hashes would collide with the first run's, and sharing the
        id would mix the two runs' counters)."""
        with self._lock:
            if self._enqueued:
                self.workflow_id = uuid.uuid4()
            self._enqueued = True
            return self.workflow_id

    @staticmethod
    def _rows(
        items: list[Split], workflow_id: uuid.UUID, offset: int = 0
    ) -> list[tuple[TaskRun, str]]:
        rows: list[tuple[TaskRun, str]] = []
        for index, (task, args, kwargs) in enumerate(items, start=offset):
            backend = task_backends[task.backend]
            spec, fields = backend.build_spec(task, args, kwargs)
            spec["workflow"] = {"id": str(workflow_id), "index": index}
            normalized, digest = normalize_and_hash(spec)
            alias = resolve_queue_db(fields["queue_name"])
            fields.pop("expires_at", None)
            run = TaskRun(
                spec_json=normalized,
                spec_hash=digest,
                status=TaskRunStatus.READY,
                workflow_id=workflow_id,
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
        rows = self._rows(self.items, self._run_id())
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
        rows = self._rows(self.items, self._run_id())
        alias = self._alias(rows)
        with transaction.atomic(using=alias):
            for run, _ in rows:
                run.save(using=alias, force_insert=True)
        return [_proxy(run, alias) for run, _ in rows]


class Chord(_Workflow):
    def __init__(self, *items: Item, callback: Item) -> None:
        super().__init__(*items)
        self.callback = _split(callback, "chord callback")

    def enqueue(self) -> tuple[list[TaskResultProxy], TaskResultProxy]:
        workflow_id = self._run_id()
        rows = self._rows(self.items, workflow_id)
        (callback_row,) = self._rows([self.callback], workflow_id, offset=len(self.items))
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
                workflow_id=workflow_id,
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


def cancel_queued(runs: QuerySet[TaskRun]) -> int:
    """Cancel the READY and WAITING rows among ``runs`` and fail what waits on them (the
    admin's cancel and ``manage.py reproq cancel``); returns how many were cancelled.

    The rows are locked first, so a worker cannot claim or release one between reading and
    cancelling it: the rows read are exactly the rows cancelled."""
    queued = (TaskRunStatus.READY, TaskRunStatus.WAITING)
    with transaction.atomic(using=runs.db):
        ended = list(
            runs.filter(status__in=queued)
            .select_for_update()
            .values_list("result_id", "workflow_id")
        )
        now = timezone.now()
        cancelled = (
            TaskRun.objects.using(runs.db)
            .filter(result_id__in=[result_id for result_id, _ in ended], status__in=queued)
            .update(status=TaskRunStatus.CANCELLED, finished_at=now, updated_at=now)
        )
        # What waited on them never runs: the worker's consequences of a terminal failure
        # (a cancel of a running task is one too).
        fail_dependents(runs.db, ended)
    return cancelled


def fail_dependents(alias: str, ended: Iterable[tuple[int, uuid.UUID | None]]) -> None:
    """What the worker does after a terminal failure, for rows (result_id, workflow_id) that
    ended outside it (the admin's cancel, ``manage.py reproq reclaim --action fail``): their
    workflow and chord callback fail (``workflow_failed``), and WAITING chain descendants
    fail (``parent_failed``) — with the worker's own statements, in the caller's
    transaction. Only on PostgreSQL: elsewhere no worker runs anything that could wait."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    roots: list[int] = []
    with connection.cursor() as cursor:
        for result_id, workflow_id in ended:
            roots.append(result_id)
            if workflow_id is not None:
                cursor.execute(
                    query("workflow_member_failed"),
                    {"workflow_id": workflow_id, "result_id": result_id},
                )
                roots.extend(row[0] for row in cursor.fetchall())
        if roots:
            cursor.execute(query("fail_chain_descendants"), {"roots": roots})
