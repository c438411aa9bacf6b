"""`reproq beat`: passes, savepoints, dedupe and leader hand-over, with real processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys

from reproq_cli.spec import periodic_spec_hash
from tests.support.harness import parse_logs, wait_for, waiting_on_task_runs
from tests.support.specs import periodic_spec

INSERT = (
    "INSERT INTO periodic_tasks (name, cron_expr, task_path, payload_json, next_run_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)


def beat(db_dsn, tmp_path, *args, name="beat"):
    out = (tmp_path / f"{name}.out").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "reproq_cli", "beat", "--dsn", db_dsn, *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )


def test_once_enqueues_due_tasks_with_the_go_spec_bytes(run_cli, conn, db_dsn):
    conn.execute(INSERT, ("test_pt", "* * * * *", "myapp.pt", '{"args": [1], "kwargs": {"a": 1}}',
                          "2025-01-01T00:00:00Z"))  # fmt: skip
    conn.execute(INSERT, ("broken", "@daily", "myapp.x", "{}", "2025-01-01T00:00:00Z"))
    conn.execute(INSERT, ("later", "* * * * *", "myapp.y", "{}", "2999-01-01T00:00:00Z"))
    (before,) = conn.execute("SELECT clock_timestamp()").fetchone()
    result = run_cli("beat", "--once", "--dsn", db_dsn)
    assert result.returncode == 0  # even though one row failed, like the Go beat
    logs = parse_logs(result.stdout)
    assert [e["msg"] for e in logs] == [
        "Starting reproq beat",
        "Periodic task not enqueued",
        "Failed to enqueue periodic tasks",
        "Enqueued periodic tasks",
        "Beat run complete",
    ]
    assert logs[0]["interval"] == 30_000_000_000  # nanoseconds, as Go's slog writes it
    assert "invalid cron expr for broken: parser does not accept descriptors" in logs[1]["error"]
    assert "invalid cron expr for broken: parser does not accept descriptors" in logs[2]["error"]
    (run,) = conn.execute(
        "SELECT spec_json::text, spec_hash, status, run_after, task_path, max_attempts"
        " FROM task_runs"
    ).fetchall()
    assert run[1] == "faadc8773a0dac18bae98fa2157bf7f7c0c5a37b2aab4c43cf14b6ef3a56941e"
    assert json.loads(run[0])["periodic_name"] == "test_pt"
    assert run[2:3] == ("READY",)
    assert run[4:] == ("myapp.pt", 3)
    # The first whole minute strictly after the pass's own time, which lies between `before`
    # and `after`. Not compared with now(): a pass that ends just before a minute turns leaves
    # a next run ("* * * * *") that is due by the time this reads it.
    (after,) = conn.execute("SELECT clock_timestamp()").fetchone()
    last, nxt = conn.execute(
        "SELECT last_run_at, next_run_at FROM periodic_tasks WHERE name = 'test_pt'"
    ).fetchone()
    assert last.year == 2025
    assert (nxt.second, nxt.microsecond) == (0, 0)
    assert before < nxt <= after + dt.timedelta(minutes=1)
    # the broken row stays due and is retried next pass; the future row is untouched
    assert conn.execute(
        "SELECT next_run_at < now() FROM periodic_tasks WHERE name = 'broken'"
    ).fetchone() == (True,)


def test_every_row_that_fails_is_logged_with_its_reason(run_cli, conn, db_dsn):
    # The Go-style summary keeps only the last error; the others were logged nowhere.
    conn.execute(INSERT, ("dow7", "0 9 * * 7", "myapp.x", "{}", "2025-01-01T00:00:00Z"))
    conn.execute(INSERT, ("payload", "* * * * *", "myapp.y", '"str"', "2025-01-01T00:00:00Z"))
    logs = parse_logs(run_cli("beat", "--once", "--dsn", db_dsn).stdout)
    reasons = sorted(e["error"] for e in logs if e["msg"] == "Periodic task not enqueued")
    assert len(reasons) == 2
    assert reasons[0].startswith("failed to parse periodic payload for payload: ")
    assert reasons[1].startswith("invalid cron expr for dow7: ")
    (summary,) = [e for e in logs if e["msg"] == "Failed to enqueue periodic tasks"]
    assert summary["error"].startswith("failed to enqueue 2 periodic tasks (last error: ")


def test_rows_that_used_to_crash_the_pass_fail_alone(run_cli, conn, db_dsn):
    # Each of these raised out of the pass: beat exited 3 and enqueued none of the others.
    due = "2025-01-01T00:00:00Z"
    conn.execute(INSERT, ("zone_dir", "TZ=America * * * * *", "myapp.a", "{}", due))
    conn.execute(INSERT, ("digit", "*/² * * * *", "myapp.b", "{}", due))
    conn.execute(INSERT, ("good", "* * * * *", "myapp.d", "{}", due))
    result = run_cli("beat", "--once", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    logs = parse_logs(result.stdout)
    reasons = sorted(e["error"] for e in logs if e["msg"] == "Periodic task not enqueued")
    assert reasons == [
        "invalid cron expr for digit: failed to parse int from ²: invalid step in '*/²'",
        "invalid cron expr for zone_dir: provided bad location America: unknown time zone America",
    ]
    assert conn.execute("SELECT task_path FROM task_runs").fetchall() == [("myapp.d",)]


def test_payloads_nested_past_pythons_decoder_are_read_as_go_reads_them(run_cli, conn, db_dsn):
    # Was "payload JSON is nested deeper than this beat can read (about 900 levels)" for a
    # payload Go's beat enqueues; past Go's own 10,000 levels it is Go's error.
    due = "2025-01-01T00:00:00Z"
    deep = "[" * 3000 + "]" * 3000
    conn.execute(
        INSERT, ("deep", "* * * * *", "myapp.c", f'{{"args": {deep}, "kwargs": {{"a": 1}}}}', due)
    )
    conn.execute(INSERT, ("deeper", "* * * * *", "myapp.d", "[" * 10_001 + "]" * 10_001, due))
    result = run_cli("beat", "--once", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    logs = parse_logs(result.stdout)
    assert [e["error"] for e in logs if e["msg"] == "Periodic task not enqueued"] == [
        "failed to parse periodic payload for deeper: invalid payload JSON: "
        "invalid character '[' exceeded max depth"
    ]
    (run,) = conn.execute("SELECT spec_hash, task_path FROM task_runs").fetchall()
    expected = periodic_spec(
        task_path="myapp.c", args_json=deep, kwargs_json='{"a":1}', periodic_name="deep"
    )
    assert expected.startswith('{"task_path":"myapp.c","args":[[[')
    assert run == (periodic_spec_hash(expected), "myapp.c")
    assert conn.execute("SELECT spec_json = %s::jsonb FROM task_runs", (expected,)).fetchone() == (
        True,
    )


def test_a_pass_the_stop_signal_catches_is_rolled_back(conn, conn_for, db_dsn, tmp_path):
    # The pass waited out a lock, then committed its runs after SIGTERM; Go's pass fails on its
    # cancelled context. Then it waited out the lock and rolled back; now the stop cancels
    # the waiting statement, and the beat exits with the lock still held.
    conn.execute(INSERT, ("good", "* * * * *", "myapp.a", "{}", "2025-01-01T00:00:00Z"))
    blocker = conn_for(db_dsn)
    with blocker.transaction():
        blocker.execute("LOCK TABLE task_runs IN EXCLUSIVE MODE")  # the run's INSERT waits
        proc = beat(db_dsn, tmp_path)
        wait_for(lambda: waiting_on_task_runs(conn), what="the pass waiting on the lock")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not waiting_on_task_runs(conn)
    messages = [e["msg"] for e in parse_logs((tmp_path / "beat.out").read_text())]
    assert "Beat pass rolled back: shutting down" in messages
    assert "Enqueued periodic tasks" not in messages
    assert conn.execute("SELECT count(*) FROM task_runs").fetchone() == (0,)
    assert conn.execute(
        "SELECT last_run_at IS NULL FROM periodic_tasks WHERE name = 'good'"
    ).fetchone() == (True,)


def test_bad_interval_and_unreachable_database(run_cli):
    bad = run_cli("beat", "--interval", "0s", "--dsn", "postgresql://x@127.0.0.1:1/x")
    assert bad.returncode == 2
    assert "--interval" in bad.stderr
    down = run_cli("beat", "--once", "--dsn", "postgresql://u:pw@127.0.0.1:1/none")
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot connect to postgresql://u:****@127.0.0.1:1/none")


def _runs_per_task(conn) -> dict[str, int]:
    rows = conn.execute(
        "SELECT spec_json ->> 'periodic_name', count(*) FROM task_runs GROUP BY 1"
    ).fetchall()
    return dict(rows)


def test_two_beats_one_leader_and_hand_over(conn, db_dsn, tmp_path):
    for i in range(50):
        conn.execute(INSERT, (f"p{i}", "0 0 1 1 *", "myapp.tasks.t", f'{{"args": [{i}]}}',
                              "2025-01-01T00:00:00Z"))  # fmt: skip
    first = beat(db_dsn, tmp_path, "--interval", "200ms", name="first")
    wait_for(lambda: len(_runs_per_task(conn)) == 50, timeout=30, what="first pass")
    second = beat(db_dsn, tmp_path, "--interval", "200ms", name="second")
    wait_for(
        lambda: "Another beat leads" in (tmp_path / "second.out").read_text(),
        timeout=30,
        what="second beat to stand by",
    )
    # make every schedule due again: only the leader may enqueue, each exactly once. (Each
    # tick gets its own past time: scheduled_at has second precision and is part of the hash.)
    conn.execute("UPDATE periodic_tasks SET next_run_at = '2025-02-01T00:00:00Z'")
    wait_for(lambda: set(_runs_per_task(conn).values()) == {2}, timeout=30, what="second tick")
    # a later pass (a new schedule shows it ran) still adds nothing for the old ones
    conn.execute(INSERT, ("probe", "0 0 1 1 *", "myapp.tasks.t", "{}", "2025-01-01T00:00:00Z"))
    wait_for(lambda: _runs_per_task(conn).get("probe") == 1, timeout=30, what="probe")
    counts = _runs_per_task(conn)
    assert counts.pop("probe") == 1
    assert set(counts.values()) == {2}
    conn.execute("DELETE FROM periodic_tasks WHERE name = 'probe'")
    first.send_signal(signal.SIGKILL)
    first.wait()
    conn.execute("UPDATE periodic_tasks SET next_run_at = '2025-03-01T00:00:00Z'")
    wait_for(
        lambda: {v for k, v in _runs_per_task(conn).items() if k != "probe"} == {3},
        timeout=30,
        what="hand-over",
    )
    assert "Beat is the leader for this database" in (tmp_path / "second.out").read_text()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert "Shutting down beat" in (tmp_path / "second.out").read_text()


def test_beat_reconnects_after_losing_its_connection(conn, db_dsn, tmp_path):
    conn.execute(INSERT, ("p", "0 0 1 1 *", "myapp.tasks.t", "{}", "2025-01-01T00:00:00Z"))
    proc = beat(db_dsn, tmp_path, "--interval", "200ms", "--log-format", "text")
    wait_for(lambda: _runs_per_task(conn).get("p") == 1, timeout=30, what="first pass")
    # kill the beat's server session, as a PostgreSQL restart or failover would
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    conn.execute("UPDATE periodic_tasks SET next_run_at = '2025-02-01T00:00:00Z'")
    wait_for(lambda: _runs_per_task(conn).get("p") == 2, timeout=30, what="pass after reconnect")
    output = (tmp_path / "beat.out").read_text()
    assert "Reconnected to the database" in output
    assert output.count("Beat is the leader for this database") == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_active_duplicate_is_counted_not_inserted(run_cli, conn, db_dsn):
    conn.execute(INSERT, ("dup", "0 0 1 1 *", "myapp.tasks.t", "{}", "2025-01-01T00:00:00Z"))
    assert run_cli("beat", "--once", "--dsn", db_dsn).returncode == 0
    # the same schedule due at the same time again while its run is still READY
    conn.execute("UPDATE periodic_tasks SET next_run_at = '2025-01-01T00:00:00Z'")
    result = run_cli("beat", "--once", "--dsn", db_dsn)
    logs = parse_logs(result.stdout)
    enqueued = next(e for e in logs if e["msg"] == "Enqueued periodic tasks")
    assert (enqueued["count"], enqueued["new"]) == (1, 0)
    assert _runs_per_task(conn) == {"dup": 1}


def test_beat_memory_logger(run_cli, db_dsn):
    result = run_cli("beat", "--once", "--dsn", db_dsn, env={"REPROQ_MEMORY_LOG_INTERVAL": "1m"})
    (entry,) = [e for e in parse_logs(result.stdout) if e["msg"] == "reproq memory usage"]
    assert entry["rss_bytes"] > 0
    assert entry["role"] == "beat"
