"""Tasks whose runs record what Django's task_started and task_finished delivered.

The receivers are connected when the executor imports this module to run one of its tasks.
Each appends one JSON line to the file named by the task's ``record`` keyword argument.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.dispatch import receiver
from django.tasks import task
from django.tasks.signals import task_finished, task_started


def _record(signal_name: str, sender: Any, task_result: Any, *, full: bool) -> None:
    if not task_result.task.module_path.startswith(__name__ + "."):
        return
    seen: dict[str, Any] = {
        "signal": signal_name,
        "sender": f"{sender.__module__}.{sender.__qualname__}",
        "id": task_result.id,
        "module_path": task_result.task.module_path,
        "status": str(task_result.status),
        "args": task_result.args,
        "handling": sys.exc_info()[0].__name__ if sys.exc_info()[0] else None,
    }
    if full:  # the row's columns: read the first time one is asked for
        seen["enqueued_at"] = _iso(task_result.enqueued_at)
        seen["started_at"] = _iso(task_result.started_at)
        seen["finished"] = task_result.finished_at is not None
        seen["backend"] = task_result.backend
        seen["errors"] = [error.exception_class_path for error in task_result.errors]
        if str(task_result.status) == "SUCCESSFUL":
            seen["return"] = task_result.return_value
    with open(task_result.kwargs["record"], "a", encoding="utf-8") as out:
        out.write(json.dumps(seen) + "\n")
    print(f"{signal_name} seen")  # must not reach the executor's envelope on stdout


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


@receiver(task_started)
def on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    _record("task_started", sender, task_result, full=task_result.kwargs.get("full", True))


@receiver(task_finished)
def on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    _record("task_finished", sender, task_result, full=task_result.kwargs.get("full", True))


@task()
def doubled(value: int, *, record: str, full: bool = True) -> int:
    return value * 2


@task()
def refused(value: int, *, record: str, full: bool = True) -> None:
    raise LookupError(f"no {value}")
