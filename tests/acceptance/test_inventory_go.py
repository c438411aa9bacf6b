"""Items of the Go worker's test inventory (go-worker.md §11, §13) that no other test pinned
down: each runs the real worker or beat against a real PostgreSQL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest

from reproq_cli import __version__
from tests.support.harness import (
    REPO_ROOT,
    WorkerFactory,
    enqueue,
    holds_for,
    parse_logs,
    row,
    wait_for,
)
from tests.support.http import EventStream, served_port
from tests.support.ports import free_port

LOCAL = ("--metrics-addr", "127.0.0.1:0")


def _logs(workers: WorkerFactory, proc: subprocess.Popen[str]) -> list[dict]:
    return parse_logs(workers.output(proc))


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# --- runner: events and registry (TestPublishEventAddsRoleMetadata, TestEventFilterMatches,
# TestRunnerRegistersVersion) ----------------------------------------------------------------


def test_events_carry_the_process_role_and_filter_on_every_field(conn, workers, stop_workers):
    proc = workers.start(*LOCAL, "--worker-id", "w-inv", "--process-role", "scheduler")
    port = served_port(workers, proc)
    # The registry row names this worker once, with the version it runs (the HTTP server
    # may answer before the worker registers).
    registered = wait_for(
        lambda: conn.execute("SELECT worker_id, version FROM reproq_workers").fetchall(),
        what="the registry row",
    )
    assert registered == [("w-inv", __version__)]
    first = enqueue(conn, "add", 1, 1)
    second = enqueue(conn, "add", 2, 2)
    everything = EventStream(port, "/events?worker_id=w-inv&queue=default").start()
    wait_for(
        lambda: everything.has("task_success", first) and everything.has("task_success", second),
        what="both successes on the stream",
    )
    started = [e for e in everything.events() if e["type"] == "task_started"]
    assert {e["metadata"]["role"] for e in started} == {"scheduler"}

    # Late subscribers get the replay, filtered: every given field must match.
    one = EventStream(port, f"/events?worker_id=w-inv&queue=default&task_id={first}").start()
    wait_for(lambda: one.has("task_success", first), what="the replay of the first task")
    assert {e["task_id"] for e in one.events()} == {first}
    strangers = [
        EventStream(port, path).start()
        for path in (
            "/events?worker_id=someone-else",
            f"/events?worker_id=someone-else&task_id={first}",
            f"/events?worker_id=w-inv&queue=elsewhere&task_id={first}",
        )
    ]
    holds_for(
        lambda: not any(s.events() for s in strangers), 1.0, what="no event for other filters"
    )
    # Closing a stream the server still holds open blocks until its next ping: end the
    # server first.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    streams = (everything, one, *strangers)
    wait_for(lambda: all(s.closed for s in streams), timeout=10, what="the streams to end")
    for stream in streams:
        stream.close()


def test_low_memory_mode_serves_nothing_and_zero_does_not_turn_it_on(conn, workers, stop_workers):
    port = free_port()
    rid = enqueue(conn, "add", 1, 1)
    addr = f"127.0.0.1:{port}"
    low = workers.start("--metrics-addr", addr, env={"LOW_MEMORY_MODE": "true"})
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", what="a task run in low memory")
    assert low.poll() is None
    assert _refused(port), "low memory mode must not open the metrics port"
    low.send_signal(signal.SIGTERM)
    assert workers.finish(low).returncode == 0

    normal = workers.start("--metrics-addr", addr, env={"LOW_MEMORY_MODE": "0"})
    assert served_port(workers, normal) == port
    messages = [e["msg"] for e in _logs(workers, normal)]
    assert not any("low memory" in m.lower() for m in messages), messages


# --- §13.3 memory logger ---------------------------------------------------------------------


def test_memory_logger_repeats_with_python_fields(conn, workers, stop_workers):
    rid = enqueue(conn, "sleep", 30)
    proc = workers.start(env={"REPROQ_MEMORY_LOG_INTERVAL": "0.2"})
    wait_for(lambda: row(conn, rid)["status"] == "RUNNING", what="the task running")

    def busy_entries() -> list[dict]:
        return [
            e
            for e in _logs(workers, proc)
            if e["msg"] == "reproq memory usage" and e["running_tasks"] == 1
        ]

    entries = wait_for(lambda: len(busy_entries()) >= 3 and busy_entries(), what="repeated logs")
    for entry in entries:
        assert entry["level"] == "INFO"
        assert entry["rss_bytes"] > 10_000_000
        assert all(isinstance(entry[k], int) for k in ("gc_gen0", "gc_gen1", "gc_gen2"))
        assert entry["threads"] > 1
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutdown requested" in workers.output(proc), what="the first signal seen")
    proc.send_signal(signal.SIGTERM)  # stop the sleeping task now
    assert workers.finish(proc).returncode == 0


def test_beat_ignores_low_memory_mode_and_reports_a_bad_memory_interval(run_cli, conn, db_dsn):
    conn.execute(
        "INSERT INTO periodic_tasks (name, cron_expr, task_path, payload_json, next_run_at)"
        " VALUES ('pt', '* * * * *', 'myapp.pt', '{}', '2025-01-01T00:00:00Z')"
    )
    env = {"LOW_MEMORY_MODE": "1", "REPROQ_MEMORY_LOG_INTERVAL": "0s"}
    result = run_cli("beat", "--once", "--dsn", db_dsn, env=env)
    assert result.returncode == 0, result.stderr
    logs = parse_logs(result.stdout)
    (warning,) = [e for e in logs if e["msg"].startswith("Invalid REPROQ_MEMORY_LOG_INTERVAL")]
    assert (warning["level"], warning["value"]) == ("WARN", "0s")
    assert not any("low memory" in e["msg"].lower() for e in logs)
    assert "reproq memory usage" not in [e["msg"] for e in logs]
    assert conn.execute("SELECT task_path FROM task_runs").fetchall() == [("myapp.pt",)]


# --- runner: TestSleepHandlesZeroBackoffRange ------------------------------------------------


def test_a_zero_backoff_range_keeps_polling(conn, workers, stop_workers):
    proc = workers.start("--no-listen", poll_min_backoff="0s", poll_max_backoff="0s")
    wait_for(lambda: "Starting reproq worker" in workers.output(proc), what="the worker")
    # Enqueued after start: only a poll finds it (no LISTEN), so the worker must be polling.
    rid = enqueue(conn, "add", 2, 3)
    wait_for(lambda: row(conn, rid)["status"] == "SUCCESSFUL", what="the task found by polling")
    proc.send_signal(signal.SIGTERM)
    run = workers.finish(proc)
    assert run.returncode == 0
    assert "Traceback" not in run.stderr


# --- executor: TestShellExecutor_PayloadTooLarge ---------------------------------------------


def test_an_oversized_payload_names_its_size_and_the_limit(conn, workers):
    rid = enqueue(conn, "add", 1, "x" * 300, columns={"max_attempts": 5})
    # The payload is spec_json as PostgreSQL renders the jsonb, in bytes.
    (size,) = conn.execute(
        "SELECT octet_length(spec_json::text) FROM task_runs WHERE result_id = %s", (rid,)
    ).fetchone()
    workers.run(max_payload_bytes=200)
    task = row(conn, rid)
    assert (task["status"], task["attempts"]) == ("FAILED", 1)  # it can never fit: no retry
    assert task["last_error"] == f"payload size {size} exceeds limit 200"


# --- §13.1 signals ---------------------------------------------------------------------------


def test_sigint_alone_drains_like_sigterm(conn, workers):
    rid = enqueue(conn, "sleep", 1)
    later = enqueue(conn, "add", 1, 1)
    proc = workers.start("--concurrency", "1")
    workers.wait_executing(proc)
    proc.send_signal(signal.SIGINT)
    run = workers.finish(proc, timeout=30)
    assert run.returncode == 0
    assert "Shutdown requested, waiting for tasks..." in run.messages()
    assert row(conn, rid)["status"] == "SUCCESSFUL"
    assert row(conn, later)["status"] == "READY"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_beat_stops_on_either_signal(db_dsn, tmp_path, signum):
    out = tmp_path / "beat.out"
    with out.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reproq_cli", "beat", "--dsn", db_dsn, "--interval", "1h"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    try:
        wait_for(lambda: "Beat is the leader" in out.read_text(), what="the beat leading")
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 0
        assert "Shutting down beat" in out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cancel_during_a_warm_shutdown_wins(conn, workers):
    rid = enqueue(conn, "sleep", 60)
    proc = workers.start("--heartbeat-seconds", "1")
    workers.wait_executing(proc)
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutdown requested" in workers.output(proc), what="the signal seen")
    conn.execute("UPDATE task_runs SET cancel_requested = true WHERE result_id = %s", (rid,))
    run = workers.finish(proc, timeout=20)
    assert run.returncode == 0
    task = row(conn, rid)
    assert (task["status"], task["errors_json"][-1]["kind"]) == ("FAILED", "cancelled")


@pytest.mark.executors("spawn", "pool")
def test_a_cancel_the_heartbeat_has_not_seen_wins_over_a_hard_stop(conn, workers):
    # Without this, the stopped task went back to READY with its attempt returned and ran
    # again in full, though its cancellation had been requested.
    rid = enqueue(conn, "sleep", 60)
    proc = workers.start("--heartbeat-seconds", "600")
    workers.wait_executing(proc)
    conn.execute("UPDATE task_runs SET cancel_requested = true WHERE result_id = %s", (rid,))
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutdown requested" in workers.output(proc), what="the first signal seen")
    proc.send_signal(signal.SIGTERM)
    run = workers.finish(proc, timeout=30)
    assert run.returncode == 0
    task = row(conn, rid)
    assert (task["status"], task["attempts"]) == ("FAILED", 1), task["errors_json"]
    assert [e["kind"] for e in task["errors_json"]] == ["cancelled"]
    assert task["last_error"] == "Task cancelled by request"


# --- queue: TestTriageLifecycle ----------------------------------------------------------------


def test_triage_retry_clears_the_failure_columns(run_cli, conn, db_dsn):
    rid = enqueue(conn, "fail", columns={"max_attempts": 1})
    conn.execute(
        "UPDATE task_runs SET status = 'FAILED', attempts = 1, failed_at = now(),"
        " finished_at = now(), last_error = 'boom',"
        ' errors_json = \'[{"kind": "app_error", "message": "boom"}]\''
    )
    listed = json.loads(run_cli("triage", "list", "--dsn", db_dsn, "--json").stdout)
    assert [(r["result_id"], r["last_error"]) for r in listed] == [(rid, "boom")]
    assert listed[0]["failed_at"]
    result = run_cli("triage", "retry", "--dsn", db_dsn, "--id", str(rid))
    assert result.stdout == "Retried 1 task(s)\n", result.stderr
    task = row(conn, rid)
    assert (task["status"], task["attempts"]) == ("READY", 0)
    assert (task["last_error"], task["failed_at"]) == (None, None)


# --- config: TestBindFlagsParsesAllowedTaskModules, TestLoadLogsDirFromEnv, through the worker --


def test_allow_list_flag_and_logs_dir_env_reach_the_worker(conn, workers, tmp_path):
    # The config file allows tests.support.; the flag replaces that list.
    refused = enqueue(conn, "add", 1, 1)
    workers.run("--allowed-task-modules", "pkg.one.,pkg.two.")
    assert row(conn, refused)["errors_json"][0]["kind"] == "security_violation"

    logs = tmp_path / "env-logs"
    allowed = enqueue(conn, "add", 2, 2)
    run = workers.run(
        "--allowed-task-modules", "pkg.one., tests.support.,,", env={"REPROQ_LOGS_DIR": str(logs)}
    )
    task = row(conn, allowed)
    assert task["status"] == "SUCCESSFUL", run.stdout
    assert task["logs_uri"] == str(logs / f"task-{allowed}-attempt-1.log")
