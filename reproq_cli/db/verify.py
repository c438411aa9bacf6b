"""The queries behind ``reproq verify``: each returns the rows that break one invariant."""

from __future__ import annotations

from typing import Any

import psycopg

from reproq_cli.db.connect import one_line
from reproq_cli.db.queries import query
from reproq_cli.errors import DatabaseError


def fetch(conn: psycopg.Connection[Any], name: str) -> list[dict[str, Any]]:
    """All rows of the named verify query (dicts). The empty parameter set makes psycopg
    read ``%%`` in the text as ``%`` whether or not a query has placeholders."""
    try:
        return [dict(row) for row in conn.execute(query(name), {}).fetchall()]
    except psycopg.Error as exc:
        raise DatabaseError(f"verify query {name} failed: {one_line(exc)}") from None


def has_executions(conn: psycopg.Connection[Any]) -> bool:
    return bool(fetch(conn, "verify_has_executions")[0]["present"])
