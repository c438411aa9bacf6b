"""Applying and verifying the schema in ``sql/migrations``.

Migration files are idempotent and run in file-name order, one statement at a time in
autocommit mode (the indexes are built CONCURRENTLY, which cannot run in a transaction). A
session advisory lock keeps two ``reproq migrate`` runs from interleaving. ``check`` compares
the live catalog with what the baseline promises and lists every missing piece.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql

from reproq_cli.db.connect import one_line
from reproq_cli.db.queries import query, read_sql_resource, sql_root
from reproq_cli.errors import DatabaseError, SchemaError

# pg_advisory_lock key for migrations: b"reproqmg" as a big-endian bigint.
MIGRATION_LOCK_KEY = 0x7265_7072_6F71_6D67


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def migrations() -> list[Migration]:
    folder = sql_root().joinpath("migrations")
    names = sorted(
        entry.name
        for entry in folder.iterdir()
        if re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", entry.name)
    )
    return [Migration(name, read_sql_resource("migrations", name)) for name in names]


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements: a ``;`` ending a line outside ``$$`` bodies ends one."""
    statements: list[str] = []
    current: list[str] = []
    in_dollar_body = False
    for line in sql.splitlines():
        code = line if in_dollar_body else line.split("--", 1)[0]
        if code.count("$$") % 2 == 1:
            in_dollar_body = not in_dollar_body
        current.append(line)
        if not in_dollar_body and code.rstrip().endswith(";"):
            statement = _strip_comments("\n".join(current))
            if statement:
                statements.append(statement)
            current = []
    tail = _strip_comments("\n".join(current))
    if tail:
        statements.append(tail)
    return statements


def _strip_comments(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def ddl_text() -> str:
    """Every migration, as one printable script (for ``reproq migrate --print``)."""
    parts = [f"-- {m.name}\n{m.sql.rstrip()}\n" for m in migrations()]
    return "\n".join(parts)


def apply(conn: psycopg.Connection[Any]) -> list[str]:
    """Run every migration; returns the names of the files applied."""
    if not conn.autocommit:
        raise ValueError("migrations need an autocommit connection")
    applied: list[str] = []
    _take_migration_lock(conn)
    try:
        # An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index that
        # IF NOT EXISTS would then keep forever; drop those so they are built again.
        invalid = conn.execute(query("schema_invalid_indexes")).fetchall()
        for row in invalid:
            conn.execute(
                pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    pgsql.Identifier(row["index_name"])
                )
            )
        for migration in migrations():
            for statement in migration.statements():
                try:
                    conn.execute(statement)
                except psycopg.Error as exc:
                    first_line = statement.splitlines()[0]
                    raise DatabaseError(
                        f"migration {migration.name} failed at `{first_line}`: "
                        f"{one_line(exc)}",  # with PostgreSQL's DETAIL, which names the cause
                        hint="fix the database state the message names, then run "
                        "`reproq migrate` again (every step is idempotent)",
                    ) from None
            applied.append(migration.name)
    finally:
        conn.execute(query("migration_unlock"), {"key": MIGRATION_LOCK_KEY})
    return applied


def _take_migration_lock(conn: psycopg.Connection[Any], timeout: float = 600.0) -> None:
    # Polling instead of a blocking pg_advisory_lock: a session blocked inside that SELECT
    # holds a snapshot, and the lock holder's CREATE INDEX CONCURRENTLY waits for every such
    # snapshot to end, which would deadlock the two.
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query("migration_try_lock"), {"key": MIGRATION_LOCK_KEY}).fetchone()
        if row is not None and row["locked"]:
            return
        if time.monotonic() > deadline:
            raise DatabaseError(
                f"another `reproq migrate` has held the migration lock for {timeout:.0f}s",
                hint="wait for it to finish, or find the session in pg_locks (advisory lock)",
            )
        time.sleep(0.2)


# --- verification --------------------------------------------------------------------------------

