"""Enqueueing on PostgreSQL with as few round trips as dedup allows (sql/queries.sql).

The ORM needs four round trips per deduplicated enqueue (look for an active row, BEGIN or a
savepoint, INSERT, COMMIT or release) and compiles every value of every row for
``bulk_create``. Here:

- one task (``django_enqueue_one``): one INSERT ... ON CONFLICT DO NOTHING RETURNING; only
  when the spec already has an active row, a second statement reads it;
- a batch (``django_enqueue``): one statement inserts every task whose spec has no active
  row and returns the active rows of the others; the rows travel as one JSON document, one
  ``json.dumps`` instead of adapting every value.

ON CONFLICT on the partial unique index means no unique violation, so neither needs a
savepoint inside a caller's transaction. Other databases (SQLite in a project's tests) keep
the ORM path in ``backend.py``.

With the backend's ``PREPARE_ENQUEUE`` option the one-task INSERT runs as a prepared
statement from its second use on a connection, so the server no longer parses and plans its
~1 kB of text (the values bound in as literals) on every enqueue; Django's cursors bind on
the client, which cannot prepare. Off by default: a pooler that hands one session's
statements to another (PgBouncer's transaction mode before 1.21) loses them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import weakref
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Self

import psycopg
from django.db import ProgrammingError, connections, transaction
from django.utils import timezone
from psycopg.abc import Params, Query

from reproq_cli.db.queries import query
from reproq_django.models import TaskRun, TaskRunStatus

logger = logging.getLogger("reproq_django")

# The columns django_enqueue takes from the input; the others get their server defaults.
SENT_COLUMNS = frozenset(
    {
        "backend_alias",
        "queue_name",
        "priority",
        "run_after",
        "spec_json",
        "spec_hash",
        "task_path",
        "status",
        "enqueued_at",
        "max_attempts",
        "timeout_seconds",
        "lock_key",
        "concurrency_key",
        "concurrency_limit",
        "expires_at",
        "created_at",
        "updated_at",
    }
)
# Rows per statement: bounds the size of one statement (about 0.5 kB per row).
CHUNK = 10_000
# A spec whose active row was committed by a concurrent enqueue after our snapshot is asked
# for again; it can only keep failing if that row keeps finishing between attempts.
ATTEMPTS = 3

Item = tuple[dict[str, Any], str, dict[str, Any]]  # (normalized spec, spec_hash, row fields)


def insert_task(
    alias: str,
    spec: dict[str, Any],
    digest: str,
    fields: dict[str, Any],
    text: str,
    *,
    prepare: bool = False,
) -> TaskRun:
    """The saved TaskRun: the new row, or the active row that has this spec_hash.

    ``text`` is the spec's canonical JSON (``canonical_spec``), sent as spec_json;
    ``prepare``: the backend's PREPARE_ENQUEUE."""
    row = _row(spec, digest, fields)
    params = {**row, "spec_json": text}
    connection = connections[alias]
    if not prepare or alias in _unpreparable:
        return _insert_task(alias, connection, row, params, prepare=False)
    try:
        return _insert_task(alias, connection, row, params, prepare=True)
    except ProgrammingError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.InvalidSqlStatementName):
            raise
        # The session lost the statement psycopg prepared in it: a pooler in transaction
        # mode gave us another server connection, or something ran DEALLOCATE. Nothing was
        # written: the INSERT failed, or it inserted nothing and the read after it failed.
        # Preparing stops here for this database; outside a transaction the enqueue simply
        # runs again unprepared.
        _unpreparable.add(alias)
        problem = (
            f"PREPARE_ENQUEUE is on, but the database session of {alias!r} lost its prepared "
            f"enqueue statement ({exc}); a connection pooler in transaction mode (PgBouncer "
            "before 1.21, or max_prepared_statements = 0) or a DEALLOCATE does that. "
            "Enqueues in this process no longer prepare; set PREPARE_ENQUEUE to False for "
            "this task backend, or pool connections by session"
        )
        if not connection.get_autocommit():  # the failure aborted the caller's transaction
            raise ProgrammingError(problem) from exc
        logger.warning(problem)
        return _insert_task(alias, connection, row, params, prepare=False)


def _insert_task(
    alias: str, connection: Any, row: dict[str, Any], params: dict[str, Any], *, prepare: bool
) -> TaskRun:
    digest = row["spec_hash"]
    for _ in range(ATTEMPTS):
        with _preparing_cursor(connection) if prepare else connection.cursor() as cursor:
            cursor.execute(query("django_enqueue_one"), params)
            inserted = cursor.fetchone()
            if inserted is not None:
                return _new_run(alias, row, inserted[0])
            cursor.execute(query("django_active_task"), {"spec_hash": digest})
            active = cursor.fetchone()
            if active is not None:
                names = [column[0] for column in cursor.description]
                return _saved_run(alias, connection, names, active)
        # The active row that blocked the insert finished before we could read it: the
        # spec is free again, so try the insert once more.
    raise RuntimeError(f"Failed to enqueue or find duplicate for spec_hash {digest}")


