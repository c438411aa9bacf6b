"""Database work behind the operator commands (cancel, logs, ...)."""

from __future__ import annotations

from typing import Any

import psycopg

from reproq_cli.db.queries import query
from reproq_cli.errors import DatabaseError


def request_cancel(conn: psycopg.Connection[Any], result_id: int) -> bool:
    """Flag a RUNNING task for cancellation; False when no RUNNING row has that id."""
    return conn.execute(query("request_cancel"), {"result_id": result_id}).fetchone() is not None


def task_logs_uri(conn: psycopg.Connection[Any], result_id: int) -> tuple[bool, str | None]:
    """(row exists, logs_uri)."""
    row = conn.execute(query("task_logs_uri"), {"result_id": result_id}).fetchone()
    return (False, None) if row is None else (True, row["logs_uri"])


def set_rate_limit(conn: psycopg.Connection[Any], key: str, rate: float, burst: int) -> None:
    conn.execute(query("rate_limit_set"), {"key": key, "rate": rate, "burst": burst})


def list_rate_limits(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return list(conn.execute(query("rate_limit_list")).fetchall())


def delete_rate_limit(conn: psycopg.Connection[Any], key: str) -> int:
    return conn.execute(query("rate_limit_delete"), {"key": key}).rowcount


# A refused copy whose blocker finished meanwhile is tried again; it can only keep failing
# if identical tasks keep finishing between attempts.
REPLAY_ATTEMPTS = 3


class ReplayConflict(Exception):
    """An identical spec is already READY or RUNNING."""

    def __init__(self, active_id: int, status: str) -> None:
        super().__init__(f"result_id {active_id} is {status}")
        self.active_id = active_id
        self.status = status


def source_for_hash(conn: psycopg.Connection[Any], spec_hash: str) -> int | None:
    row = conn.execute(query("latest_by_spec_hash"), {"spec_hash": spec_hash}).fetchone()
    return None if row is None else int(row["result_id"])


def replay(conn: psycopg.Connection[Any], result_id: int) -> int | None:
    """Insert a READY copy of a task; None when the source row does not exist.

    ``conn`` is in autocommit: a refused insert leaves nothing to roll back."""
    for _ in range(REPLAY_ATTEMPTS):
        try:
            row = conn.execute(query("replay_by_id"), {"result_id": result_id}).fetchone()
        except psycopg.errors.UniqueViolation:
            spec_hash = conn.execute(query("task_spec_hash"), {"result_id": result_id}).fetchone()
            active = conn.execute(
                query("active_by_spec_hash"), {"spec_hash": spec_hash["spec_hash"]}
            ).fetchone()
            if active is None:
                # The identical task that refused the copy finished before we could read
                # it: the spec is free again.
                continue
            raise ReplayConflict(active["result_id"], active["status"]) from None
        except psycopg.errors.CheckViolation:
            # The copy takes its task_path from the spec (as the Go worker's does); a row
            # whose spec has none (older rows, or written by hand) has nothing to run.
            raise DatabaseError(
                f"task {result_id} cannot be replayed: its spec_json has no task_path",
                hint="enqueue the task again from Django, or fix the row's spec_json",
            ) from None
        return None if row is None else int(row["result_id"])
    raise DatabaseError(
        f"task {result_id} could not be replayed: an identical task kept finishing as the "
        "copy was inserted",
        hint="run the replay again",
    )


def prune_expired(conn: psycopg.Connection[Any], *, limit: int | None, dry_run: bool) -> int:
    params = {"limit": limit}
    if dry_run:
        row = conn.execute(query("prune_expired_count"), params).fetchone()
        return int(row["n"])
    return conn.execute(query("prune_expired"), params).rowcount


def triage_list(
    conn: psycopg.Connection[Any], *, queue: str | None, limit: int
) -> list[dict[str, Any]]:
    return list(conn.execute(query("triage_list"), {"queue": queue, "limit": limit}).fetchall())


def triage_inspect(conn: psycopg.Connection[Any], result_id: int) -> dict[str, Any] | None:
    row: dict[str, Any] | None = conn.execute(
        query("triage_inspect"), {"result_id": result_id}
    ).fetchone()
    return row


def triage_retry_blocked(conn: psycopg.Connection[Any], *, result_id: int | None) -> list[int]:
    """The FAILED rows (of one id, or all) a retry leaves alone: they wait on a task that has
    not succeeded (a chain's parent, a chord's members)."""
    params = {"all": result_id is None, "result_id": result_id or 0}
    return [r["result_id"] for r in conn.execute(query("triage_retry_blocked"), params)]


def triage_retry(conn: psycopg.Connection[Any], *, result_id: int | None) -> int:
    """Retry one FAILED row, or all of them (None), but those triage_retry_blocked names. One
    statement: a conflict retries none."""
    params = {"all": result_id is None, "result_id": result_id or 0}
    try:
        return conn.execute(query("triage_retry"), params).rowcount
    except psycopg.errors.UniqueViolation:
        raise DatabaseError(
            "nothing was retried: a failed task's spec is already READY or RUNNING again",
            hint="retry the others by --id, or wait for the active copy to finish",
        ) from None


def set_queue_paused(
    conn: psycopg.Connection[Any], queue: str, *, paused: bool, reason: str | None
) -> None:
    conn.execute(query("queue_set_paused"), {"queue": queue, "paused": paused, "reason": reason})


def list_queues(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return list(conn.execute(query("queue_list")).fetchall())


def stats_snapshot(conn: psycopg.Connection[Any], *, top: int = 5) -> dict[str, Any]:
    """Everything `reproq stats` and `reproq top` show, in one round of queries."""
    by_queue: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for row in conn.execute(query("stats_by_queue_status")):
        by_queue.setdefault(row["queue_name"], {})[row["status"]] = row["n"]
        totals[row["status"]] = totals.get(row["status"], 0) + row["n"]
    controls = {r["queue_name"]: r for r in conn.execute(query("queue_list"))}
    rates = {r["queue_name"]: r for r in conn.execute(query("stats_recent_rates"))}
    workers = list(conn.execute(query("stats_workers")).fetchall())
    return {
        "tasks": totals,
        "queues": {
            name: {
                "counts": by_queue.get(name, {}),
                "paused": bool(controls.get(name, {}).get("paused")),
                "finished_last_minute": {
                    "succeeded": rates.get(name, {}).get("succeeded", 0),
                    "failed": rates.get(name, {}).get("failed", 0),
                },
            }
            for name in sorted({*by_queue, *controls})
        },
        "workers": workers,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "workers_dead": sum(1 for w in workers if not w["alive"]),
        "periodic": list(conn.execute(query("stats_periodic")).fetchall()),
        "top_failing": list(conn.execute(query("stats_top_failing"), {"limit": top}).fetchall()),
    }
