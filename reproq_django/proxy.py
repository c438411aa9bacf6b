"""Task results: Django's own ``TaskResult`` with reproq's extras (reproq-django.md §1.7).

Unlike reproq-django's proxy, this *is* a ``django.tasks.TaskResult``: ``Task.get_result``,
``return_value``, ``is_finished``, ``refresh`` and ``errors`` (as ``TaskError`` objects) work.
The extras stay: ``raw_status`` (the row's status verbatim), ``result``, ``wait()``,
``metadata``, ``result_id``, ``db_alias`` and ``data`` (the row).

Statuses Django's enum lacks are mapped, never raised: WAITING -> READY (not started),
CANCELLED -> FAILED (finished without a result).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.tasks import Task, TaskResultStatus
from django.tasks.base import TaskError, TaskResult
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone
from django.utils.module_loading import import_string

from reproq_django.models import TaskRun, TaskRunStatus, UndecodableJSON

_STATUS_MAP = {
    TaskRunStatus.READY: TaskResultStatus.READY,
    TaskRunStatus.WAITING: TaskResultStatus.READY,
    TaskRunStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskRunStatus.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    TaskRunStatus.FAILED: TaskResultStatus.FAILED,
    TaskRunStatus.CANCELLED: TaskResultStatus.FAILED,
}
_KIND_EXCEPTIONS = {
    "timeout": "builtins.TimeoutError",
    "cancelled": "builtins.InterruptedError",
    "lease_expiry": "builtins.ConnectionError",
    "worker_shutdown": "builtins.InterruptedError",
    "security_violation": "builtins.PermissionError",
    "invalid_spec": "builtins.ValueError",
}


def map_status(raw: str) -> TaskResultStatus:
    return _STATUS_MAP.get(raw, TaskResultStatus.READY)


def task_error(entry: dict[str, Any]) -> TaskError:
    """An errors_json entry as Django's TaskError."""
    path = entry.get("exception_class")
    if not isinstance(path, str) or not path:
        path = _KIND_EXCEPTIONS.get(str(entry.get("kind")), "builtins.RuntimeError")
    if "." not in path:
        path = f"builtins.{path}"
    traceback = entry.get("traceback") or entry.get("message") or entry.get("kind") or ""
    return TaskError(exception_class_path=path, traceback=str(traceback))


def _list(value: Any) -> list[Any]:
    # Rows are written by other tools too (and by hand): a column of the wrong JSON type
    # reads as empty rather than making the result unreadable.
    return list(value) if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def unknown_task(*args: Any, **kwargs: Any) -> None:
    """Stands in for a task path this process cannot import."""
    raise RuntimeError("this task's code is not importable in this process")


def resolve_task(task_path: Any, backend_alias: str) -> Task:
    try:
        obj = import_string(task_path if isinstance(task_path, str) else "")
    except ImportError:
        obj = None
    if isinstance(obj, Task):
        return obj
    func = getattr(obj, "func", obj) if callable(obj) else unknown_task
    try:
        return Task(func=func, backend=backend_alias)
    except Exception:
        # Task() asks the named backend to validate it: a row's backend alias that this
        # project does not configure, or a QUEUES without "default", must not make an
        # existing result unreadable.
        return _unvalidated_task(func, backend_alias)


