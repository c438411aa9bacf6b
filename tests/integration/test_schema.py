"""`reproq migrate` against a real PostgreSQL: the catalog it yields, idempotence, upgrades.

EXPECTED_* below is transcribed from go-worker.md §3.2 independently of sql/; the test reads
the live catalog and compares.
"""

from __future__ import annotations

import psycopg
import pytest

from reproq_cli.db import schema
from reproq_cli.db.connect import connection
from tests.conftest import REPO_ROOT

TS = "timestamp with time zone"

# table -> [(column, type, NOT NULL, default expression as PostgreSQL prints it)]
EXPECTED_COLUMNS = {
    "task_runs": [
        ("result_id", "bigint", True, "nextval('task_runs_result_id_seq'::regclass)"),
        ("backend_alias", "text", True, "'default'::text"),
        ("queue_name", "text", True, "'default'::text"),
        ("priority", "integer", True, "0"),
        ("run_after", TS, False, None),
        ("spec_json", "jsonb", True, None),
        ("spec_hash", "character(64)", True, None),
        ("task_path", "text", False, None),
        ("status", "text", True, "'READY'::text"),
        ("enqueued_at", TS, True, "now()"),
        ("started_at", TS, False, None),
        ("last_attempted_at", TS, False, None),
        ("finished_at", TS, False, None),
        ("attempts", "integer", True, "0"),
        ("max_attempts", "integer", True, "3"),
        ("timeout_seconds", "integer", True, "900"),
        ("lock_key", "text", False, None),
        ("concurrency_key", "text", False, None),
        ("concurrency_limit", "integer", True, "0"),
        ("worker_ids", "jsonb", True, "'[]'::jsonb"),
        ("return_json", "jsonb", False, None),
        ("errors_json", "jsonb", True, "'[]'::jsonb"),
        ("metadata_json", "jsonb", True, "'{}'::jsonb"),
        ("last_error", "text", False, None),
        ("failed_at", TS, False, None),
        ("leased_until", TS, False, None),
        ("leased_by", "text", False, None),
        ("logs_uri", "text", False, None),
        ("artifacts_uri", "text", False, None),
        ("expires_at", TS, False, None),
        ("parent_id", "bigint", False, None),
        ("workflow_id", "uuid", False, None),
        ("wait_count", "integer", True, "0"),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, "now()"),
        ("cancel_requested", "boolean", True, "false"),
    ],
    "periodic_tasks": [
        ("name", "text", True, None),
        ("cron_expr", "text", True, None),
        ("task_path", "text", True, None),
        ("payload_json", "jsonb", True, "'{}'::jsonb"),
        ("queue_name", "text", True, "'default'::text"),
        ("priority", "integer", True, "0"),
        ("max_attempts", "integer", True, "3"),
        ("concurrency_key", "text", False, None),
        ("concurrency_limit", "integer", True, "0"),
        ("last_run_at", TS, False, None),
        ("next_run_at", TS, True, None),
        ("enabled", "boolean", True, "true"),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, "now()"),
    ],
    "reproq_queue_controls": [
        ("queue_name", "text", True, None),
        ("paused", "boolean", True, "false"),
        ("paused_at", TS, False, None),
        ("reason", "text", False, None),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, "now()"),
    ],
    "reproq_workers": [
        ("worker_id", "text", True, None),
        ("hostname", "text", False, None),
        ("concurrency", "integer", False, None),
        ("queues", "jsonb", True, "'[]'::jsonb"),
        ("started_at", TS, True, "now()"),
        ("last_seen_at", TS, True, "now()"),
        ("version", "text", False, None),
    ],
    "rate_limits": [
        ("key", "text", True, None),
        ("tokens_per_second", "real", True, None),
        ("burst_size", "integer", True, None),
        ("current_tokens", "real", True, None),
        ("last_refilled_at", TS, True, "now()"),
    ],
    "workflow_runs": [
        ("workflow_id", "uuid", True, None),
        ("expected_count", "integer", True, None),
        ("success_count", "integer", True, "0"),
        ("failure_count", "integer", True, "0"),
        ("callback_result_id", "bigint", False, None),
        ("status", "text", True, "'RUNNING'::text"),
        ("created_at", TS, True, "now()"),
        ("updated_at", TS, True, "now()"),
    ],
}

