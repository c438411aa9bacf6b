"""The worker's rules as pure functions: allow-list, retry backoff, error objects, task paths."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from reproq_cli.defaults import DEFAULT_ALLOWED_TASK_MODULES
from reproq_cli.gojson import GoSyntaxError, go_kind, top_level
from reproq_cli.models import ClaimedTask, Failure

INFRA_RETRY_DELAY = 10.0
MAX_BACKOFF = 3600.0


def is_allowed(task_path: str, allowed: list[str]) -> bool:
    """Plain prefix match against the allow-list; ``*`` allows everything.

    An empty list means the Go worker's default, ``myapp.tasks.`` and ``tasks.``.
    """
    prefixes = allowed or list(DEFAULT_ALLOWED_TASK_MODULES)
    return any(prefix == "*" or task_path.startswith(prefix) for prefix in prefixes)


def backoff_seconds(attempts: int) -> float:
    """min(30 * 2^(attempts-1), 3600): 30, 60, 120, ... capped at an hour."""
    exponent = max(attempts, 1) - 1
    if exponent >= 7:  # 30 * 2^7 = 3840 > 3600; also avoids huge powers
        return MAX_BACKOFF
    return min(30.0 * (2**exponent), MAX_BACKOFF)


def timestamp() -> str:
    """Error-object time: RFC 3339, UTC, trailing zeros of the fraction trimmed (Go style)."""
    now = dt.datetime.now(dt.UTC)
    text = now.strftime("%Y-%m-%dT%H:%M:%S")
    if now.microsecond:
        text += f".{now.microsecond:06d}".rstrip("0")
    return text + "Z"


def resolve_task_path(task: ClaimedTask) -> tuple[str | None, str | None]:
    """(task_path, None), or (None, reason) when the spec cannot say what to run.

    The allow-list is checked against this path, but the executor runs the spec's own
    task_path: a row whose column names an allowed task and whose spec names another is
    refused, or it would run code the allow-list never saw (the Go worker checked the
    column alone)."""
    text = task.spec_text or ""
    spec: Any = None
    problem = None
    if not text.strip():
        problem = "spec_json is empty"
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"spec_json is not valid JSON: {exc}"
        except RecursionError:
            spec, problem = _deep_spec(text)
    if task.task_path:
        path = spec.get("task_path") if isinstance(spec, dict) else None
        if path and path != task.task_path:
            return None, (
                f"task_path column {task.task_path!r} does not match spec_json task_path {path!r}"
            )
        return task.task_path, None
    if problem is not None:
        return None, problem
    return _spec_task_path(spec)


def _deep_spec(text: str) -> tuple[Any, str | None]:
    """(the spec, a problem) for a spec nested past Python's decoder (~1,500 levels), which
    Go's and jsonb take up to 10,000: its top level, each array or object in it empty."""
    try:
        return top_level(text), None
    except GoSyntaxError as exc:
        return None, f"spec_json is not valid JSON: {exc}"


def _spec_task_path(spec: Any) -> tuple[str | None, str | None]:
    """The spec's task_path as Go's json.Unmarshal into ``runner.taskSpec`` reads it: keys
    match case-insensitively and the last one wins, null is no value, and a value of the
    wrong type is Go's error text."""
    if spec is not None and not isinstance(spec, dict):
        return (
            None,
            f"json: cannot unmarshal {go_kind(spec)} into Go value of type runner.taskSpec",
        )
    path = ""
    for key, value in (spec or {}).items():
        if key.lower() != "task_path" or value is None:
            continue
        if not isinstance(value, str):
            return None, (
                f"json: cannot unmarshal {go_kind(value)} into Go struct field"
                " taskSpec.task_path of type string"
            )
        path = value
    if not path:
        return None, "spec_json missing task_path"
    return path, None


def _error(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    texts = {key: _storable(value) for key, value in extra.items() if isinstance(value, str)}
    return {"kind": kind, "message": _storable(message), "at": timestamp(), **extra, **texts}


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it in last_error and errors_json: a NUL, which text
    and jsonb refuse, is written out as \\x00, and a lone surrogate (not UTF-8) as U+FFFD.
    Refused, the failure could not be recorded and the row waited for its lease to run out."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def invalid_spec(reason: str) -> Failure:
    return Failure(_error("invalid_spec", reason), retry=False)


def security_violation(task_path: str) -> Failure:
    return Failure(
        _error(
            "security_violation",
            f"security violation: unauthorized task module path: {task_path}",
            task_path=task_path,
        ),
        retry=False,
    )


def cancelled(task_path: str, worker_id: str) -> Failure:
    return Failure(
        _error("cancelled", "Task cancelled by request", task_path=task_path, worker_id=worker_id),
        retry=False,
    )


def _retry_or_fail(task: ClaimedTask, error: dict[str, Any], delay: float) -> Failure:
    retry = task.attempts < task.max_attempts
    return Failure(error, retry=retry, delay_seconds=delay if retry else 0.0)


def infra_error(task: ClaimedTask, message: str, worker_id: str, *, retryable: bool) -> Failure:
    """The attempt never ran properly. Unlike the Go worker this counts against max_attempts."""
    error = _error("infra_error", message, attempt=task.attempts, worker_id=worker_id)
    if not retryable:
        return Failure(error, retry=False)
    return _retry_or_fail(task, error, INFRA_RETRY_DELAY)


def app_error(
    task: ClaimedTask,
    *,
    message: str,
    exception_class: str,
    traceback: str,
    worker_id: str,
) -> Failure:
    error = _error(
        "app_error",
        message,
        exception_class=exception_class,
        traceback=traceback,
        attempt=task.attempts,
        worker_id=worker_id,
    )
    return _retry_or_fail(task, error, backoff_seconds(task.attempts))


def timeout(task: ClaimedTask, limit: float, worker_id: str) -> Failure:
    error = _error(
        "timeout",
        f"task exceeded its time limit of {limit:g}s",
        timeout_seconds=limit,
        attempt=task.attempts,
        worker_id=worker_id,
    )
    return _retry_or_fail(task, error, backoff_seconds(task.attempts))


def worker_shutdown(task: ClaimedTask, worker_id: str, *, started: bool = True) -> Failure:
    """The worker stopped the task to exit, or was told to stop before it started: retry at
    once and give the attempt back."""
    error = _error(
        "worker_shutdown",
        "worker shut down while the task was running"
        if started
        else "worker shut down before the task started",
        attempt=task.attempts,
        worker_id=worker_id,
    )
    return Failure(error, retry=True, delay_seconds=0.0, refund_attempt=True)


def effective_timeout(task: ClaimedTask, exec_timeout: float) -> float:
    """The row's timeout_seconds, capped by the worker's exec_timeout (0 or less: the cap)."""
    if task.timeout_seconds and task.timeout_seconds > 0:
        return min(float(task.timeout_seconds), exec_timeout)
    return exec_timeout


def resource_limit(task: ClaimedTask, which: str, limit: str, worker_id: str) -> Failure:
    """The task went past its --task-memory-limit or --task-cpu-limit. Not retried: with the
    same caps it would most likely fail the same way (raise the cap, then `reproq triage
    retry`)."""
    names = {"memory": "memory limit", "cpu": "CPU time limit"}
    error = _error(
        "resource_limit",
        f"task exceeded its {names.get(which, which)} of {limit}",
        limit=which,
        limit_value=limit,
        attempt=task.attempts,
        worker_id=worker_id,
    )
    return Failure(error, retry=False)
