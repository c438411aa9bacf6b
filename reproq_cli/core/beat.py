"""One scheduling pass: enqueue due periodic tasks (go-worker.md §7).

Each due row is handled in its own savepoint, so one bad schedule or payload fails only
itself and is retried on the next pass. The spec is the Go beat's exact bytes, so hashes (and
dedupe) agree with rows the Go beat already wrote. The next run is the first cron match
strictly after now: missed runs are skipped, not caught up.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from reproq_cli.core.cron import CronError
from reproq_cli.core.cron import parse as parse_cron
from reproq_cli.gojson import GoSyntaxError, raw_top_level
from reproq_cli.spec import go_compact_raw, periodic_spec_hash, periodic_spec_json


class PayloadError(ValueError):
    """A periodic task's payload_json cannot be turned into args and kwargs."""


class PassStopped(Exception):
    """The beat was told to stop during a pass: the pass is rolled back, as the Go beat's
    pass fails on its cancelled context."""


class _Raw(str):
    """A JSON number kept exactly as written (1.10 stays 1.10)."""


def _serialize(value: Any) -> str:
    """Compact JSON of a value parsed with pairs and raw numbers: order and literals kept."""
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, _Object):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_serialize(v)}"
                              for k, v in value.pairs) + "}"  # fmt: skip
    if isinstance(value, list):
        return "[" + ",".join(_serialize(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@dataclass
class _Object:
    pairs: list[tuple[str, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return None

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


def _load(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_Object, parse_float=_Raw, parse_int=_Raw)


def split_payload(text: str | None) -> tuple[str, str]:
    """(args JSON, kwargs JSON), compact, from a payload_json text, as the Go beat reads it."""
    try:
        return _split(text)
    except RecursionError:
        # Python's parser and _serialize recurse; Go's decoder takes up to 10,000 levels.
        return _split_deep(text or "")


def _split(text: str | None) -> tuple[str, str]:
    if text is None or not text.strip():
        return "[]", "{}"
    try:
        payload = _load(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"invalid payload JSON: {exc}") from None
    if isinstance(payload, _Object):
        if payload.has("args") or payload.has("kwargs"):
            args = payload.get("args") if payload.has("args") else []
            kwargs = payload.get("kwargs") if payload.has("kwargs") else _Object()
            if args is not None and not isinstance(args, list):
                raise PayloadError(f"invalid periodic args: {_serialize(args)} is not an array")
            if kwargs is not None and not isinstance(kwargs, _Object):
                raise PayloadError(
                    f"invalid periodic kwargs: {_serialize(kwargs)} is not an object"
                )
            return _serialize(args), _serialize(kwargs)
        return "[]", _serialize(payload)
    if isinstance(payload, list):
        return _serialize(payload), "{}"
    raise PayloadError("invalid payload JSON")


def _split_deep(text: str) -> tuple[str, str]:
    """_split for a payload too deeply nested for Python: its top level read without
    recursing, each part compacted as the spec embeds it (Go's escapes included). Only an
    array or an object nests, so the payload is one of those."""
    try:
        members = raw_top_level(text)
    except GoSyntaxError as exc:  # past Go's own limit (10,000 levels), as Go words it
        raise PayloadError(f"invalid payload JSON: {exc}") from None
    if isinstance(members, str):  # an array
        return go_compact_raw(members), "{}"
    if "args" not in members and "kwargs" not in members:
        return "[]", go_compact_raw(text)
    args = go_compact_raw(members.get("args", "[]"))
    kwargs = go_compact_raw(members.get("kwargs", "{}"))
    if args != "null" and not args.startswith("["):
        raise PayloadError(f"invalid periodic args: {args} is not an array")
    if kwargs != "null" and not kwargs.startswith("{"):
        raise PayloadError(f"invalid periodic kwargs: {kwargs} is not an object")
    return args, kwargs


@dataclass(frozen=True)
class DueTask:
    name: str
    cron_expr: str
    task_path: str
    payload_text: str | None
    queue_name: str
    priority: int
    max_attempts: int
    concurrency_key: str | None
    concurrency_limit: int
    next_run_at: dt.datetime


@dataclass(frozen=True)
class Planned:
    """What one due row turns into: the task_runs insert and the next run time."""

    spec_text: str
    spec_hash: str
    queue_name: str
    max_attempts: int
    next_run_at: dt.datetime


def plan(task: DueTask, now: dt.datetime) -> Planned:
    """The run to enqueue for a due row; raises PayloadError or CronError naming the task."""
    try:
        args_json, kwargs_json = split_payload(task.payload_text)
    except PayloadError as exc:
        raise PayloadError(f"failed to parse periodic payload for {task.name}: {exc}") from None
    max_attempts = task.max_attempts if task.max_attempts > 0 else 3
    queue = task.queue_name or "default"
    spec_text = periodic_spec_json(
        task_path=task.task_path,
        args_json=args_json,
        kwargs_json=kwargs_json,
        queue_name=queue,
        priority=task.priority,
        concurrency_key=task.concurrency_key,
        concurrency_limit=task.concurrency_limit,
        periodic_name=task.name,
        scheduled_at=task.next_run_at,
        max_attempts=max_attempts,
    )
    try:
        schedule = parse_cron(task.cron_expr)
    except CronError as exc:
        raise CronError(f"invalid cron expr for {task.name}: {exc}") from None
    next_run = schedule.next_after(now)
    if next_run is None:
        raise CronError(f"cron expr for {task.name} never matches within 5 years")
    return Planned(spec_text, periodic_spec_hash(spec_text), queue, max_attempts, next_run)


@dataclass
class PassResult:
    enqueued: int = 0
    inserted: int = 0
    errors: list[str] = field(default_factory=list)


def summarize(results: Iterable[str]) -> str:
    errors = list(results)
    return f"failed to enqueue {len(errors)} periodic tasks (last error: {errors[-1]})"


def run_pass(
    session: Any, now: dt.datetime, stopping: Callable[[], bool] = lambda: False
) -> PassResult:
    """Enqueue every due periodic task in one transaction, a savepoint per row. Raises
    PassStopped, with nothing committed, when ``stopping`` says so before the commit (a
    statement held up by a lock returns after the signal)."""
    from reproq_cli.errors import DatabaseError

    result = PassResult()
    with session.pass_transaction() as tx:
        for row in tx.due():
            if stopping():
                raise PassStopped
            task = DueTask(**row)
            try:
                with tx.savepoint():
                    planned = plan(task, now)
                    inserted = tx.enqueue(
                        {
                            "queue": planned.queue_name,
                            "priority": task.priority,
                            "run_after": task.next_run_at,
                            "spec": planned.spec_text,
                            "spec_hash": planned.spec_hash,
                            "task_path": task.task_path,
                            "max_attempts": planned.max_attempts,
                            "concurrency_key": task.concurrency_key,
                            "concurrency_limit": task.concurrency_limit,
                        }
                    )
                    tx.advance(task.name, planned.next_run_at)
            except (PayloadError, CronError, DatabaseError) as exc:
                result.errors.append(str(exc))
                continue
            except Exception as exc:  # one row must not stop every other schedule
                result.errors.append(f"periodic task {task.name}: unexpected error: {exc!r}")
                continue
            result.enqueued += 1  # counted even when an active duplicate skipped the insert
            result.inserted += int(inserted)
        if stopping():
            raise PassStopped
    return result
