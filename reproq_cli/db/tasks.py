"""The worker's database operations: claim, heartbeat, completion, reclaim, registry.

Every write that completes an attempt is fenced (only the lease holder of a RUNNING row can
change it) and runs under a 10 s statement timeout, so a completion stuck behind a lock fails
and is retried by the worker instead of holding the task's thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from reproq_cli.db.connect import Interruptible, connect, one_line, worker_session
from reproq_cli.db.queries import query
from reproq_cli.errors import DatabaseError
from reproq_cli.models import ClaimedTask, Failure, ReclaimedTask

Pool = ConnectionPool[psycopg.Connection[dict[str, Any]]]
ACQUIRE_SLICE = 0.5
UNREGISTER_TIMEOUT = 3.0

# Namespaces for claim_key_lock, so a lock_key and a concurrency_key with the same text never
# share an advisory lock, and every claimer takes them in the same order (no deadlock).
_LOCK_KEY_NS = "reproq:lock_key:"
_CONCURRENCY_NS = "reproq:concurrency_key:"


# Candidates read per priority level: enough that concurrent claimers, each skipping the rows
# the others hold, still find one.
CLAIM_HEADS = 64

# Go gives every completion write its own 10 s deadline; a statement that waits longer on a
# lock fails and is retried by the worker instead of holding a task thread indefinitely.
COMPLETION_TIMEOUT = 10.0


def _bound_statements(conn: psycopg.Connection[dict[str, Any]], seconds: float) -> None:
    """A statement timeout for the rest of the current transaction only."""
    conn.execute(query("local_statement_timeout"), {"timeout": f"{int(seconds * 1000)}"})


class FencingError(Exception):
    """The row is no longer RUNNING under this worker's lease (reclaimed or finished)."""


