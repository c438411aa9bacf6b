"""`reproq cancel` and `reproq logs` against a real database."""

from __future__ import annotations

import json

from tests.support.harness import enqueue, row


def test_cancel(run_cli, conn, db_dsn):
    rid = enqueue(conn, "add", 1, 1)
    result = run_cli("cancel", "--dsn", db_dsn, "--id", str(rid))
    assert (result.returncode, result.stdout) == (0, f"No RUNNING task found for result_id {rid}\n")
    assert row(conn, rid)["cancel_requested"] is False
    conn.execute("UPDATE task_runs SET status = 'RUNNING' WHERE result_id = %s", (rid,))
    result = run_cli("cancel", "--id", str(rid), "--json", env={"DATABASE_URL": db_dsn})
    assert json.loads(result.stdout) == {"result_id": rid, "cancel_requested": True}
    assert row(conn, rid)["cancel_requested"] is True
    missing = run_cli("cancel", "--dsn", db_dsn)
    assert missing.returncode == 2
    assert "error: DSN and --id required" in missing.stderr


def test_logs(run_cli, conn, db_dsn, tmp_path):
    rid = enqueue(conn, "add", 1, 1)
    result = run_cli("logs", "--dsn", db_dsn, "--id", str(rid))
    assert result.returncode == 1
    assert "error: No logs_uri recorded for this task run." in result.stderr
    assert "Task run 999 not found." in run_cli("logs", "--dsn", db_dsn, "--id", "999").stderr
    log = tmp_path / "task.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 501)))
    conn.execute("UPDATE task_runs SET logs_uri = %s WHERE result_id = %s", (str(log), rid))
    out = run_cli("logs", "--dsn", db_dsn, "--id", str(rid)).stdout.splitlines()
    assert out[0] == "line 301"
    assert out[-1] == "line 500"
    assert len(out) == 200
    tail3 = run_cli("logs", "--dsn", db_dsn, "--id", str(rid), "--tail", "3").stdout
    assert tail3 == "line 498\nline 499\nline 500\n"
    last_bytes = run_cli(
        "logs", "--dsn", db_dsn, "--id", str(rid), "--tail", "0", "--max-bytes", "9"
    )
    assert last_bytes.stdout == "line 500\n"  # the last 9 bytes of the file
    conn.execute("UPDATE task_runs SET logs_uri = %s WHERE result_id = %s", (log.as_uri(), rid))
    shown = run_cli("logs", "--dsn", db_dsn, "--id", str(rid), "--show-path").stdout.strip()
    assert shown == log.as_uri()
    assert run_cli("logs", "--dsn", db_dsn, "--id", str(rid), "--tail", "1").stdout == "line 500\n"
    bad = run_cli("logs", "--dsn", db_dsn, "--id", str(rid), "--max-bytes", "0")
    assert bad.returncode == 2