class _PreparingCursor(psycopg.Cursor[Any]):
    """Runs every statement prepared (psycopg names it and keeps it for the connection)."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        # Django connects with prepare_threshold=None, which makes psycopg ignore even
        # prepare=True. Lifted for this statement only: the project's own queries (client-side
        # bound unless it chose server_side_binding) keep the connection's setting.
        connection = self.connection
        threshold = connection.prepare_threshold
        connection.prepare_threshold = 0
        try:
            return super().execute(query, params, prepare=True, binary=binary)
        finally:
            connection.prepare_threshold = threshold


# Databases (aliases) whose session lost a prepared statement: this process stops preparing.
_unpreparable: set[str] = set()

# Connections that ran the INSERT once. Preparing costs a round trip of its own, which a
# connection that lives for one enqueue (CONN_MAX_AGE = 0, one web request) never gets back.
_used_once: weakref.WeakSet[Any] = weakref.WeakSet()


def _preparing_cursor(connection: Any) -> Any:
    """A cursor of Django's (its error wrapping and query log) over a psycopg cursor that
    prepares, from the second time this connection asks; else Django's own cursor."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if not isinstance(raw, psycopg.Connection):  # psycopg2 under Django: no such cursor
        return connection.cursor()
    if raw not in _used_once:
        _used_once.add(raw)
        return connection.cursor()
    connection.validate_thread_sharing()
    cursor = _PreparingCursor(raw)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def insert_tasks(alias: str, items: Sequence[Item]) -> list[TaskRun]:
    """A saved TaskRun per item, in order: the new row, or the active row with its spec_hash.

    Each spec_hash must appear once in ``items`` (the caller deduplicates a batch).
    """
    rows = [_row(spec, digest, fields) for spec, digest, fields in items]
    if len(rows) <= CHUNK:
        return _insert_chunk(alias, rows)
    runs: list[TaskRun] = []
    with transaction.atomic(using=alias):  # all or nothing, as one statement would be
        for start in range(0, len(rows), CHUNK):
            runs += _insert_chunk(alias, rows[start : start + CHUNK])
    return runs


def _row(spec: dict[str, Any], digest: str, fields: dict[str, Any]) -> dict[str, Any]:
    now = timezone.now()
    row = {
        **fields,
        "spec_json": spec,
        "spec_hash": digest,
        "status": TaskRunStatus.READY,
        "enqueued_at": now,
        "created_at": now,
        "updated_at": now,
    }
    if row.keys() != SENT_COLUMNS:
        # An explicit NULL would defeat a column's server default; an unknown key would be
        # dropped silently. Either is a programming error in build_spec.
        raise ValueError(f"enqueue row columns differ: {sorted(row.keys() ^ SENT_COLUMNS)}")
    return row


def _insert_chunk(alias: str, rows: list[dict[str, Any]]) -> list[TaskRun]:
    runs: list[TaskRun | None] = [None] * len(rows)
    pending = list(range(len(rows)))
    for _ in range(ATTEMPTS):
        answers = _execute(alias, [rows[i] for i in pending])
        for i in pending:
            runs[i] = answers.get(rows[i]["spec_hash"])
        pending = [i for i in pending if runs[i] is None]
        if not pending:
            return runs  # type: ignore[return-value]
    raise RuntimeError(
        f"Failed to enqueue or find duplicate for spec_hash {rows[pending[0]]['spec_hash']}"
    )


def _execute(alias: str, rows: list[dict[str, Any]]) -> dict[str, TaskRun | None]:
    """spec_hash -> the saved row (None: ask again), for one django_enqueue statement."""
    connection = connections[alias]
    payload = json.dumps(rows, separators=(",", ":"), default=_json_value)
    with connection.cursor() as cursor:
        cursor.execute(query("django_enqueue"), {"rows": payload})
        names = [column[0] for column in cursor.description]
        records = cursor.fetchall()
    by_hash = {row["spec_hash"]: row for row in rows}
    answers: dict[str, TaskRun | None] = {}
    for record in records:
        digest, new_id = record[0], record[1]
        if new_id is not None:
            answers[digest] = _new_run(alias, by_hash[digest], new_id)
        elif record[2] is not None:
            answers[digest] = _saved_run(alias, connection, names, record)
        else:
            answers[digest] = None
    return answers


def _saved_run(alias: str, connection: Any, names: list[str], record: Sequence[Any]) -> TaskRun:
    """A row read with raw SQL as the ORM would have built it (JSON columns parsed)."""
    values = [
        convert(record[p], None, connection) if convert else record[p]
        for p, convert in zip(_positions(tuple(names)), _converters(), strict=True)
    ]
    return TaskRun.from_db(alias, None, values)


@cache
def _positions(names: tuple[str, ...]) -> tuple[int, ...]:
    """Where each model column is in a result with these column names."""
    return tuple(names.index(field.column) for field in _fields())


def _new_run(alias: str, row: dict[str, Any], result_id: int) -> TaskRun:
    """The inserted row as the model sees it, without reading it back."""
    layout = _layout()
    values = list(layout.static)
    for index, factory in layout.factories:
        values[index] = factory()
    for name, index in layout.sent:
        values[index] = row[name]
    values[layout.pk] = result_id
    return TaskRun.from_db(alias, None, values)


class _Layout:
    """Where each column sits in the model's positional constructor, computed once."""

    def __init__(self) -> None:
        fields = _fields()
        # The model's defaults, which are the server's (so the instance matches the row).
        made = [f.has_default() and callable(f.default) for f in fields]
        self.static = [None if m else f.get_default() for f, m in zip(fields, made, strict=True)]
        self.factories = [
            (i, f.default)  # list, dict: a fresh one per instance
            for i, (f, m) in enumerate(zip(fields, made, strict=True))
            if m and f.attname not in SENT_COLUMNS
        ]
        self.sent = [(f.attname, i) for i, f in enumerate(fields) if f.attname in SENT_COLUMNS]
        self.pk = next(i for i, f in enumerate(fields) if f.primary_key)


@cache
def _layout() -> _Layout:
    return _Layout()


@cache
def _fields() -> tuple[Any, ...]:
    return tuple(TaskRun._meta.concrete_fields)


@cache
def _converters() -> tuple[Callable[[Any, Any, Any], Any] | None, ...]:
    # What the ORM applies to values it reads: JSONField parses the jsonb text.
    return tuple(getattr(field, "from_db_value", None) for field in _fields())


def _json_value(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} in an enqueue row")
