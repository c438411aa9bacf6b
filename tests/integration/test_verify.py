"""`reproq verify` flags each broken invariant (rows broken by hand), and passes a clean run."""

from __future__ import annotations

import uuid

import pytest

from reproq_cli.core.verify import run_checks
from tests.support.harness import enqueue


def _status(dsn: str) -> dict[str, str]:
    return {r.name: r.status for r in run_checks(dsn)}


def _executions(conn, *rows) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS reproq_torture_executions (id bigserial PRIMARY KEY,"
        " result_id bigint NOT NULL, attempt integer NOT NULL, worker_id text NOT NULL"
        " DEFAULT '', pid integer NOT NULL, started_at timestamptz NOT NULL,"
        " finished_at timestamptz NULL, outcome text NULL)"
    )
    for rid, start, end in rows:
        conn.execute(
            "INSERT INTO reproq_torture_executions (result_id, attempt, pid, started_at,"
            " finished_at) VALUES (%s, 1, 1, now() + make_interval(secs => %s),"
            " now() + make_interval(secs => %s))",
            (rid, start, end),
        )


def test_an_empty_database_passes_and_skips_execution_checks(db_dsn):
    statuses = _status(db_dsn)
    assert set(statuses.values()) == {"PASS", "SKIP"}
    assert statuses["no two executions of one lock_key overlapped"] == "SKIP"


def test_running_row_with_an_expired_lease(conn, db_dsn):
    rid = enqueue(conn, "add", 1, 1)
    conn.execute(
        "UPDATE task_runs SET status = 'RUNNING', attempts = 1, leased_by = 'gone',"
        " leased_until = now() - interval '1 minute' WHERE result_id = %s",
        (rid,),
    )
    assert _status(db_dsn)["no RUNNING row without a live lease"] == "FAIL"


def test_attempts_and_errors(conn, db_dsn):
    rid = enqueue(conn, "add", 1, 1)
    conn.execute(
        "UPDATE task_runs SET status = 'FAILED', attempts = 5, max_attempts = 3"
        " WHERE result_id = %s",
        (rid,),
    )
    statuses = _status(db_dsn)
    assert statuses["attempts <= max_attempts"] == "FAIL"
    assert statuses["errors_json consistent with attempts"] == "FAIL"  # 5 attempts, 0 errors


def test_stranded_chain_child_and_chord_callback(conn, db_dsn):
    parent = enqueue(conn, "add", 1, 1)
    child = enqueue(
        conn, "add", 2, 2, columns={"status": "WAITING", "parent_id": parent, "wait_count": 1}
    )
    conn.execute(
        "UPDATE task_runs SET status = 'SUCCESSFUL', attempts = 1 WHERE result_id = %s", (parent,)
    )
    statuses = _status(db_dsn)
    assert statuses["every task terminal or waiting for a documented reason"] == "FAIL"
    assert statuses["chains ended consistently"] == "FAIL"
    conn.execute("DELETE FROM task_runs WHERE result_id = %s", (child,))

    wf = str(uuid.uuid4())
    callback = enqueue(conn, "add", 0, 0, columns={"status": "WAITING", "workflow_id": wf})
    member = enqueue(conn, "add", 3, 3, columns={"workflow_id": wf})
    conn.execute(
        "INSERT INTO workflow_runs (workflow_id, expected_count, callback_result_id)"
        " VALUES (%s, 1, %s)",
        (wf, callback),
    )
    conn.execute(
        "UPDATE task_runs SET status = 'FAILED', attempts = 1,"
        ' errors_json = \'[{"kind": "app_error"}]\' WHERE result_id = %s',
        (member,),
    )
    assert _status(db_dsn)["chords ended consistently"] == "FAIL"  # workflow still RUNNING


@pytest.mark.parametrize(
    ("columns", "check"),
    [
        ({"lock_key": "k"}, "no two executions of one lock_key overlapped"),
        (
            {"concurrency_key": "c", "concurrency_limit": 1},
            "concurrency limits never exceeded",
        ),
    ],
)
def test_overlapping_executions(conn, db_dsn, columns, check):
    a = enqueue(conn, "add", 1, 1, columns=columns)
    b = enqueue(conn, "add", 2, 2, columns=columns)
    _executions(conn, (a, 0, 2), (b, 1, 3))
    assert _status(db_dsn)[check] == "FAIL"
    conn.execute("UPDATE reproq_torture_executions SET started_at = finished_at + interval '1s',"
                 " finished_at = finished_at + interval '2s' WHERE result_id = %s", (b,))  # fmt: skip
    assert _status(db_dsn)[check] == "PASS"


def test_one_task_running_twice_at_once(conn, db_dsn):
    rid = enqueue(conn, "add", 1, 1)
    _executions(conn, (rid, 0, 2), (rid, 1, 3))
    assert _status(db_dsn)["no task executed twice concurrently"] == "FAIL"


def test_chain_child_started_before_its_parent_ended(conn, db_dsn):
    parent = enqueue(conn, "add", 1, 1)
    child = enqueue(conn, "add", 2, 2, columns={"parent_id": parent})
    _executions(conn, (parent, 0, 2), (child, 1, 3))
    assert _status(db_dsn)["chain children and chord callbacks ran after their predecessors"] == (
        "FAIL"
    )


def test_verify_command_exit_status(run_cli, conn, db_dsn):
    ok = run_cli("verify", "--dsn", db_dsn)
    assert ok.returncode == 0, ok.stderr
    assert "PASS attempts <= max_attempts" in ok.stdout
    rid = enqueue(conn, "add", 1, 1)
    conn.execute("UPDATE task_runs SET attempts = 9 WHERE result_id = %s", (rid,))
    bad = run_cli("verify", "--dsn", db_dsn, "--json")
    assert bad.returncode == 1
    assert "1 invariant(s) failed" in bad.stderr or "invariant(s) failed" in bad.stderr