# index -> (table, unique, columns/expressions, predicate) as pg_get_indexdef renders them
EXPECTED_INDEXES = {
    "task_runs_pkey": ("task_runs", True, "result_id", None),
    "idx_task_runs_claim": (
        "task_runs",
        False,
        "queue_name, status, priority DESC, enqueued_at",
        "(status = 'READY'::text)",
    ),
    "idx_task_runs_spec_unique": (
        "task_runs",
        True,
        "spec_hash",
        "(status = ANY (ARRAY['READY'::text, 'RUNNING'::text]))",
    ),
    "idx_task_runs_lock_key": ("task_runs", False, "lock_key", "(status = 'RUNNING'::text)"),
    "idx_task_runs_concurrency_active": (
        "task_runs",
        False,
        "concurrency_key, leased_until",
        "((status = 'RUNNING'::text) AND (concurrency_key IS NOT NULL))",
    ),
    "idx_task_runs_parent_id": ("task_runs", False, "parent_id", "(status = 'WAITING'::text)"),
    "idx_task_runs_workflow_id": ("task_runs", False, "workflow_id", None),
    "idx_task_runs_failed_at": ("task_runs", False, "failed_at", "(status = 'FAILED'::text)"),
    "idx_task_runs_task_path": ("task_runs", False, "task_path", None),
    "idx_task_runs_claim_due": (
        "task_runs",
        False,
        "queue_name, COALESCE(run_after, '-infinity'::timestamp with time zone), priority DESC, enqueued_at",
        "(status = 'READY'::text)",
    ),
    "periodic_tasks_pkey": ("periodic_tasks", True, "name", None),
    "idx_periodic_tasks_next_run": ("periodic_tasks", False, "next_run_at", "enabled"),
    "reproq_queue_controls_pkey": ("reproq_queue_controls", True, "queue_name", None),
    "reproq_workers_pkey": ("reproq_workers", True, "worker_id", None),
    "rate_limits_pkey": ("rate_limits", True, "key", None),
    "workflow_runs_pkey": ("workflow_runs", True, "workflow_id", None),
    "idx_workflow_runs_callback": ("workflow_runs", False, "callback_result_id", None),
}


