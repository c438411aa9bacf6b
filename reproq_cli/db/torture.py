"""Database side of ``reproq torture``: its side table, the planned rows, progress, and the
row-lock chaos. The plan itself is made in ``reproq_cli.core.torture``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg

from reproq_cli.db.connect import connect, one_line
from reproq_cli.db.queries import query
from reproq_cli.errors import DatabaseError


def create_executions_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(query("torture_create_executions"))
    conn.execute(query("torture_index_executions"))


def insert_plan(conn: psycopg.Connection[Any], rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Insert planned rows in one transaction, in order; returns plan key -> result_id.

    A row names its chain parent (``parent``) and chord (``chord``) by plan key; a chord's
    workflow_runs row is written once its callback (``callback: True``, which comes first in
    the plan) and members exist.
    """
    ids: dict[str, int] = {}
    chords: dict[str, dict[str, Any]] = {}
    try:
        with conn.transaction():
            for row in rows:
                params = dict(row["columns"])
                params["parent_id"] = ids[row["parent"]] if row.get("parent") else None
                params["meta"] = json.dumps(row["meta"])
                inserted = conn.execute(query("torture_insert_task"), params).fetchone()
                rid = int(inserted["result_id"])
                ids[row["key"]] = rid
                chord = row.get("chord")
                if chord:
                    entry = chords.setdefault(
                        chord, {"workflow_id": params["workflow_id"], "members": 0}
                    )
                    if row.get("callback"):
                        entry["callback"] = rid
                    else:
                        entry["members"] += 1
            for entry in chords.values():
                conn.execute(
                    query("torture_insert_workflow"),
                    {
                        "workflow_id": entry["workflow_id"],
                        "expected_count": entry["members"],
                        "callback_result_id": entry.get("callback"),
                    },
                )
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot enqueue the torture workload: {one_line(exc)}",
            hint="run `reproq migrate` against that database first",
        ) from None
    return ids


def progress(dsn: str, run: str) -> dict[str, int]:
    """Status -> count for one run's tasks; a DatabaseError while the server is away."""
    try:
        with connect(dsn) as conn:
            rows = conn.execute(query("torture_progress"), {"run": run}).fetchall()
    except psycopg.Error as exc:
        raise DatabaseError(one_line(exc)) from None
    return {row["status"]: int(row["n"]) for row in rows}


def execution_counts(dsn: str) -> dict[str, int]:
    with connect(dsn) as conn:
        row = conn.execute(query("torture_execution_count")).fetchone()
    return {"executions": int(row["n"]), "unfinished": int(row["unfinished"])}


def hold_row_lock(
    dsn: str,
    run: str,
    seconds: float,
    stop: threading.Event,
    *,
    exclude: set[int],
    on_locked: Callable[[int], None] | None = None,
) -> int | None:
    """Lock one READY/RUNNING row of the run, not one of ``exclude``, from another session
    for ``seconds`` (or until ``stop``); returns its result_id (also added to ``exclude`` and
    passed to ``on_locked`` once locked), or None when there was nothing to lock."""
    try:
        with connect(dsn, autocommit=False) as conn:
            picked = conn.execute(
                query("torture_pick_row"), {"run": run, "exclude": sorted(exclude)}
            ).fetchone()
            if picked is None:
                conn.rollback()
                return None
            conn.execute(query("torture_lock_row"), {"result_id": picked["result_id"]})
            exclude.add(int(picked["result_id"]))
            if on_locked is not None:
                on_locked(int(picked["result_id"]))
            stop.wait(seconds)
            conn.rollback()
            return int(picked["result_id"])
    except (psycopg.Error, DatabaseError):
        return None  # the server went away (restart chaos): the lock is gone with it
