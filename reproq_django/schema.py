"""Creating reproq's tables from a Django migration.

PostgreSQL gets the SQL in sql/migrations, one Django migration per file, statement by
statement (the same files `reproq migrate` runs, so both paths give one schema, triggers and
partial indexes included). Other
databases, such as SQLite in a project's test suite, get plain tables from the models: enough
to enqueue and inspect tasks, not to run the worker.
"""

from __future__ import annotations

from typing import Any

from reproq_cli.db.queries import query
from reproq_cli.db.schema import migrations

MODEL_NAMES = ("TaskRun", "Worker", "PeriodicTask", "QueueControl", "WorkflowRun", "RateLimit")
TABLES = (
    "task_runs",
    "periodic_tasks",
    "reproq_queue_controls",
    "reproq_workers",
    "rate_limits",
    "workflow_runs",
)


def run_sql_migration(connection: Any, name: str) -> None:
    """Run one file of sql/migrations, statement by statement, as `reproq migrate` does."""
    (migration,) = [m for m in migrations() if m.name == name]
    with connection.cursor() as cursor:
        for statement in migration.statements():
            cursor.execute(statement)


def create_schema(apps: Any, schema_editor: Any) -> None:
    """Django migration 0001: the baseline (one Django migration per SQL file)."""
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        run_sql_migration(connection, "0001_baseline.sql")
        return
    existing = set(connection.introspection.table_names())
    for name in MODEL_NAMES:
        model = apps.get_model("reproq_django", name)
        if model._meta.db_table not in existing:
            schema_editor.create_model(model)
    rate_limit = apps.get_model("reproq_django", "RateLimit")
    rate_limit.objects.using(connection.alias).get_or_create(
        key="global", defaults={"tokens_per_second": 0, "burst_size": 1, "current_tokens": 0}
    )


def drop_schema(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    cascade = " CASCADE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {connection.ops.quote_name(table)}{cascade}")


def parent_fk_set_null(apps: Any, schema_editor: Any) -> None:
    """Django migration 0004: task_runs.parent_id clears itself when its parent is deleted,
    also on tables an older reproq-django created with Django's own foreign key."""
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        run_sql_migration(connection, "0003_parent_fk_set_null.sql")


def create_notify_trigger(apps: Any, schema_editor: Any) -> None:
    """Django migration 0002: the NOTIFY trigger that wakes listening workers.

    Only PostgreSQL has LISTEN/NOTIFY; elsewhere there is no worker to wake.
    """
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        run_sql_migration(connection, "0002_notify_ready.sql")


def drop_notify_trigger(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(query("drop_notify_ready"))