def _translate_errors[**P, R](method: Callable[P, R]) -> Callable[P, R]:
    """psycopg and pool errors leave the db layer as DatabaseError (one readable line)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (psycopg.Error, PoolTimeout) as exc:
            error = DatabaseError(f"database error in {method.__name__}: {one_line(exc)}")
            error.refused_data = isinstance(exc, psycopg.errors.DataError)
            raise error from exc

    return wrapper


class TaskStore:
    def __init__(self, pool: Pool, worker_id: str, *, lease_seconds: int) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        # Set by the worker when it stops: a claim waiting for a connection gives up at once
        # (with the database down it waited the pool's 30 s, and the exit with it).
        self.stopping: Callable[[], bool] = lambda: False
        # Claims in flight, which interrupt_claims cancels.
        self._claims = Interruptible("the worker is stopping: no new claim")

    @contextlib.contextmanager
    def _claim_connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pool connection, waited for in slices so a stop request is seen within one."""
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            try:
                conn = self.pool.getconn(timeout=min(ACQUIRE_SLICE, self.pool.timeout - waited))
                break
            except PoolTimeout:
                waited = time.monotonic() - started
                if self.stopping() or waited >= self.pool.timeout:
                    raise PoolTimeout(f"couldn't get a connection after {waited:.2f} sec") from None
        try:
            with self._claims.running(conn):
                yield conn
        finally:
            self.pool.putconn(conn)

    def interrupt_claims(self) -> None:
        """Cancel the claim statements running now, and start no more (the worker is
        stopping). The interrupted claim fails and rolls back; nothing of it is kept."""
        self._claims.interrupt()

    # --- claim ------------------------------------------------------------------------------

    @_translate_errors
    def claim(self, queue: str, *, aging_factor: float) -> ClaimedTask | None:
        """Lease the next claimable task of ``queue``, or None.

        lock_key exclusion and concurrency caps are re-checked under per-key advisory locks
        before commit; a claim that lost the race is rolled back (row, attempts and rate-limit
        token untouched) and reported as None.
        """
        with self._claim_connection() as conn, conn.transaction() as tx:
            row = conn.execute(
                query("claim_task"),
                {
                    "queue": queue,
                    "heads": CLAIM_HEADS,
                    "aging": aging_factor,
                    "lease_seconds": self.lease_seconds,
                    "worker_id": self.worker_id,
                },
            ).fetchone()
            if row is None:
                return None
            task = ClaimedTask(**row)
            limited = bool(task.concurrency_key) and task.concurrency_limit > 0
            if task.lock_key is None and not limited:
                return task
            if task.lock_key is not None:
                conn.execute(query("claim_key_lock"), {"name": _LOCK_KEY_NS + task.lock_key})
            if limited:
                conn.execute(
                    query("claim_key_lock"), {"name": _CONCURRENCY_NS + str(task.concurrency_key)}
                )
            check = conn.execute(
                query("claim_key_recheck"),
                {
                    "lock_key": task.lock_key,
                    "concurrency_key": task.concurrency_key,
                    "result_id": task.result_id,
                },
            ).fetchone()
            assert check is not None
            lost_lock = task.lock_key is not None and check["lock_taken"]
            over_cap = limited and check["running_with_key"] > task.concurrency_limit
            if not (lost_lock or over_cap):
                return task
            raise psycopg.Rollback(tx)  # leaves the block quietly, undoing the claim
        return None

    @_translate_errors
    def claim_batch(
        self, queue: str, n: int, *, aging_factor: float
    ) -> tuple[list[ClaimedTask], bool]:
        """Lease up to ``n`` plain tasks (no lock_key, concurrency limit or rate limit) of
        ``queue`` in one statement; stops before the first task that is not plain, which
        ``claim`` must take. Returns the tasks and, when there are none, whether a task that
        is not plain is waiting (then ``claim`` is worth a try; otherwise the queue is empty
        of anything claimable)."""
        with self._claim_connection() as conn:
            rows = conn.execute(
                query("claim_batch"),
                {
                    "queue": queue,
                    "heads": CLAIM_HEADS + n,
                    "aging": aging_factor,
                    "n": n,
                    "lease_seconds": self.lease_seconds,
                    "worker_id": self.worker_id,
                },
            ).fetchall()
        if rows and rows[0].pop("blocked"):
            return [], True
        for row in rows[1:]:
            del row["blocked"]
        return [ClaimedTask(**row) for row in rows], False

    # --- leases -----------------------------------------------------------------------------

    @_translate_errors
    def heartbeat(self, result_id: int) -> bool:
        """Extend the lease; returns cancel_requested. Raises FencingError if the lease is lost."""
        with self.pool.connection() as conn:
            row = conn.execute(
                query("heartbeat"),
                {
                    "result_id": result_id,
                    "worker_id": self.worker_id,
                    "lease_seconds": self.lease_seconds,
                },
            ).fetchone()
        if row is None:
            raise FencingError("lease lost or task not running")
        return bool(row["cancel_requested"])

    @_translate_errors
    def reclaim_expired(self, max_attempts_default: int) -> list[ReclaimedTask]:
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                query("reclaim_expired"), {"max_attempts_default": max_attempts_default}
            ).fetchall()
            reclaimed = [
                ReclaimedTask(r["result_id"], r["status"] == "FAILED", r["workflow_id"])
                for r in rows
            ]
            self._after_terminal_failures(conn, [r for r in reclaimed if r.failed])
        return reclaimed

    # --- completion ---------------------------------------------------------------------------

    @_translate_errors
    def complete_success(
        self, task: ClaimedTask, return_json: str | None, logs_uri: str | None
    ) -> None:
        if not self.complete_successes([(task, return_json, logs_uri)])[0]:
            raise FencingError("fencing failure or task not running")

    @_translate_errors
    def complete_successes(
        self, done: list[tuple[ClaimedTask, str | None, str | None]]
    ) -> list[bool]:
        """Mark tasks SUCCESSFUL (task, return JSON, logs_uri) in one transaction and one
        round trip; for each, False when its lease was lost (fencing) and nothing changed.
        """
        with self.pool.connection() as conn:
            return _write_successes(conn, self.worker_id, done, bound=True)

    @_translate_errors
    def complete_failure(self, task: ClaimedTask, failure: Failure, logs_uri: str | None) -> None:
        with self.pool.connection() as conn, conn.transaction():
            _bound_statements(conn, COMPLETION_TIMEOUT)
            row = conn.execute(
                query("complete_failure"),
                {
                    "result_id": task.result_id,
                    "worker_id": self.worker_id,
                    "retry": failure.retry,
                    "delay": failure.delay_seconds,
                    "summary": failure.summary,
                    "error": Jsonb(failure.error),
                    "refund": 1 if failure.refund_attempt else 0,
                    "logs_uri": logs_uri,
                },
            ).fetchone()
            if row is None:
                raise FencingError("fencing failure or task not running")
            if not failure.retry:
                self._after_terminal_failures(
                    conn, [ReclaimedTask(task.result_id, True, row["workflow_id"])]
                )

    def _after_terminal_failures(
        self, conn: psycopg.Connection[dict[str, Any]], failed: Iterable[ReclaimedTask]
    ) -> None:
        """Fail what can no longer run: the chord callback and WAITING chain descendants."""
        roots: list[int] = []
        for task in failed:
            roots.append(task.result_id)
            if task.workflow_id is not None:
                rows = conn.execute(
                    query("workflow_member_failed"),
                    {"workflow_id": task.workflow_id, "result_id": task.result_id},
                ).fetchall()
                roots.extend(r["result_id"] for r in rows)
        if roots:
            conn.execute(query("fail_chain_descendants"), {"roots": roots})

    # --- registry ---------------------------------------------------------------------------

    @_translate_errors
    def register(self, *, hostname: str, concurrency: int, queues: list[str], version: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                query("register_worker"),
                {
                    "worker_id": self.worker_id,
                    "hostname": hostname,
                    "concurrency": concurrency,
                    "queues": json.dumps(queues),
                    "version": version,
                },
            )

    @_translate_errors
    def seen(self) -> None:
        with self.pool.connection() as conn:
            conn.execute(query("worker_seen"), {"worker_id": self.worker_id})

    @_translate_errors
    def unregister(self) -> None:
        # At exit: a database that does not answer soon is not waited for (the row is
        # harmless, and the registry shows it stale).
        with self.pool.connection(timeout=UNREGISTER_TIMEOUT) as conn:
            conn.execute(query("unregister_worker"), {"worker_id": self.worker_id})

    # --- health and metrics -------------------------------------------------------------------

    @_translate_errors
    def ping(self, timeout: float) -> None:
        """One round trip through the pool; raises DatabaseError when the server is gone."""
        with self.pool.connection(timeout=timeout) as conn:
            conn.execute(query("ping"))

    @_translate_errors
    def metric_group(self, name: str, timeout: float) -> dict[str, Any]:
        """One row of counts for the metrics collector (a name from METRIC_GROUPS)."""
        with self.pool.connection(timeout=timeout) as conn, conn.transaction():
            _bound_statements(conn, timeout)
            row = conn.execute(query(name)).fetchone()
        return dict(row or {})

    def pool_usage(self) -> tuple[int, int]:
        """(connections handed out now, requests that ever had to wait for one)."""
        stats = self.pool.get_stats()
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        return max(in_use, 0), stats.get("requests_queued", 0)