def catalog(conn: psycopg.Connection) -> dict:
    """Everything about the reproq objects that a migration could change."""
    columns = {}
    for table, name, type_, not_null, default in conn.execute(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum
        """
    ):
        columns.setdefault(table, []).append((name, type_, not_null, default))
    indexes = {}
    for name, table, unique, valid, definition in conn.execute(
        """
        SELECT ic.relname, tc.relname, i.indisunique, i.indisvalid, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE n.nspname = 'public'
        """
    ):
        assert valid, name
        body = definition.split(" USING btree (", 1)[1]
        cols, _, predicate = body.partition(") WHERE ")
        if not predicate:
            cols = cols.removesuffix(")")
        indexes[name] = (table, unique, cols, predicate or None)
    triggers = conn.execute(
        """
        SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
        WHERE NOT tgisinternal ORDER BY tgname
        """
    ).fetchall()
    constraints = conn.execute(
        """
        SELECT conname, contype, convalidated, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.contype <> 'n'  -- PG 18 lists NOT NULL here too
        ORDER BY conname
        """
    ).fetchall()
    functions = conn.execute(
        """
        SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
        -- ours only: where pgcrypto is installed the baseline creates it, with its functions
          AND NOT EXISTS (
              SELECT 1 FROM pg_depend d
              WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          )
        ORDER BY p.proname
        """
    ).fetchall()
    rate_limits = conn.execute(
        "SELECT key, tokens_per_second, burst_size, current_tokens FROM rate_limits ORDER BY key"
    ).fetchall()
    return {
        "columns": columns,
        "indexes": indexes,
        "triggers": triggers,
        "constraints": constraints,
        "functions": functions,
        "rate_limits": rate_limits,
    }


def migrate(dsn: str) -> list[str]:
    with connection(dsn) as conn:
        return schema.apply(conn)


def problems(dsn: str) -> list[str]:
    with connection(dsn) as conn:
        return schema.check(conn)


def run_script(conn: psycopg.Connection, path) -> None:
    for statement in schema.split_statements(path.read_text()):
        conn.execute(statement)


MIGRATIONS = ["0001_baseline.sql", "0002_notify_ready.sql", "0003_parent_fk_set_null.sql"]
# Ours on top of the Go baseline (additive: the Go worker never LISTENs).
NOTIFY_TRIGGER = (
    "trg_task_runs_notify_ready",
    "CREATE TRIGGER trg_task_runs_notify_ready AFTER INSERT OR UPDATE OF status ON "
    "public.task_runs FOR EACH ROW WHEN ((new.status = 'READY'::text)) "
    "EXECUTE FUNCTION reproq_notify_ready()",
)


def test_empty_database_gets_exactly_the_baseline(empty_db_dsn, conn_for):
    assert migrate(empty_db_dsn) == MIGRATIONS
    snapshot = catalog(conn_for(empty_db_dsn))
    assert snapshot["columns"] == EXPECTED_COLUMNS
    assert snapshot["indexes"] == EXPECTED_INDEXES
    assert snapshot["triggers"] == [
        NOTIFY_TRIGGER,
        (
            "trg_task_runs_task_path",
            "CREATE TRIGGER trg_task_runs_task_path BEFORE INSERT OR UPDATE OF spec_json, "
            "task_path ON public.task_runs FOR EACH ROW EXECUTE FUNCTION "
            "reproq_task_path_from_spec()",
        ),
    ]
    checks = {
        name: (kind, validated, text) for name, kind, validated, text in snapshot["constraints"]
    }
    assert checks["task_runs_task_path_not_empty"] == (
        "c",
        False,
        "CHECK (((task_path IS NOT NULL) AND (task_path <> ''::text))) NOT VALID",
    )
    assert checks["task_runs_parent_id_fkey"] == (
        "f",
        True,
        "FOREIGN KEY (parent_id) REFERENCES task_runs(result_id) ON DELETE SET NULL",
    )
    assert sorted(checks) == sorted(
        ["task_runs_task_path_not_empty", "task_runs_parent_id_fkey"]
        + [f"{t}_pkey" for t in EXPECTED_COLUMNS]
    )
    assert sorted(name for name, _ in snapshot["functions"]) == [
        "reproq_notify_ready",
        "reproq_task_path_from_spec",
    ]
    assert snapshot["rate_limits"] == [("global", 0.0, 1, 0.0)]
    assert problems(empty_db_dsn) == []


def test_second_run_changes_nothing_and_keeps_operator_data(db_dsn, conn_for):
    conn = conn_for(db_dsn)
    conn.execute(
        "UPDATE rate_limits SET tokens_per_second = 5, burst_size = 10 WHERE key = 'global'"
    )
    conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash) VALUES ('{\"task_path\": \"a.b\"}', 'h1')"
    )
    before = catalog(conn)
    assert migrate(db_dsn) == MIGRATIONS
    assert catalog(conn) == before
    assert before["rate_limits"] == [("global", 5.0, 10, 0.0)]
    assert conn.execute("SELECT count(*) FROM task_runs").fetchone() == (1,)


def test_go_baseline_database_upgrades_cleanly(empty_db_dsn, conn_for):
    conn = conn_for(empty_db_dsn)
    run_script(conn, REPO_ROOT / "tests" / "fixtures" / "go_baseline.sql")
    before = catalog(conn)
    migrate(empty_db_dsn)
    after = catalog(conn)
    assert problems(empty_db_dsn) == []
    assert after["columns"] == EXPECTED_COLUMNS
    assert after["indexes"] == EXPECTED_INDEXES
    # The Go baseline already is our baseline; the function's source text is rewritten and
    # 0002's NOTIFY trigger and its function are added, nothing else.
    before.pop("functions")
    assert sorted(name for name, _ in after.pop("functions")) == [
        "reproq_notify_ready",
        "reproq_task_path_from_spec",
    ]
    assert after.pop("triggers") == sorted([*before.pop("triggers"), NOTIFY_TRIGGER])
    assert after == before


def test_django_legacy_tables_are_completed_without_losing_rows(empty_db_dsn, conn_for):
    conn = conn_for(empty_db_dsn)
    run_script(conn, REPO_ROOT / "tests" / "fixtures" / "django_legacy.sql")
    missing = problems(empty_db_dsn)
    assert "column task_runs.task_path is missing" in missing
    assert "table workflow_runs is missing" in missing
    assert "column task_runs.errors_json has no default" in missing
    migrate(empty_db_dsn)
    assert problems(empty_db_dsn) == []
    row = conn.execute(
        "SELECT task_path, status, worker_ids, metadata_json, concurrency_limit FROM task_runs"
    ).fetchone()
    assert row == ("myapp.tasks.legacy", "SUCCESSFUL", ["w1"], {}, 0)
    # the server-side defaults now let the Go worker's column-sparse inserts work
    conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash) VALUES ('{\"task_path\": \"x.y\"}', 'h2')"
    )


def test_a_django_parent_key_is_made_to_clear_itself(empty_db_dsn, conn_for):
    # Django's foreign key (DEFERRABLE, no ON DELETE action) stayed: deleting a parent whose
    # child remained failed, so `reproq prune` deleted nothing.
    conn = conn_for(empty_db_dsn)
    run_script(conn, REPO_ROOT / "tests" / "fixtures" / "django_legacy.sql")
    assert (
        "foreign key task_runs.parent_id does not SET NULL on delete (prune fails on a parent "
        "whose child remains)"
    ) in problems(empty_db_dsn)
    migrate(empty_db_dsn)
    assert problems(empty_db_dsn) == []
    (parent,) = conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash) VALUES ('{\"task_path\": \"a.b\"}', 'p')"
        " RETURNING result_id"
    ).fetchone()
    (child,) = conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash, status, parent_id)"
        " VALUES ('{\"task_path\": \"a.c\"}', 'c', 'WAITING', %s) RETURNING result_id",
        (parent,),
    ).fetchone()
    conn.execute("DELETE FROM task_runs WHERE result_id = %s", (parent,))
    assert conn.execute(
        "SELECT parent_id FROM task_runs WHERE result_id = %s", (child,)
    ).fetchone() == (None,)


def test_check_lists_what_is_missing(db_dsn, conn_for):
    conn = conn_for(db_dsn)
    conn.execute("DROP INDEX idx_task_runs_spec_unique")
    conn.execute("ALTER TABLE task_runs DROP COLUMN failed_at")
    conn.execute("DROP TRIGGER trg_task_runs_task_path ON task_runs")
    conn.execute("DROP FUNCTION reproq_notify_ready() CASCADE")
    conn.execute("DELETE FROM rate_limits WHERE key = 'global'")
    conn.execute("DROP TABLE workflow_runs")
    assert problems(db_dsn) == [
        "column task_runs.failed_at is missing",
        "table workflow_runs is missing",
        "index idx_task_runs_spec_unique on task_runs is missing",
        "index idx_task_runs_failed_at on task_runs is missing",  # dropped with its column
        "index idx_workflow_runs_callback on workflow_runs is missing",
        "function reproq_notify_ready() is missing",
        "trigger trg_task_runs_task_path on task_runs is missing",
        "trigger trg_task_runs_notify_ready on task_runs is missing",
        "rate_limits row 'global' is missing",
    ]
    migrate(db_dsn)
    assert problems(db_dsn) == []


def test_invalid_index_is_rebuilt(db_dsn, conn_for):
    conn = conn_for(db_dsn)
    conn.execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_task_runs_lock_key'::regclass"
    )
    assert problems(db_dsn) == [
        "index idx_task_runs_lock_key on task_runs is INVALID (an interrupted build)"
    ]
    migrate(db_dsn)
    assert problems(db_dsn) == []


def test_trigger_fills_task_path_and_constraint_rejects_none(db_dsn, conn_for):
    conn = conn_for(db_dsn)
    conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash) VALUES ('{\"task_path\": \"m.t\"}', 'a')"
    )
    assert conn.execute("SELECT task_path FROM task_runs").fetchone() == ("m.t",)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO task_runs (spec_json, spec_hash) VALUES ('{\"args\": []}', 'b')")


def test_active_spec_hash_is_unique(db_dsn, conn_for):
    conn = conn_for(db_dsn)
    insert = "INSERT INTO task_runs (spec_json, spec_hash, status) VALUES ('{\"task_path\": \"m.t\"}', 'same', %s)"
    conn.execute(insert, ("SUCCESSFUL",))
    conn.execute(insert, ("READY",))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, ("RUNNING",))
    conn.execute(insert, ("FAILED",))


def test_concurrent_migrations_serialize(empty_db_dsn):
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(empty_db_dsn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert problems(empty_db_dsn) == []


def test_split_statements_keeps_dollar_bodies_whole():
    statements = schema.split_statements(
        "-- c\nSELECT 1;\nDO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;\nSELECT 'a;' ;\n"
    )
    assert statements == ["SELECT 1;", "DO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;", "SELECT 'a;' ;"]


def test_a_failing_migration_statement_says_why(empty_db_dsn, conn_for):
    from reproq_cli.errors import ReproqError

    conn = conn_for(empty_db_dsn)
    run_script(conn, REPO_ROOT / "tests" / "fixtures" / "django_legacy.sql")
    # Two active rows with one spec_hash: the unique index cannot be built. PostgreSQL's
    # DETAIL, which names the hash, was dropped from the message.
    conn.execute("UPDATE task_runs SET status = 'READY', spec_hash = 'dup'")
    conn.execute("CREATE TEMP TABLE copy AS SELECT * FROM task_runs")
    conn.execute("UPDATE copy SET result_id = result_id + 1000")
    conn.execute("INSERT INTO task_runs SELECT * FROM copy")
    with pytest.raises(ReproqError) as caught:
        migrate(empty_db_dsn)
    message = str(caught.value)
    assert 'could not create unique index "idx_task_runs_spec_unique"' in message
    assert "Key (spec_hash)=(dup) is duplicated." in message


def test_a_role_without_privileges_is_told_so_not_that_tables_are_missing(db_dsn, conn_for):
    from psycopg import conninfo

    conn = conn_for(db_dsn)
    role = "reproq_limited_role"
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        limited = conninfo.make_conninfo(db_dsn, user=role)
        found = problems(limited)
        # information_schema hid the tables: "missing", and `reproq migrate` as the fix.
        assert not [p for p in found if "missing" in p], found
        assert (
            "no read/write privileges on table task_runs for this role (GRANT SELECT, "
            "INSERT, UPDATE, DELETE ON task_runs TO it, as the table's owner)"
        ) in found
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_a_read_only_role_is_told_what_it_lacks(db_dsn, conn_for):
    # has_table_privilege with a list of privileges is true when any one is held: a role that
    # may only SELECT passed the check, and the worker then failed every poll.
    from psycopg import conninfo

    conn = conn_for(db_dsn)
    role = "reproq_read_only_role"
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        found = problems(conninfo.make_conninfo(db_dsn, user=role))
        assert (
            "no read/write privileges on table task_runs for this role: it lacks INSERT, "
            "UPDATE, DELETE (GRANT INSERT, UPDATE, DELETE ON task_runs TO it, as the table's "
            "owner)"
        ) in found
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
