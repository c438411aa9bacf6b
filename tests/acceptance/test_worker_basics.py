"""`reproq worker` end to end: real PostgreSQL, real worker and executor processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from reproq_cli.defaults import MAX_SECONDS
from tests.support.harness import enqueue, process_alive, row, wait_for

# Every executor must behave the same; tests about spawn-only details say so themselves.
pytestmark = pytest.mark.executors("spawn", "pool")
SPAWN_ONLY = pytest.mark.executors("spawn")


def test_success_and_registry(conn, workers):
    rid = enqueue(conn, "add", 2, 3)
    run = workers.run("--worker-id", "w-success")
    assert run.returncode == 0, run.stderr
    task = row(conn, rid)
    assert task["status"] == "SUCCESSFUL", (task, run.stdout)
    assert task["return_json"] == 5
    assert task["attempts"] == 1
    assert task["leased_by"] is None
    assert task["leased_until"] is None
    assert task["worker_ids"] == ["w-success"]
    assert task["started_at"] is not None
    assert task["finished_at"] is not None
    assert "Task successful" in run.messages()
    assert run.logs[0]["worker_id"] == "w-success"
    # registered while running, removed on a clean exit
    assert conn.execute("SELECT count(*) FROM reproq_workers").fetchone() == (0,)


def test_registry_row_while_running(conn, workers):
    rid = enqueue(conn, "sleep", 3)
    proc = workers.start("--worker-id", "w-reg", "--concurrency", "3", "--queues", "default,high")
    registered = wait_for(
        lambda: conn.execute(
            "SELECT worker_id, concurrency, queues, version, hostname FROM reproq_workers"
        ).fetchone(),
        what="registry row",
    )
    assert registered[:3] == ("w-reg", 3, ["default", "high"])
    assert registered[3]
    workers.wait_executing(proc)  # started, not only claimed (see wait_executing)
    proc.send_signal(signal.SIGTERM)
    run = workers.finish(proc)
    assert run.returncode == 0
    assert row(conn, rid)["status"] == "SUCCESSFUL"
    assert conn.execute("SELECT count(*) FROM reproq_workers").fetchone() == (0,)


def test_app_error_retries_then_fails(conn, workers):
    rid = enqueue(conn, "fail", "kaput", columns={"max_attempts": 2})
    run = workers.run()
    assert run.returncode == 0, run.stderr
    task = row(conn, rid)
    assert task["status"] == "READY"
    assert task["attempts"] == 1
    assert task["last_error"] is None
    (error,) = task["errors_json"]
    assert error["kind"] == "app_error"
    assert error["message"] == "kaput"
    assert error["exception_class"] == "builtins.ValueError"
    assert "Traceback" in error["traceback"]
    assert error["attempt"] == 1
    # first retry waits 30 s
    delay = conn.execute(
        "SELECT extract(epoch FROM run_after - updated_at) FROM task_runs WHERE result_id = %s",
        (rid,),
    ).fetchone()[0]
    assert 29 <= float(delay) <= 31
    conn.execute("UPDATE task_runs SET run_after = now() WHERE result_id = %s", (rid,))
    workers.run()
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    assert task["attempts"] == 2
    assert task["last_error"] == "kaput"
    assert task["failed_at"] is not None
    assert [e["attempt"] for e in task["errors_json"]] == [1, 2]


def test_retry_then_success(conn, workers):
    rid = enqueue(conn, "fail_until", 2)
    workers.run()
    conn.execute("UPDATE task_runs SET run_after = now() WHERE result_id = %s", (rid,))
    workers.run()
    task = row(conn, rid)
    assert task["status"] == "SUCCESSFUL"
    assert task["return_json"] == "succeeded on attempt 2"
    assert len(task["errors_json"]) == 1


@SPAWN_ONLY
def test_invalid_spec_is_failed_with_reason(conn, workers):
    # Only rows from before the check constraint can lack a task_path; make one.
    conn.execute("ALTER TABLE task_runs DROP CONSTRAINT task_runs_task_path_not_empty")
    conn.execute("ALTER TABLE task_runs DISABLE TRIGGER trg_task_runs_task_path")
    rid = conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash) VALUES ('{\"args\": []}', 'x') "
        "RETURNING result_id"
    ).fetchone()[0]
    run = workers.run()
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    assert task["errors_json"][0]["kind"] == "invalid_spec"
    assert task["last_error"] == "spec_json missing task_path"
    assert "Invalid task spec" in run.messages()


@SPAWN_ONLY
def test_garbage_spec_json_is_recorded_not_lost(conn, workers):
    rid = conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash, task_path, max_attempts)"
        " VALUES ('[1, 2, 3]', 'g', 'tests.support.tasks.add', 1) RETURNING result_id"
    ).fetchone()[0]
    workers.run()
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    assert task["errors_json"][0]["kind"] == "app_error"
    assert "list indices" in task["last_error"]


@SPAWN_ONLY
def test_disallowed_module_never_runs(conn, workers, tmp_path):
    marker = tmp_path / "ran"
    rid = enqueue(conn, "tests.support.tasks.touch", str(marker))
    run = workers.run(allowed_task_modules=["myapp.tasks."])
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    (error,) = task["errors_json"]
    assert error["kind"] == "security_violation"
    assert error["task_path"] == "tests.support.tasks.touch"
    assert task["last_error"] == (
        "security violation: unauthorized task module path: tests.support.tasks.touch"
    )
    assert not marker.exists()
    (rejected,) = [e for e in run.logs if e["msg"] == "Task rejected by validator"]
    assert rejected["error"] == task["last_error"]  # go-worker.md §5.1: task_path and error


def test_a_spec_naming_another_task_than_its_column_never_runs(conn, workers, tmp_path):
    # The column passes the allow-list; the spec, which the executor runs, would not.
    marker = tmp_path / "ran"
    rid = enqueue(
        conn, "tests.support.tasks.touch", str(marker), columns={"task_path": "myapp.tasks.ok"}
    )
    run = workers.run(allowed_task_modules=["myapp.tasks."])
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    (error,) = task["errors_json"]
    assert error["kind"] == "invalid_spec"
    assert task["last_error"] == (
        "task_path column 'myapp.tasks.ok' does not match spec_json task_path "
        "'tests.support.tasks.touch'"
    )
    assert not marker.exists()
    assert "Invalid task spec" in run.messages()


@SPAWN_ONLY
def test_prefix_is_not_a_module_boundary_bypass(conn, workers):
    rid = enqueue(conn, "tests.support.tasks.add", 1, 1)
    workers.run(allowed_task_modules=["tests.support.tasks_"])
    assert row(conn, rid)["errors_json"][0]["kind"] == "security_violation"


def test_oversized_payload_fails_without_running(conn, workers, tmp_path):
    marker = tmp_path / "ran"
    rid = enqueue(conn, "touch", str(marker), "x" * 500)
    workers.run(max_payload_bytes=200)
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    (error,) = task["errors_json"]
    assert error["kind"] == "infra_error"
    assert error["message"].startswith("payload size ")
    assert error["message"].endswith(" exceeds limit 200")
    assert not marker.exists()


def test_timeout_kills_the_process_group(conn, workers, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    rid = enqueue(
        conn,
        "sleep_with_grandchild",
        str(pidfile),
        60,
        columns={"timeout_seconds": 2, "max_attempts": 1},
    )
    started = time.monotonic()
    run = workers.run()
    elapsed = time.monotonic() - started
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    (error,) = task["errors_json"]
    assert error["kind"] == "timeout"
    assert error["timeout_seconds"] == 2
    assert elapsed < 30, run.stdout
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not process_alive(grandchild), timeout=10, what="grandchild to die")


@SPAWN_ONLY
def test_what_a_finished_task_left_running_is_stopped(conn, workers, tmp_path):
    # It ran on with no lease (and held the pipes open, delaying the result by 4 s).
    pidfile = tmp_path / "grandchild.pid"
    rid = enqueue(conn, "leave_grandchild", str(pidfile), 60)
    workers.run()
    assert row(conn, rid)["status"] == "SUCCESSFUL"
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not process_alive(grandchild), timeout=10, what="grandchild to die")


def test_timeout_follows_retry_policy(conn, workers):
    rid = enqueue(conn, "sleep", 30, columns={"timeout_seconds": 1, "max_attempts": 3})
    workers.run()
    task = row(conn, rid)
    assert task["status"] == "READY"
    assert task["errors_json"][0]["kind"] == "timeout"


def test_exec_timeout_caps_the_row_timeout(conn, workers):
    rid = enqueue(conn, "sleep", 30, columns={"timeout_seconds": 900, "max_attempts": 1})
    workers.run(exec_timeout="1s")
    assert row(conn, rid)["errors_json"][0]["timeout_seconds"] == 1


def test_cancellation_stops_the_task(conn, workers):
    rid = enqueue(conn, "sleep", 60)
    proc = workers.start("--heartbeat-seconds", "1")
    wait_for(lambda: row(conn, rid)["status"] == "RUNNING", what="task running")
    conn.execute("UPDATE task_runs SET cancel_requested = true WHERE result_id = %s", (rid,))
    wait_for(lambda: row(conn, rid)["status"] == "FAILED", timeout=20, what="cancelled")
    task = row(conn, rid)
    (error,) = task["errors_json"]
    assert error["kind"] == "cancelled"
    assert task["last_error"] == "Task cancelled by request"
    proc.send_signal(signal.SIGTERM)
    assert workers.finish(proc).returncode == 0


@SPAWN_ONLY
@pytest.mark.parametrize("mode", ["stdin", "file", "inline"])
def test_payload_modes(conn, workers, tmp_path, mode):
    rid = enqueue(conn, "echo", 1, "two", kwargs={"three": 3})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = workers.run("--payload-mode", mode, env={"TMPDIR": str(tmp)})
    task = row(conn, rid)
    assert task["status"] == "SUCCESSFUL", run.stdout
    assert task["return_json"] == {
        "args": [1, "two"],
        "kwargs": {"three": 3},
        "attempt": 1,
        "payload_mode": mode,
    }
    assert list(tmp.iterdir()) == []  # the payload file is removed
    if mode == "inline":
        assert "Payload mode inline exposes payload in process args; prefer stdin or file" in (
            run.messages()
        )


@SPAWN_ONLY
def test_inline_rejected_in_production(conn, workers):
    run = workers.run("--payload-mode", "inline", env={"REPROQ_PRODUCTION": "1"})
    assert run.returncode == 1
    assert "Payload mode inline disabled in production builds" in run.stderr


def test_executor_receives_postgres_jsonb_text(conn, workers):
    rid = enqueue(conn, "echo", kwargs={"b": 1, "a": "ü"})
    workers.run()
    # The spec reaches the child exactly as PostgreSQL renders the jsonb (", " and ": ").
    assert row(conn, rid)["return_json"]["kwargs"] == {"b": 1, "a": "ü"}


def test_log_files_and_truncation(conn, workers, tmp_path):
    logs = tmp_path / "logs"
    rid = enqueue(conn, "noisy", 10, 5000)
    workers.run("--logs-dir", str(logs), max_stderr_bytes=100)
    task = row(conn, rid)
    assert task["status"] == "SUCCESSFUL"
    path = logs / f"task-{rid}-attempt-1.log"
    assert task["logs_uri"] == str(path)
    content = path.read_text()
    assert content.startswith('STDOUT:\n{"ok": true, "return": "done"}\nSTDERR:\n')
    stderr_part = content.split("STDERR:\n", 1)[1]
    # the task writes 5000 bytes to stderr before its captured print: only 100 are kept
    assert stderr_part == "e" * 100 + "\n[TRUNCATED due to size limit]\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(logs.stat().st_mode & 0o777) == "0o700"


def test_child_killed_by_signal(conn, workers):
    rid = enqueue(conn, "kill_self", 9, columns={"max_attempts": 1})
    workers.run()
    task = row(conn, rid)
    assert task["status"] == "FAILED"
    assert task["last_error"] == "terminated by signal 9 (SIGKILL)"


def test_a_return_value_that_cannot_be_stored_fails_its_task_alone(conn, workers):
    # Both used to fail at the success write: the task stayed RUNNING until its lease ran
    # out, was logged and counted as a success, and took the successes batched with it down.
    infinite = enqueue(conn, "infinite", columns={"max_attempts": 1})
    nul = enqueue(conn, "nul_text", columns={"max_attempts": 1})
    good = [enqueue(conn, "add", n, 1, unique=str(n)) for n in range(4)]
    run = workers.run("--concurrency", "4")
    assert run.returncode == 0, run.stderr
    assert (row(conn, infinite)["status"], row(conn, infinite)["last_error"]) == (
        "FAILED",
        "Invalid JSON on stdout: invalid character 'I' looking for beginning of value",
    )
    refused = row(conn, nul)
    assert refused["status"] == "FAILED"
    assert refused["last_error"].startswith("the task's return value cannot be stored: ")
    assert "unsupported Unicode escape sequence" in refused["last_error"]
    assert [row(conn, rid)["status"] for rid in good] == ["SUCCESSFUL"] * 4
    successes = {e["result_id"] for e in run.logs if e["msg"] == "Task successful"}
    assert successes == set(good)


def _held_after_a_success(conn, workers, go):
    """A burst worker that has written one success (so its success writer is connected) and
    is running a task that waits for the file ``go``; returns (worker, waiting task id)."""
    first = enqueue(conn, "add", 1, 1)
    waiting = enqueue(conn, "wait_for_file", str(go))
    proc = workers.start("--burst", "--concurrency", "1", "--heartbeat-seconds", "600")
    wait_for(lambda: row(conn, first)["status"] == "SUCCESSFUL", what="the first success")
    wait_for(lambda: row(conn, waiting)["status"] == "RUNNING", what="the waiting task")
    return proc, waiting


def test_a_success_write_the_database_drops_is_made_again(conn, workers, tmp_path):
    go = tmp_path / "go"
    proc, waiting = _held_after_a_success(conn, workers, go)
    # The success writer keeps its own connection: end its session under it.
    (writer,) = wait_for(
        lambda: conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%%''SUCCESSFUL''%%' "
            "AND state = 'idle' AND pid <> pg_backend_pid()"
        ).fetchall(),
        what="the success writer's session",
    )
    conn.execute("SELECT pg_terminate_backend(%s)", writer)
    go.touch()
    run = workers.finish(proc)
    assert run.returncode == 0, run.stderr
    assert row(conn, waiting)["status"] == "SUCCESSFUL"
    mine = [e["msg"] for e in run.logs if e.get("result_id") == waiting]
    assert mine == ["Executing task", "Retrying: failed to mark success", "Task successful"]


def test_a_success_whose_lease_is_gone_is_not_written(conn, workers, tmp_path):
    go = tmp_path / "go"
    proc, waiting = _held_after_a_success(conn, workers, go)
    conn.execute("UPDATE task_runs SET leased_by = 'someone-else' WHERE result_id = %s", (waiting,))
    go.touch()
    run = workers.finish(proc)
    assert run.returncode == 0, run.stderr
    task = row(conn, waiting)
    assert (task["status"], task["leased_by"]) == ("RUNNING", "someone-else")
    (failed,) = [e for e in run.logs if e.get("result_id") == waiting and e["level"] == "ERROR"]
    assert (failed["msg"], failed["error"]) == (
        "Failed to mark success",
        "fencing failure or task not running",
    )
    assert "Task successful" not in [e["msg"] for e in run.logs if e.get("result_id") == waiting]


@SPAWN_ONLY
def test_an_error_text_postgresql_cannot_store_is_recorded_readably(conn, workers):
    # A NUL (refused by text and jsonb) or a lone surrogate in the executor's message made
    # the failure write fail: the row stayed RUNNING until its lease ran out.
    envelope = b'{"ok": false, "message": "a\\u0000b \\ud800", "exception_class": "E\\u0000"}'
    rid = enqueue(conn, "write_stdout", envelope.hex(), True, columns={"max_attempts": 1})
    run = workers.run()
    assert run.returncode == 0, run.stderr
    task = row(conn, rid)
    assert (task["status"], task["last_error"]) == ("FAILED", "a\\x00b \ufffd")
    assert task["errors_json"][0]["exception_class"] == "E\\x00"


@SPAWN_ONLY
def test_invalid_envelope(conn, workers):
    rid = enqueue(conn, "corrupt_stdout", columns={"max_attempts": 1})
    workers.run()
    # "this is not json": to Go's scanner a 't' begins the literal true.
    assert row(conn, rid)["last_error"] == (
        "Invalid JSON on stdout: invalid character 'h' in literal true (expecting 'r')"
    )


@SPAWN_ONLY
def test_missing_python_is_an_infra_error_that_stops_retrying(conn, workers):
    rid = enqueue(conn, "add", 1, 2, columns={"max_attempts": 2})
    workers.run(python_bin="/nonexistent/python")
    task = row(conn, rid)
    assert task["status"] == "READY"
    assert task["errors_json"][0]["kind"] == "infra_error"
    assert "/nonexistent/python" in task["errors_json"][0]["message"]
    conn.execute("UPDATE task_runs SET run_after = now() WHERE result_id = %s", (rid,))
    workers.run(python_bin="/nonexistent/python")
    assert row(conn, rid)["status"] == "FAILED"


def test_max_tasks(conn, workers):
    ids = [enqueue(conn, "add", i, i) for i in range(5)]
    proc = workers.start("--max-tasks", "2", "--concurrency", "1")
    run = workers.finish(proc)
    assert run.returncode == 0
    statuses = [row(conn, i)["status"] for i in ids]
    assert statuses.count("SUCCESSFUL") == 2
    assert statuses.count("READY") == 3


@SPAWN_ONLY
def test_help_lists_every_go_flag_with_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "reproq_cli", "worker", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = " ".join(result.stdout.split())
    expected = {
        "--config": "REPROQ_CONFIG",
        "--dsn": "env: DATABASE_URL",
        "--worker-id": "default: <hostname>-<pid>; env: WORKER_ID",
        "--process-role": "default: worker; env: REPROQ_PROCESS_ROLE",
        "--queues": "default: default; env: QUEUE_NAMES",
        "--allowed-task-modules": "env: ALLOWED_TASK_MODULES",
        "--concurrency": "default: 10",
        "--lease-seconds": "default: 300",
        "--heartbeat-seconds": "default: 60",
        "--reclaim-interval-seconds": "default: 60",
        "--payload-mode": "default: stdin",
        "--priority-aging-factor": "default: 60.0; env: PRIORITY_AGING_FACTOR",
        "--logs-dir": "env: REPROQ_LOGS_DIR",
        "--metrics-port": "default: 0",
        "--metrics-addr": "env: METRICS_ADDR",
        "--metrics-auth-token": "env: METRICS_AUTH_TOKEN",
        "--metrics-allow-cidrs": "env: METRICS_ALLOW_CIDRS",
        "--metrics-auth-limit": "default: 30; env: METRICS_AUTH_LIMIT",
        "--metrics-auth-window": "default: 1m0s; env: METRICS_AUTH_WINDOW",
        "--metrics-auth-max-entries": "default: 1000; env: METRICS_AUTH_MAX_ENTRIES",
        "--metrics-tls-cert": "env: METRICS_TLS_CERT",
        "--metrics-tls-key": "env: METRICS_TLS_KEY",
        "--metrics-tls-client-ca": "env: METRICS_TLS_CLIENT_CA",
        "--burst": "",
        "--max-tasks": "",
        "--log-format": "",
    }
    for flag, fragment in expected.items():
        assert f"{flag} " in text, flag
        segment = text.split(f"{flag} ", 1)[1][:220]
        assert fragment in segment, (flag, segment)


@SPAWN_ONLY
def test_bad_flag_value_is_a_usage_error(workers):
    run = workers.run("--concurrency", "0")
    assert run.returncode == 2
    assert "--concurrency" in run.stderr
    run = workers.run("--payload-mode", "carrier-pigeon")
    assert run.returncode == 2
    assert "stdin, file, inline" in run.stderr


@SPAWN_ONLY
def test_low_memory_mode_and_memory_logger(conn, workers):
    enqueue(conn, "add", 1, 1)
    run = workers.run(env={"LOW_MEMORY_MODE": "yes", "REPROQ_MEMORY_LOG_INTERVAL": "30s"})
    assert run.returncode == 0
    assert "Low memory mode enabled; metrics/health/events disabled" in run.messages()
    (memory,) = [e for e in run.logs if e["msg"] == "reproq memory usage"]
    assert memory["rss_bytes"] > 10_000_000


@SPAWN_ONLY
def test_invalid_memory_log_interval_is_reported(conn, workers):
    run = workers.run(env={"REPROQ_MEMORY_LOG_INTERVAL": "soon"})
    (warning,) = [e for e in run.logs if e["msg"].startswith("Invalid REPROQ_MEMORY_LOG")]
    assert warning["msg"] == "Invalid REPROQ_MEMORY_LOG_INTERVAL; skipping memory logger"
    assert (warning["value"], warning["error"]) == ("soon", "invalid duration 'soon'")
    assert "reproq memory usage" not in run.messages()
    # A digit str.isdigit() knows and float() does not ended the worker with exit 3.
    run = workers.run(env={"REPROQ_MEMORY_LOG_INTERVAL": "\u00b2"})
    assert run.returncode == 0, run.stderr
    assert "Invalid REPROQ_MEMORY_LOG_INTERVAL; skipping memory logger" in run.messages()


@SPAWN_ONLY
def test_a_reclaim_interval_longer_than_threading_waits(conn, workers):
    # Event.wait() overflowed: the reclaim thread died with a traceback on stderr. The
    # longest interval a Go duration holds is accepted; past it, a one-line usage error.
    rid = enqueue(conn, "add", 1, 1)
    run = workers.run("--reclaim-interval-seconds", str(MAX_SECONDS))
    assert run.returncode == 0, run.stderr
    assert row(conn, rid)["status"] == "SUCCESSFUL"
    assert "Traceback" not in run.stderr
    refused = workers.run("--reclaim-interval-seconds", "99999999999")
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        f"error: invalid value for --reclaim-interval-seconds: 99999999999 must be <= {MAX_SECONDS}"
    ), refused.stderr


@SPAWN_ONLY
def test_text_log_format(conn, workers):
    enqueue(conn, "add", 1, 1)
    run = workers.run("--log-format", "text")
    assert run.returncode == 0
    assert run.logs == []
    assert " INFO  Task successful  worker_id=" in run.stdout


@SPAWN_ONLY
def test_unreachable_database_is_one_line(workers):
    workers.dsn = "postgresql://u:pw@127.0.0.1:1/none"
    run = workers.run()
    assert run.returncode == 1
    assert run.stderr.startswith("error: cannot connect to postgresql://u:****@127.0.0.1:1/none")
    assert "Traceback" not in run.stderr


@SPAWN_ONLY
def test_unmigrated_database_is_one_line(workers, empty_db_dsn):
    workers.dsn = empty_db_dsn
    run = workers.run()
    assert run.returncode == 1
    assert "is not migrated: table task_runs is missing" in run.stderr
    assert "hint: run `reproq migrate`" in run.stderr


@SPAWN_ONLY
def test_burst_gives_up_when_every_poll_fails(conn, workers):
    enqueue(conn, "add", 1, 1)
    # tables exist (the start-up check passes) but the claim statement cannot run
    conn.execute("ALTER TABLE reproq_queue_controls RENAME COLUMN paused TO paused_renamed")
    run = workers.run()
    assert run.returncode == 1
    assert run.messages().count("Polling error") == 5
    assert run.stderr.startswith("error: giving up after 5 failed polls: database error in claim")


@SPAWN_ONLY
def test_an_interpreter_without_the_executor_is_named_once(conn, workers, tmp_path):
    """python_bin defaults to python3 on PATH, often an environment without reproq: every task
    then fails with the Go worker's "Invalid JSON on stdout". The worker says why, once."""
    bare = tmp_path / "python-without-reproq"
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    ids = [enqueue(conn, "add", n, n, columns={"max_attempts": 1}) for n in range(3)]
    run = workers.run(python_bin=str(bare))
    assert [row(conn, i)["last_error"] for i in ids] == [
        "Invalid JSON on stdout: unexpected end of JSON input"
    ] * 3
    said = [entry for entry in run.logs if entry["msg"].startswith("Executor cannot run")]
    assert [(e["level"], e["msg"], e["error"], e["hint"]) for e in said] == [
        (
            "ERROR",
            "Executor cannot run; tasks fail until it can",
            f"{bare} cannot import tests.support.executor",
            "install reproq[django] for that interpreter or set worker.python_bin",
        )
    ]

    # A task that exits with an error and no answer under a working interpreter: the check
    # finds the executor, and nothing is said.
    silent = enqueue(conn, "exit_silently", 3, columns={"max_attempts": 1})
    run = workers.run()
    assert row(conn, silent)["last_error"] == "Invalid JSON on stdout: unexpected end of JSON input"
    assert run.returncode == 0
    assert not [m for m in run.messages() if m.startswith("Executor cannot run")]