# The collector's groups, in the order it reports them, with the Go worker's warning for each.
METRIC_GROUPS: tuple[tuple[str, str], ...] = (
    ("metrics_queue", "Queue metrics collection failed"),
    ("metrics_workers", "Worker metrics collection failed"),
    ("metrics_queue_controls", "Queue control metrics collection failed"),
    ("metrics_concurrency_blocked", "Concurrency metrics collection failed"),
)


def _write_successes(
    conn: psycopg.Connection[dict[str, Any]],
    worker_id: str,
    done: list[tuple[ClaimedTask, str | None, str | None]],
    *,
    bound: bool,
) -> list[bool]:
    """The successes of ``done``, in one transaction and one round trip.

    Tasks of no workflow share one complete_success_batch when there are several; each
    workflow member gets its own complete_success. ``bound``: the connection is shared, so
    the completion timeout is set for this transaction only; otherwise it is the session's
    already (SuccessConnection). Members lock their workflow_runs row; taking those rows in
    workflow order keeps two workers' batches from deadlocking on them.
    """

    def params(task: ClaimedTask, return_json: str | None, logs_uri: str | None) -> dict[str, Any]:
        return {
            "result_id": task.result_id,
            "worker_id": worker_id,
            "return_json": return_json,
            "logs_uri": logs_uri,
        }

    if len(done) == 1 and not bound:
        # Autocommit: the statement is its own transaction, with nothing to set up around it.
        return [conn.execute(query("complete_success"), params(*done[0])).fetchone() is not None]
    plain = [i for i, (task, _, _) in enumerate(done) if task.workflow_id is None]
    if len(plain) < 2:
        plain = []  # one statement either way, and complete_success is the simpler plan
    members = sorted(
        set(range(len(done))).difference(plain), key=lambda i: str(done[i][0].workflow_id or "")
    )
    cursors: dict[int, psycopg.Cursor[dict[str, Any]]] = {}
    batch: psycopg.Cursor[dict[str, Any]] | None = None
    # What a pipeline sends before its Sync is one transaction on an autocommit connection
    # (the server commits at the Sync, or rolls all of it back on an error), so an explicit
    # BEGIN and COMMIT would only be two more statements to send and read back (~100 us of
    # client CPU per batch).
    with conn.pipeline() as pipeline:
        if bound:
            _bound_statements(conn, COMPLETION_TIMEOUT)
        if plain:
            batch = conn.execute(
                query("complete_success_batch"),
                {
                    "result_ids": [done[i][0].result_id for i in plain],
                    "return_jsons": [done[i][1] for i in plain],
                    "logs_uris": [done[i][2] for i in plain],
                    "worker_id": worker_id,
                },
            )
        for i in members:
            cursors[i] = conn.execute(query("complete_success"), params(*done[i]))
        pipeline.sync()
    written = [
        cursors[i].fetchone() is not None if i in cursors else False for i in range(len(done))
    ]
    if batch is not None:
        ids = {row["result_id"] for row in batch.fetchall()}
        for i in plain:
            written[i] = done[i][0].result_id in ids
    return written


class SuccessConnection:
    """A connection of the success writer's own, outside the pool, with the completion
    timeout set once for its session.

    Through the pool a batch paid a checkout and a return, the timeout statement and a
    pipeline even for one task: 254-285 us of client CPU for a success written alone, against
    71-127 us as one statement here. One thread uses it; after an error it is closed and the
    next batch connects again (the error goes to the batch's tasks, which retry).
    """

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    @_translate_errors
    def complete_successes(
        self, done: list[tuple[ClaimedTask, str | None, str | None]]
    ) -> list[bool]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.store.pool.conninfo)
            worker_session(self._conn)  # as the worker's pool does
            self._conn.execute(
                query("session_statement_timeout"),
                {"timeout": f"{int(COMPLETION_TIMEOUT * 1000)}"},
            )
        try:
            return _write_successes(self._conn, self.store.worker_id, done, bound=False)
        except psycopg.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