def _unvalidated_task(func: Any, backend_alias: str) -> Task:
    task = object.__new__(Task)
    for spec in dataclasses.fields(Task):
        if spec.default is not dataclasses.MISSING:
            object.__setattr__(task, spec.name, spec.default)
    object.__setattr__(task, "func", func)
    object.__setattr__(task, "backend", backend_alias)
    return task


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResultProxy(TaskResult):
    result_id: str
    db_alias: str
    raw_status: str
    metadata: dict[str, Any] = field(default_factory=dict)
    errors_json: list[dict[str, Any]] = field(default_factory=list)
    data: TaskRun | None = None

    @classmethod
    def from_row(
        cls, run: TaskRun, *, alias: str, result_id: str, task: Task | None = None
    ) -> TaskResultProxy:
        """``task``: the row's task when the caller has it (enqueue), else found by path."""
        spec = _dict(run.spec_json)
        errors = _list(run.errors_json)
        if task is None:
            task = resolve_task(run.task_path or spec.get("task_path"), run.backend_alias)
        fields: dict[str, Any] = dict(
            task=task,
            id=result_id,
            status=map_status(run.status),
            enqueued_at=run.enqueued_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            last_attempted_at=run.last_attempted_at,
            args=_list(spec.get("args")),
            kwargs=_dict(spec.get("kwargs")),
            backend=run.backend_alias,
            errors=[task_error(e) for e in errors if isinstance(e, dict)],
            worker_ids=_list(run.worker_ids),
            result_id=str(run.result_id),
            db_alias=alias,
            raw_status=run.status,
            metadata=_dict(run.metadata_json),
            errors_json=errors,
            data=run,
        )
        try:
            proxy = cls(**fields)
        except RecursionError:
            # Arguments nested deeper than Django's normalize_json recurses (it runs in
            # TaskResult's __post_init__) read as none, as those of a spec too deep to decode do.
            proxy = cls(**{**fields, "args": [], "kwargs": {}})
        object.__setattr__(proxy, "_return_value", run.return_json)
        return proxy

    @classmethod
    def read(cls, alias: str, row_id: str, result_id: str) -> TaskResultProxy:
        """The result of row ``row_id`` on database ``alias``, known to its caller as
        ``result_id``; TaskResultDoesNotExist(result_id) when there is no such row."""
        try:
            run = TaskRun.objects.using(alias).get(result_id=int(row_id))
        except (TaskRun.DoesNotExist, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        return cls.from_row(run, alias=alias, result_id=result_id)

    @property
    def attempts(self) -> int:
        return self.data.attempts if self.data is not None else len(self.worker_ids)

    @property
    def return_value(self) -> Any:
        """Django's return_value, with a value Python cannot decode (UndecodableJSON) refused
        by name rather than handed over as a string."""
        return self._readable(TaskResult.return_value.fget(self))

    @property
    def result(self) -> Any:
        """The return value; RuntimeError (with the errors) when not successful."""
        if self.raw_status == TaskRunStatus.SUCCESSFUL:
            return self._readable(self._return_value)
        if self.raw_status in (TaskRunStatus.FAILED, TaskRunStatus.CANCELLED):
            raise RuntimeError(f"task {self.id} {self.raw_status.lower()}: {self.errors_json}")
        raise RuntimeError(f"task {self.id} has not finished (status {self.raw_status})")

    def _readable(self, value: Any) -> Any:
        if isinstance(value, UndecodableJSON):
            raise ValueError(
                f"the return value of task {self.id} is JSON nested too deeply for Python's "
                f"decoder ({len(value):,} characters); read it as text: SELECT "
                f"return_json::text FROM task_runs WHERE result_id = {self.result_id}"
            )
        return value

    def refresh(self) -> None:
        fresh = TaskResultProxy.read(self.db_alias, self.result_id, self.id)
        for name in (
            "status", "enqueued_at", "started_at", "finished_at", "last_attempted_at",
            "errors", "worker_ids", "_return_value", "raw_status", "metadata", "errors_json",
            "data",
        ):  # fmt: skip
            object.__setattr__(self, name, getattr(fresh, name))

    async def arefresh(self) -> None:
        await sync_to_async(self.refresh, thread_sensitive=True)()

    def wait(self, timeout: float | None = None, poll_interval: float = 0.5) -> TaskResultProxy:
        """Poll until the task is SUCCESSFUL, FAILED or CANCELLED; TimeoutError after timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if self.raw_status in TaskRunStatus.TERMINAL:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} still {self.raw_status} after {timeout}s")
            time.sleep(poll_interval)

    async def await_result(
        self, timeout: float | None = None, poll_interval: float = 0.5
    ) -> TaskResultProxy:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            await self.arefresh()
            if self.raw_status in TaskRunStatus.TERMINAL:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} still {self.raw_status} after {timeout}s")
            await asyncio.sleep(poll_interval)


_FIELDS = tuple(spec.name for spec in dataclasses.fields(TaskResultProxy))


class RunningResult(TaskResultProxy):
    """The result the executor hands Django's ``task_started`` and ``task_finished``.

    What the executor knows (the task, id, status, arguments and, once finished, the
    outcome) is set when it is made; the rest of the row is read the first time anything
    asks for it. Django's own receivers log the id, path and status only, so a task run
    costs no query for them. The worker writes the attempt's outcome after the executor
    answers: the row says RUNNING until then, so ``raw_status`` does too, and ``status``,
    ``finished_at``, the return value and this attempt's error come from the executor.
    """

    __slots__ = ("_late_errors", "_return_text")

    @classmethod
    def start(
        cls,
        *,
        task: Task,
        result_id: str,
        row_id: str,
        db_alias: str,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> RunningResult:
        result = object.__new__(cls)
        known: dict[str, Any] = {
            "task": task,
            "id": result_id,
            "status": TaskResultStatus.RUNNING,
            "raw_status": TaskRunStatus.RUNNING,
            "args": args,
            "kwargs": kwargs,
            "result_id": row_id,
            "db_alias": db_alias,
            "_late_errors": (),
            "_return_text": None,
        }
        for name, value in known.items():
            object.__setattr__(result, name, value)
        return result

    def finish(self, *, error: TaskError | None = None, envelope: str | None = None) -> None:
        """The attempt ended: with ``error``, or successfully with the envelope's JSON text
        (its ``return`` is parsed only if asked for)."""
        object.__setattr__(
            self, "status", TaskResultStatus.FAILED if error else TaskResultStatus.SUCCESSFUL
        )
        object.__setattr__(self, "finished_at", timezone.now())
        if error is None:
            object.__setattr__(self, "_return_text", envelope)
            if _has(self, "_return_value"):  # read from the row while it was running
                object.__delattr__(self, "_return_value")
        elif _has(self, "errors"):
            object.__setattr__(self, "errors", [*self.errors, error])
        else:
            object.__setattr__(self, "_late_errors", (*self._late_errors, error))

    def __getattr__(self, name: str) -> Any:
        # Only reached for a slot not set yet: the first such look-up reads the row.
        if name not in _FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name == "_return_value" and self._return_text is not None:
            value = json.loads(self._return_text).get("return")
            object.__setattr__(self, name, value)
            return value
        self._fill()
        return object.__getattribute__(self, name)

    def _fill(self) -> None:
        row: TaskResultProxy | None
        try:
            row = TaskResultProxy.read(self.db_alias, self.result_id, self.id)
        except TaskResultDoesNotExist:
            row = None  # an executor run by hand, without a row
        for name in _FIELDS:
            if _has(self, name):
                continue
            if name == "_return_value" and self._return_text is not None:
                value = self._return_value  # parsed from the envelope, not the row
            elif row is not None:
                value = getattr(row, name)
            else:
                value = _without_row(self, name)
            if name == "errors":
                value = [*value, *self._late_errors]
            object.__setattr__(self, name, value)


def _has(result: RunningResult, name: str) -> bool:
    try:
        object.__getattribute__(result, name)
    except AttributeError:
        return False
    return True


def _without_row(result: RunningResult, name: str) -> Any:
    if name == "backend":
        return result.task.backend
    if name in ("errors", "worker_ids", "errors_json"):
        return []
    if name == "metadata":
        return {}
    return None  # the timestamps, data, the return value
