"""Beat's database work: leadership, the due rows of a pass, enqueue and advance."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from reproq_cli.db.connect import connect, one_line
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
        # interrupt() cancels only inside a pass, and a pass does not end while it does; once
        # it has run, no new pass starts.
        self._in_pass = False
        self._interrupted = False
        self._pass_lock = threading.Lock()

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
        with self._pass_lock:
            if self._interrupted:
                raise DatabaseError("the beat is stopping: no new pass")
            self._in_pass = True
        try:
            with self.conn.transaction():
                yield BeatPass(self.conn)
        except psycopg.Error as exc:
            raise _error(exc) from None
        finally:
            with self._pass_lock:
                self._in_pass = False

    def interrupt(self) -> None:
        """Cancel the statement of a pass in progress (the beat is stopping): one waiting on a
        lock would hold the stop up until the lock is released. The pass then rolls back, and
        no pass starts after this."""
        with self._pass_lock:
            self._interrupted = True
            if self._in_pass:
                # If the cancel fails, the pass ends on its own and rolls back then.
                with contextlib.suppress(psycopg.Error):
                    self.conn.cancel_safe(timeout=5.0)


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
