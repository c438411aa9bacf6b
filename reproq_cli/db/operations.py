"""Database work behind the operator commands (cancel, logs, ...)."""

from __future__ import annotations

from typing import Any

import psycopg

from reproq_cli.db.queries import query


def request_cancel(conn: psycopg.Connection[Any], result_id: int) -> bool:
    """Flag a RUNNING task for cancellation; False when no RUNNING row has that id."""
    return conn.execute(query("request_cancel"), {"result_id": result_id}).fetchone() is not None


def task_logs_uri(conn: psycopg.Connection[Any], result_id: int) -> tuple[bool, str | None]:
    """(row exists, logs_uri)."""
    row = conn.execute(query("task_logs_uri"), {"result_id": result_id}).fetchone()
    return (False, None) if row is None else (True, row["logs_uri"])