# (column, type, NOT NULL, has a server default) per table, as go-worker.md §3.2 describes.
# Types are compared by family so tables created by Django (varchar instead of text) pass.
EXPECTED_COLUMNS: dict[str, tuple[tuple[str, str, bool, bool], ...]] = {
    "task_runs": (
        ("result_id", "bigint", True, True),
        ("backend_alias", "text", True, True),
        ("queue_name", "text", True, True),
        ("priority", "integer", True, True),
        ("run_after", "timestamp with time zone", False, False),
        ("spec_json", "jsonb", True, False),
        ("spec_hash", "text", True, False),
        ("task_path", "text", False, False),
        ("status", "text", True, True),
        ("enqueued_at", "timestamp with time zone", True, True),
        ("started_at", "timestamp with time zone", False, False),
        ("last_attempted_at", "timestamp with time zone", False, False),
        ("finished_at", "timestamp with time zone", False, False),
        ("attempts", "integer", True, True),
        ("max_attempts", "integer", True, True),
        ("timeout_seconds", "integer", True, True),
        ("lock_key", "text", False, False),
        ("concurrency_key", "text", False, False),
        ("concurrency_limit", "integer", True, True),
        ("worker_ids", "jsonb", True, True),
        ("return_json", "jsonb", False, False),
        ("errors_json", "jsonb", True, True),
        ("metadata_json", "jsonb", True, True),
        ("last_error", "text", False, False),
        ("failed_at", "timestamp with time zone", False, False),
        ("leased_until", "timestamp with time zone", False, False),
        ("leased_by", "text", False, False),
        ("logs_uri", "text", False, False),
        ("artifacts_uri", "text", False, False),
        ("expires_at", "timestamp with time zone", False, False),
        ("parent_id", "bigint", False, False),
        ("workflow_id", "uuid", False, False),
        ("wait_count", "integer", True, True),
        ("created_at", "timestamp with time zone", True, True),
        ("updated_at", "timestamp with time zone", True, True),
        ("cancel_requested", "boolean", True, True),
    ),
    "periodic_tasks": (
        ("name", "text", True, False),
        ("cron_expr", "text", True, False),
        ("task_path", "text", True, False),
        ("payload_json", "jsonb", True, True),
        ("queue_name", "text", True, True),
        ("priority", "integer", True, True),
        ("max_attempts", "integer", True, True),
        ("concurrency_key", "text", False, False),
        ("concurrency_limit", "integer", True, True),
        ("last_run_at", "timestamp with time zone", False, False),
        ("next_run_at", "timestamp with time zone", True, False),
        ("enabled", "boolean", True, True),
        ("created_at", "timestamp with time zone", True, True),
        ("updated_at", "timestamp with time zone", True, True),
    ),
    "reproq_queue_controls": (
        ("queue_name", "text", True, False),
        ("paused", "boolean", True, True),
        ("paused_at", "timestamp with time zone", False, False),
        ("reason", "text", False, False),
        ("created_at", "timestamp with time zone", True, True),
        ("updated_at", "timestamp with time zone", True, True),
    ),
    "reproq_workers": (
        ("worker_id", "text", True, False),
        ("hostname", "text", False, False),
        ("concurrency", "integer", False, False),
        ("queues", "jsonb", True, True),
        ("started_at", "timestamp with time zone", True, True),
        ("last_seen_at", "timestamp with time zone", True, True),
        ("version", "text", False, False),
    ),
    "rate_limits": (
        ("key", "text", True, False),
        ("tokens_per_second", "real", True, False),
        ("burst_size", "integer", True, False),
        ("current_tokens", "real", True, False),
        ("last_refilled_at", "timestamp with time zone", True, True),
    ),
    "workflow_runs": (
        ("workflow_id", "uuid", True, False),
        ("expected_count", "integer", True, False),
        ("success_count", "integer", True, True),
        ("failure_count", "integer", True, True),
        ("callback_result_id", "bigint", False, False),
        ("status", "text", True, True),
        ("created_at", "timestamp with time zone", True, True),
        ("updated_at", "timestamp with time zone", True, True),
    ),
}

# index name -> (table, unique)
EXPECTED_INDEXES: dict[str, tuple[str, bool]] = {
    "idx_task_runs_claim": ("task_runs", False),
    "idx_task_runs_spec_unique": ("task_runs", True),
    "idx_task_runs_lock_key": ("task_runs", False),
    "idx_task_runs_concurrency_active": ("task_runs", False),
    "idx_task_runs_parent_id": ("task_runs", False),
    "idx_task_runs_workflow_id": ("task_runs", False),
    "idx_task_runs_failed_at": ("task_runs", False),
    "idx_task_runs_task_path": ("task_runs", False),
    "idx_task_runs_claim_due": ("task_runs", False),
    "idx_periodic_tasks_next_run": ("periodic_tasks", False),
    "idx_workflow_runs_callback": ("workflow_runs", False),
}
EXPECTED_FUNCTIONS = ("reproq_task_path_from_spec", "reproq_notify_ready")
# on task_runs; trg_task_runs_notify_ready (0002) sends the workers' LISTEN/NOTIFY wake-ups
EXPECTED_TRIGGERS = ("trg_task_runs_task_path", "trg_task_runs_notify_ready")
EXPECTED_CONSTRAINT = "task_runs_task_path_not_empty"

