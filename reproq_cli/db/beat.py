"""Beat's database work: leadership, the due rows of a pass, enqueue and advance."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from reproq_cli.db.connect import Interruptible, connect, one_line
from reproq_cli.db.queries import query
from reproq_cli.errors import DatabaseError

# pg_advisory_lock key for beat leadership: b"reproqbt" as a big-endian bigint.
LEADER_LOCK_KEY = 0x7265_7072_6F71_6274


def _error(exc: psycopg.Error) -> DatabaseError:
    return DatabaseError(one_line(exc))


class BeatSession:
    """One connection held for the beat's life: its session owns the leader lock."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = connect(dsn)
        self._passes = Interruptible("the beat is stopping: no new pass")

    def close(self) -> None:
        self.conn.close()

    def reconnect(self) -> None:
        """A fresh session after the database went away (the leader lock went with it)."""
        self.conn.close()
        self.conn = connect(self.dsn)

    @property
    def broken(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    def try_lead(self) -> bool:
        try:
            row = self.conn.execute(query("beat_try_leader"), {"key": LEADER_LOCK_KEY}).fetchone()
        except psycopg.Error as exc:
            raise _error(exc) from None
        return bool(row and row["leader"])

    @contextlib.contextmanager
    def pass_transaction(self) -> Iterator[BeatPass]:
        try:
            with self._passes.running(self.conn), self.conn.transaction():
                yield BeatPass(self.conn)
        except psycopg.Error as exc:
            raise _error(exc) from None

    def interrupt(self) -> None:
        """Cancel the statement of a pass in progress, which then rolls back, and start no
        more passes (the beat is stopping)."""
        self._passes.interrupt()


class BeatPass:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def due(self) -> list[dict[str, Any]]:
        try:
            return list(self.conn.execute(query("beat_due")).fetchall())
        except psycopg.Error as exc:
            raise _error(exc) from None

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A failure inside rolls back to here and propagates; the pass goes on."""
        with self.conn.transaction():
            yield

    def enqueue(self, params: dict[str, Any]) -> bool:
        """Insert the run; False when an active row with the same spec_hash exists."""
        try:
            return self.conn.execute(query("beat_enqueue"), params).fetchone() is not None
        except psycopg.Error as exc:
            raise _error(exc) from None

    def advance(self, name: str, next_run_at: Any) -> None:
        try:
            self.conn.execute(query("beat_advance"), {"name": name, "next_run_at": next_run_at})
        except psycopg.Error as exc:
            raise _error(exc) from None
