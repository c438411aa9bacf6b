"""Replay against an identical task that finishes while the copy is refused."""

from __future__ import annotations

from typing import Any

import pytest

from reproq_cli.db.connect import connect
from reproq_cli.db.operations import ReplayConflict, replay
from reproq_cli.db.queries import query
from tests.support.harness import enqueue, row


class FinishesInTheWindow:
    """The replay's connection, unchanged, except that just before it asks which task
    refused the copy, another session finishes that task: the moment between the refused
    insert and the lookup, where a worker's commit can land."""

    def __init__(self, inner: Any, other: Any, active_id: int) -> None:
        self.inner, self.other, self.active_id = inner, other, active_id
        self.finished = False

    def execute(self, sql: str, params: Any = None) -> Any:
        if sql == query("task_spec_hash") and not self.finished:
            self.finished = True
            self.other.execute(
                "UPDATE task_runs SET status = 'SUCCESSFUL', finished_at = now() "
                "WHERE result_id = %s",
                (self.active_id,),
            )
        return self.inner.execute(sql, params)


def test_a_replay_whose_blocker_finishes_meanwhile_inserts_the_copy(db_dsn, conn):
    source = enqueue(conn, "add", 1, 2)
    conn.execute("UPDATE task_runs SET status = 'FAILED' WHERE result_id = %s", (source,))
    active = enqueue(conn, "add", 1, 2)  # the same spec, active: the copy is refused
    with connect(db_dsn) as replaying:
        racing = FinishesInTheWindow(replaying, conn, active)
        copy = replay(racing, source)  # type: ignore[arg-type]
    assert racing.finished
    assert copy is not None and copy not in (source, active)
    assert row(conn, copy)["status"] == "READY"
    assert row(conn, active)["status"] == "SUCCESSFUL"


def test_a_replay_refused_by_a_task_still_active_names_it(db_dsn, conn):
    source = enqueue(conn, "add", 1, 2)
    conn.execute("UPDATE task_runs SET status = 'FAILED' WHERE result_id = %s", (source,))
    active = enqueue(conn, "add", 1, 2)
    with connect(db_dsn) as replaying, pytest.raises(ReplayConflict) as refused:
        replay(replaying, source)
    assert (refused.value.active_id, refused.value.status) == (active, "READY")