_TEXT_TYPES = {"text", "character varying", "character"}


def _family(data_type: str) -> str:
    return "text" if data_type in _TEXT_TYPES else data_type


NO_PRIVILEGES = "no read/write privileges on table"
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def check(conn: psycopg.Connection[Any]) -> list[str]:
    """Everything the schema lacks, one readable line each; empty when complete."""
    problems: list[str] = []
    columns: dict[str, dict[str, dict[str, Any]]] = {}
    denied: dict[str, list[str]] = {}  # present, but this role lacks these privileges on them
    for row in conn.execute(query("schema_columns"), {"tables": list(EXPECTED_COLUMNS)}):
        columns.setdefault(row["table_name"], {})[row["column_name"]] = row
        if row["lacks"]:
            denied[row["table_name"]] = row["lacks"]
    for table, expected in EXPECTED_COLUMNS.items():
        live = columns.get(table)
        if live is None:
            problems.append(f"table {table} is missing")
            continue
        lacks = denied.get(table)
        if lacks and len(lacks) == len(PRIVILEGES):
            # Present but out of reach: `reproq migrate` would fail on it the same way.
            problems.append(
                f"{NO_PRIVILEGES} {table} for this role (GRANT SELECT, INSERT, UPDATE, DELETE "
                f"ON {table} TO it, as the table's owner)"
            )
        elif lacks:
            problems.append(
                f"{NO_PRIVILEGES} {table} for this role: it lacks {', '.join(lacks)} (GRANT "
                f"{', '.join(lacks)} ON {table} TO it, as the table's owner)"
            )
        for name, data_type, not_null, has_default in expected:
            column = live.get(name)
            if column is None:
                problems.append(f"column {table}.{name} is missing")
                continue
            if _family(column["data_type"]) != _family(data_type):
                problems.append(
                    f"column {table}.{name} has type {column['data_type']}, expected {data_type}"
                )
            if not_null and column["is_nullable"] == "YES":
                problems.append(f"column {table}.{name} allows NULL, expected NOT NULL")
            if has_default and column["column_default"] is None and column["is_identity"] != "YES":
                problems.append(f"column {table}.{name} has no default")
    indexes = {row["index_name"]: row for row in conn.execute(query("schema_indexes"))}
    for name, (table, unique) in EXPECTED_INDEXES.items():
        index = indexes.get(name)
        if index is None:
            problems.append(f"index {name} on {table} is missing")
        elif not index["is_valid"]:
            problems.append(f"index {name} on {table} is INVALID (an interrupted build)")
        elif unique and not index["is_unique"]:
            problems.append(f"index {name} on {table} is not UNIQUE")
    objects = conn.execute(
        query("schema_objects"),
        {
            "functions": list(EXPECTED_FUNCTIONS),
            "triggers": list(EXPECTED_TRIGGERS),
            "constraint": EXPECTED_CONSTRAINT,
        },
    ).fetchone()
    assert objects is not None
    for function in EXPECTED_FUNCTIONS:
        if function not in objects["functions"]:
            problems.append(f"function {function}() is missing")
    for trigger in EXPECTED_TRIGGERS:
        if trigger not in objects["triggers"]:
            problems.append(f"trigger {trigger} on task_runs is missing")
    if not objects["has_constraint"]:
        problems.append(f"check constraint {EXPECTED_CONSTRAINT} on task_runs is missing")
    if "task_runs" in columns and not objects["parent_fk_sets_null"]:
        problems.append(
            "foreign key task_runs.parent_id does not SET NULL on delete (prune fails on a "
            "parent whose child remains)"
        )
    if "rate_limits" in columns and "rate_limits" not in denied:
        seeded = conn.execute(query("schema_global_rate_limit")).fetchone()
        if seeded is None:
            problems.append("rate_limits row 'global' is missing")
    return problems


def require_tables(pool: Any, dsn: str) -> None:
    """Fail fast, in one line, when the database has not been migrated."""
    from reproq_cli.config import mask_dsn

    with pool.connection() as conn:
        problems = check(conn)
    denied = [p for p in problems if p.startswith(NO_PRIVILEGES)]
    if denied:
        raise SchemaError(
            f"{mask_dsn(dsn)}: {'; '.join(denied)}",
            hint="connect as a role with those privileges, or have the tables' owner grant them",
        )
    missing = [p for p in problems if p.startswith("table ")]
    if missing:
        raise SchemaError(
            f"{mask_dsn(dsn)} is not migrated: {'; '.join(missing)}",
            hint="run `reproq migrate` (or `manage.py migrate`) against this database",
        )
