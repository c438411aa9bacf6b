"""LISTEN for the NOTIFY that sql/migrations/0002_notify_ready.sql sends when a task becomes
READY (payload: its queue name).

A listener owns one dedicated connection, never a pool connection: LISTEN belongs to the
session, and a pooled connection would carry it to other users or lose it on recycling.
That is also why it does not work through PgBouncer in transaction mode (``--no-listen``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg import conninfo

from reproq_cli.db.connect import connect, one_line
from reproq_cli.db.queries import query
from reproq_cli.errors import DatabaseError

CHANNEL = "reproq_ready"
# An empty payload means "some queue" (the trigger sends it for an oversized queue name).
ANY_QUEUE = ""


class ReadyListener:
    """One LISTEN connection. Not thread-safe: the thread that waits owns it."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def open(cls, dsn: str, *, application_name: str) -> ReadyListener:
        """Connect and LISTEN; failures are ``DatabaseError`` with one readable line."""
        # The name lets operators (and tests) tell this session apart in pg_stat_activity;
        # it replaces an application_name in the DSN, which is meant for the pool's sessions.
        try:
            named = conninfo.make_conninfo(dsn, application_name=application_name)
        except psycopg.ProgrammingError:
            named = dsn  # connect() reports the malformed DSN
        conn = connect(named)
        try:
            conn.execute(query("listen_ready"))
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(f"LISTEN {CHANNEL} failed: {one_line(exc)}") from None
        return cls(conn)

    def wait(self, timeout: float) -> list[str]:
        """Payloads received within ``timeout`` seconds (empty when none came).

        Returns as soon as one notification arrives, with any others already buffered, so a
        burst of NOTIFYs costs one wake-up. A dropped connection raises ``DatabaseError``.
        """
        try:
            payloads = [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]
            if payloads:
                payloads += [n.payload for n in self._conn.notifies(timeout=0)]
        except psycopg.Error as exc:
            raise DatabaseError(f"LISTEN connection lost: {one_line(exc)}") from None
        if not payloads and self._conn.broken:
            raise DatabaseError("LISTEN connection lost")
        return payloads

    def close(self) -> None:
        # The server may already have dropped it; there is nothing left to tell it.
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
