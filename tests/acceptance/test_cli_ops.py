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


def test_doctor_healthy_and_failing(run_cli, db_dsn, tmp_path):
    import sys

    (tmp_path / "reproq.yaml").write_text(
        f"dsn: '{db_dsn}'\nworker:\n  python_bin: {sys.executable}\n"
        f"  executor_module: reproq_cli\n  allowed_task_modules: [myapp.tasks.]\n"
        f"  logs_dir: {tmp_path / 'logs'}\nmetrics:\n  addr: 127.0.0.1:9999\n"
    )
    result = run_cli("doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["OK"] * len(lines)
    names = [line.split()[1].rstrip(":") for line in lines]
    assert names == ["config", "dsn", "schema", "executor", "allow-list", "logs-dir", "metrics"]

    as_json = json.loads(run_cli("doctor", "--json", cwd=tmp_path).stdout)
    assert as_json["ok"] is True

    (tmp_path / "reproq.yaml").write_text(
        f"dsn: '{db_dsn}'\nworker:\n  python_bin: /nonexistent/python\n"
        "metrics:\n  addr: 0.0.0.0:9999\n"
    )
    bad = run_cli("doctor", cwd=tmp_path)
    assert bad.returncode == 1
    assert "FAIL executor: cannot run /nonexistent/python" in bad.stdout
    assert "WARN allow-list:" in bad.stdout
    assert "WARN metrics: 0.0.0.0:9999 has no auth" in bad.stdout
    assert "error: doctor found 1 problem(s)" in bad.stderr
    strict = run_cli("doctor", "--strict", cwd=tmp_path)
    assert "error: doctor found 3 problem(s)" in strict.stderr


def test_doctor_reports_missing_schema_and_bad_config(run_cli, empty_db_dsn, tmp_path):
    result = run_cli("doctor", "--dsn", empty_db_dsn, cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL schema:" in result.stdout
    assert "hint: run `reproq migrate`" in result.stdout
    (tmp_path / "reproq.yaml").write_text("worker: [broken\n")
    broken = run_cli("doctor", cwd=tmp_path)
    assert broken.returncode == 1
    assert broken.stdout.startswith("FAIL config: cannot parse YAML config file reproq.yaml")
