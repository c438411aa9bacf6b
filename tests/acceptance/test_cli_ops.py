"""`reproq cancel` and `reproq logs` against a real database."""

from __future__ import annotations

import json
import re

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
    # As in Go: a missing --id is fatal (exit 1); only a flag that does not parse exits 2.
    missing = run_cli("cancel", "--dsn", db_dsn)
    assert missing.returncode == 1
    assert "error: DSN and --id required" in missing.stderr
    negative = run_cli("cancel", "--dsn", db_dsn, "--id", "-1")
    assert (negative.returncode, negative.stdout) == (0, "No RUNNING task found for result_id -1\n")
    huge = run_cli("cancel", "--dsn", db_dsn, "--id", "99999999999999999999")
    assert huge.returncode == 2
    assert "99999999999999999999 is out of range (a 64-bit integer)" in huge.stderr
    # Go's flag package reads integers as Go literals: 0x10 is 16, 010 is 8, 5_0 is 50.
    for given, meant in (("0x10", 16), ("010", 8), ("5_0", 50), ("-0b11", -3)):
        found = run_cli("cancel", "--dsn", db_dsn, "--id", given)
        assert found.stdout == f"No RUNNING task found for result_id {meant}\n", found.stderr
    for bad in ("08", "1__0", " 5", "٣"):  # not octal, a doubled underscore, a space, not ASCII
        refused = run_cli("cancel", "--dsn", db_dsn, "--id", bad)
        assert refused.returncode == 2
        assert f"{bad!r} is not a valid integer" in refused.stderr


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
        f"  logs_dir: {tmp_path / 'logs' / 'tasks'}\nmetrics:\n  addr: 127.0.0.1:9999\n"
    )
    result = run_cli("doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The folders it makes are private, every one, as the worker makes them.
    for made in (tmp_path / "logs", tmp_path / "logs" / "tasks"):
        assert made.stat().st_mode & 0o777 == 0o700, made
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


def test_a_bad_worker_setting_does_not_stop_operator_commands(run_cli, db_dsn, tmp_path):
    # The operator commands read only the DSN from the file: a typo in a worker setting must
    # not keep anyone from cancelling a task or listing limits (the worker still refuses it).
    (tmp_path / "reproq.yaml").write_text(f"dsn: '{db_dsn}'\nworker:\n  concurrency: abc\n")
    listed = run_cli("limit", "ls", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert any(r["key"] == "global" for r in json.loads(listed.stdout))
    assert run_cli("triage", "list", cwd=tmp_path).stdout == "No failed tasks.\n"
    worker = run_cli("worker", "--burst", cwd=tmp_path)
    assert worker.returncode == 1
    assert worker.stderr.startswith("error: invalid worker.concurrency in reproq.yaml")


def test_limit_set_ls_rm(run_cli, db_dsn):
    empty = run_cli("limit", "ls", "--dsn", db_dsn, env={"TZ": "UTC"})
    assert empty.stdout.splitlines()[0] == "Key\tTokens/s\tBurst\tCurrent\tLastRefill"
    assert empty.stdout.splitlines()[1].startswith("global\t0.00\t1\t0.00\t")
    # RFC 3339 as Go writes it in a UTC zone: second precision, "Z".
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", empty.stdout.split("\t")[-1].strip())
    result = run_cli(
        "limit", "set", "--dsn", db_dsn, "--key", "queue:mail", "--rate", "2.5", "--burst", "4"
    )
    assert result.stdout == "Set rate limit queue:mail: 2.50 tokens/sec, burst 4\n"
    listed = json.loads(run_cli("limit", "ls", "--dsn", db_dsn, "--json").stdout)
    mail = next(r for r in listed if r["key"] == "queue:mail")
    assert (mail["tokens_per_second"], mail["burst_size"], mail["current_tokens"]) == (2.5, 4, 4.0)
    # The column is a float4: 0.045 is stored as 0.0450000018, which Go's %.2f rounds up.
    run_cli("limit", "set", "--dsn", db_dsn, "--key", "queue:odd", "--rate", "0.045")
    odd = run_cli("limit", "ls", "--dsn", db_dsn).stdout
    assert "queue:odd\t0.05\t1\t1.00\t" in odd
    run_cli("limit", "rm", "--dsn", db_dsn, "--key", "queue:odd")
    assert run_cli("limit", "rm", "--dsn", db_dsn, "--key", "queue:mail").stdout == (
        "Deleted 1 rate limit(s) for queue:mail\n"
    )
    assert run_cli("limit", "rm", "--dsn", db_dsn, "--key", "queue:mail").stdout == (
        "Deleted 0 rate limit(s) for queue:mail\n"
    )
    for args, message in (
        (["--rate", "1"], "DSN and --key required"),
        (["--key", "k", "--rate", "-1"], "tokens_per_second must be >= 0"),
        (["--key", "k", "--burst", "0"], "burst_size must be > 0"),
    ):
        bad = run_cli("limit", "set", "--dsn", db_dsn, *args)
        assert bad.returncode == 1  # Go's fatal, not a flag error
        assert f"error: {message}" in bad.stderr
    run_cli("limit", "rm", "--dsn", db_dsn, "--key", "global")
    assert run_cli("limit", "ls", "--dsn", db_dsn).stdout == "No rate limits configured.\n"


def test_replay(run_cli, conn, db_dsn):
    from tests.support.harness import row

    rid = enqueue(conn, "add", 1, 2, columns={"lock_key": "L", "priority": 3})
    busy = run_cli("replay", "--dsn", db_dsn, "--id", str(rid))
    assert busy.returncode == 1
    assert f"an identical task is already READY (result_id {rid})" in busy.stderr
    conn.execute(
        "UPDATE task_runs SET status = 'FAILED', attempts = 3, errors_json = '[{\"k\": 1}]'"
    )
    result = run_cli("replay", "--dsn", db_dsn, "--id", str(rid))
    assert result.returncode == 0, result.stderr
    new_id = int(result.stdout.split()[-1])
    assert result.stdout == f"Requeued task {rid} as new result_id {new_id}\n"
    copy, source = row(conn, new_id), row(conn, rid)
    assert (copy["status"], copy["attempts"], copy["errors_json"]) == ("READY", 0, [])
    for column in ("spec_json", "spec_hash", "lock_key", "priority", "task_path", "max_attempts"):
        assert copy[column] == source[column], column
    conn.execute("UPDATE task_runs SET status = 'SUCCESSFUL' WHERE result_id = %s", (new_id,))
    spec_hash = source["spec_hash"].strip()
    by_hash = run_cli("replay", "--dsn", db_dsn, "--spec-hash", spec_hash, "--json")
    assert json.loads(by_hash.stdout)["source_id"] == new_id  # the newest row with that hash
    assert run_cli("replay", "--dsn", db_dsn).returncode == 1
    negative = run_cli("replay", "--dsn", db_dsn, "--id", "-5")  # Go looks it up
    assert (negative.returncode, "no task with result_id -5" in negative.stderr) == (1, True)
    assert "exactly one of --id or --spec-hash" in run_cli("replay", "--dsn", db_dsn).stderr
    missing = run_cli("replay", "--dsn", db_dsn, "--id", "9999")
    assert "error: no task with result_id 9999" in missing.stderr
    unknown = run_cli("replay", "--dsn", db_dsn, "--spec-hash", "abc")
    assert "error: no task with spec_hash abc" in unknown.stderr
    # A row whose spec names no task (its column does): the copy would have no task_path.
    bare = conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash, task_path, status)"
        " VALUES ('{}', 'bare', 'tests.support.tasks.add', 'FAILED') RETURNING result_id"
    ).fetchone()[0]
    refused = run_cli("replay", "--dsn", db_dsn, "--id", str(bare))
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[0] == (
        f"error: task {bare} cannot be replayed: its spec_json has no task_path"
    )
    assert len(refused.stderr.splitlines()) == 2


def test_prune_expired(run_cli, conn, db_dsn):
    from tests.support.harness import row

    past, future = "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z"
    ready = enqueue(conn, "add", 1, 1, columns={"expires_at": past})
    done = enqueue(
        conn, "add", 2, 2, columns={"expires_at": "2001-01-01T00:00:00Z", "status": "SUCCESSFUL"}
    )
    running = enqueue(conn, "add", 3, 3, columns={"expires_at": past, "status": "RUNNING"})
    keep = enqueue(conn, "add", 4, 4, columns={"expires_at": future})
    assert run_cli("prune", "expired", "--dsn", db_dsn, "--dry-run").stdout == (
        "Would prune 2 expired task(s)\n"
    )
    assert run_cli("prune", "expired", "--dsn", db_dsn, "--limit", "1").stdout == (
        "Pruned 1 expired task(s)\n"
    )
    remaining = {r[0] for r in conn.execute("SELECT result_id FROM task_runs").fetchall()}
    assert remaining == {done, running, keep}  # the earliest expiry went first
    assert json.loads(run_cli("prune", "expired", "--dsn", db_dsn, "--json").stdout) == {
        "dry_run": False,
        "count": 1,
    }
    assert row(conn, running)["status"] == "RUNNING"
    assert ready not in remaining
    # Past 64 bits a limit is a usage error, as Go's flag package makes it (it was an
    # internal error, exit 3).
    huge = run_cli("prune", "expired", "--dsn", db_dsn, "--dry-run", "--limit", str(10**20))
    assert huge.returncode == 2
    assert f"{10**20} is out of range (a 64-bit integer)" in huge.stderr
    hex_limit = run_cli("prune", "expired", "--dsn", db_dsn, "--dry-run", "--limit", "0x10")
    assert hex_limit.stdout == "Would prune 0 expired task(s)\n", hex_limit.stderr


def test_triage(run_cli, conn, db_dsn):
    a = enqueue(conn, "add", 1, 1, columns={"queue_name": "mail"})
    b = enqueue(conn, "fail", columns={"queue_name": "default"})
    assert run_cli("triage", "list", "--dsn", db_dsn).stdout == "No failed tasks.\n"
    conn.execute(
        "UPDATE task_runs SET status = 'FAILED', attempts = 3, failed_at = now() - (result_id || ' min')::interval,"
        ' last_error = \'boom\', errors_json = \'[{"kind": "app_error", "message": "boom"}]\''
    )
    lines = run_cli("triage", "list", "--dsn", db_dsn).stdout.splitlines()
    assert lines[0] == "ID\tQueue\tTask\tAttempts\tFailedAt\tLastError"
    assert [line.split("\t")[0] for line in lines[1:]] == [str(a), str(b)]  # newest failure first
    assert lines[1].split("\t")[1:4] == ["mail", "tests.support.tasks.add", "3/3"]
    only_mail = json.loads(
        run_cli("triage", "list", "--dsn", db_dsn, "--queue", "mail", "--json").stdout
    )
    assert [r["result_id"] for r in only_mail] == [a]
    largest = run_cli("triage", "list", "--dsn", db_dsn, "--limit", str(2**63 - 1), "--json")
    assert len(json.loads(largest.stdout)) == 2, largest.stderr
    one = run_cli("triage", "list", "--dsn", db_dsn, "--limit", "0b1", "--json")
    assert len(json.loads(one.stdout)) == 1, one.stderr
    shown = run_cli("triage", "inspect", "--dsn", db_dsn, "--id", str(a)).stdout.splitlines()
    assert shown[0] == f"Result ID: {a}"
    assert shown[4] == "Attempts: 3/3"
    assert shown[6] == "Last Error: boom"
    assert shown[7].startswith('Spec JSON: {"v": 1, ')  # PostgreSQL's jsonb text
    assert shown[8] == 'Errors JSON: [{"kind": "app_error", "message": "boom"}]'
    assert (
        "no FAILED task with result_id 999"
        in run_cli("triage", "inspect", "--dsn", db_dsn, "--id", "999").stderr
    )
    assert (
        run_cli("triage", "retry", "--dsn", db_dsn, "--id", str(a)).stdout == "Retried 1 task(s)\n"
    )
    from tests.support.harness import row

    again = row(conn, a)
    assert (again["status"], again["attempts"], again["last_error"]) == ("READY", 0, None)
    assert len(again["errors_json"]) == 1  # history kept
    assert run_cli("triage", "retry", "--dsn", db_dsn, "--all").stdout == "Retried 1 task(s)\n"
    assert (
        run_cli("triage", "retry", "--dsn", db_dsn, "--all").stdout == "No failed tasks updated.\n"
    )
    neither = run_cli("triage", "retry", "--dsn", db_dsn)
    assert (neither.returncode, "Provide --id or --all" in neither.stderr) == (1, True)


def test_triage_inspect_json_of_a_spec_nested_past_pythons_decoder(run_cli, conn, db_dsn):
    # Was "internal error: RecursionError" (exit 3) for a row jsonb and Go take.
    from reproq_cli.gojson import syntax_error

    deep = "[" * 3000 + "]" * 3000
    (failed,) = conn.execute(
        "INSERT INTO task_runs (spec_json, spec_hash, task_path, status, errors_json)"
        " VALUES (%s::jsonb, 'ab', 'x.y', 'FAILED', '[{\"kind\": \"app_error\"}]')"
        " RETURNING result_id",
        (deep,),
    ).fetchone()
    shown = run_cli("triage", "inspect", "--dsn", db_dsn, "--id", str(failed), "--json")
    assert shown.returncode == 0, shown.stderr
    assert syntax_error(shown.stdout) is None  # one JSON document
    assert f'  "spec_json": {deep},\n' in shown.stdout  # the jsonb text as it is
    assert '"errors_json": [\n    {\n      "kind": "app_error"\n    }\n  ]' in shown.stdout
    assert f'"result_id": {failed},' in shown.stdout


def test_triage_retry_leaves_what_waits_on_an_unfinished_task(run_cli, conn, db_dsn):
    # READY again, a chain child or a chord callback ran beside what it waits for (verify
    # then failed); retrying the parent or the member is what releases them.
    import uuid

    from tests.support.harness import row

    parent = enqueue(conn, "add", 1, 1)
    child = enqueue(conn, "add", 2, 2, columns={"parent_id": parent})
    workflow = uuid.uuid4()
    member = enqueue(conn, "add", 3, 3, columns={"workflow_id": workflow})
    callback = enqueue(conn, "add", 4, 4, columns={"workflow_id": workflow})
    conn.execute(
        "INSERT INTO workflow_runs (workflow_id, expected_count, callback_result_id, status)"
        " VALUES (%s, 1, %s, 'FAILED')",
        (workflow, callback),
    )
    conn.execute("UPDATE task_runs SET status = 'FAILED'")
    one = run_cli("triage", "retry", "--dsn", db_dsn, "--id", str(child))
    assert one.returncode == 1
    assert one.stderr.startswith(f"error: task {child} waits on a task that has not succeeded")
    result = run_cli("triage", "retry", "--dsn", db_dsn, "--all", "--json")
    assert json.loads(result.stdout) == {"retried": 2, "blocked": sorted([child, callback])}
    assert "warning: left 2 task(s) FAILED that wait on a task" in result.stderr
    statuses = {rid: row(conn, rid)["status"] for rid in (parent, child, member, callback)}
    assert statuses == {parent: "READY", child: "FAILED", member: "READY", callback: "FAILED"}
    conn.execute("UPDATE task_runs SET status = 'SUCCESSFUL' WHERE result_id = %s", (parent,))
    released = run_cli("triage", "retry", "--dsn", db_dsn, "--id", str(child))
    assert released.stdout == "Retried 1 task(s)\n", released.stderr


def test_triage_retry_all_conflict_retries_nothing(run_cli, conn, db_dsn):
    a = enqueue(conn, "add", 1, 1)
    conn.execute("UPDATE task_runs SET status = 'FAILED'")
    enqueue(conn, "add", 1, 1)  # the same spec, active again
    result = run_cli("triage", "retry", "--dsn", db_dsn, "--all")
    assert result.returncode == 1
    assert "nothing was retried" in result.stderr
    from tests.support.harness import row

    assert row(conn, a)["status"] == "FAILED"


def test_queue_pause_resume_ls(run_cli, conn, db_dsn):
    enqueue(conn, "add", 1, 1, columns={"queue_name": "mail"})
    assert run_cli("queue", "pause", "mail", "--reason", "smtp down", "--dsn", db_dsn).stdout == (
        "Queue mail paused.\n"
    )
    listed = json.loads(run_cli("queue", "ls", "--dsn", db_dsn, "--json").stdout)
    assert listed[0]["queue_name"] == "mail"
    assert (listed[0]["paused"], listed[0]["reason"], listed[0]["ready"]) == (True, "smtp down", 1)
    text = run_cli("queue", "ls", "--dsn", db_dsn).stdout.splitlines()
    assert text[1] == "mail\tyes\t1\t0\tsmtp down"
    run_cli("queue", "resume", "mail", "--dsn", db_dsn)
    paused = conn.execute("SELECT paused, paused_at FROM reproq_queue_controls").fetchone()
    assert paused == (False, None)
    for bad in ("", " ", "a\nb", "a,b"):
        refused = run_cli("queue", "pause", bad, "--dsn", db_dsn)
        assert refused.returncode == 2, bad
        assert refused.stderr.startswith(f"error: queue name {bad!r} cannot be a queue"), bad
    assert conn.execute("SELECT count(*) FROM reproq_queue_controls").fetchone() == (1,)


def test_stats(run_cli, conn, db_dsn):
    enqueue(conn, "add", 1, 1)
    failed = enqueue(conn, "fail", columns={"queue_name": "mail"})
    conn.execute(
        "UPDATE task_runs SET status = 'FAILED', finished_at = now() WHERE result_id = %s",
        (failed,),
    )
    conn.execute("INSERT INTO reproq_workers (worker_id, hostname) VALUES ('w1', 'h')")
    conn.execute(
        "INSERT INTO reproq_workers (worker_id, hostname, last_seen_at)"
        " VALUES ('w0', 'h', now() - interval '1 hour')"
    )
    conn.execute(
        "INSERT INTO periodic_tasks (name, cron_expr, task_path, next_run_at)"
        " VALUES ('nightly', '0 3 * * *', 'myapp.tasks.x', now())"
    )
    data = json.loads(run_cli("stats", "--dsn", db_dsn, "--json").stdout)
    assert data["tasks"] == {"READY": 1, "FAILED": 1}
    assert data["queues"]["mail"]["counts"] == {"FAILED": 1}
    assert data["queues"]["mail"]["finished_last_minute"] == {"succeeded": 0, "failed": 1}
    assert (data["workers_alive"], data["workers_dead"]) == (1, 1)
    assert [p["name"] for p in data["periodic"]] == ["nightly"]
    assert data["top_failing"] == [{"task_path": "tests.support.tasks.fail", "failed": 1}]
    text = run_cli("stats", "--dsn", db_dsn).stdout
    assert text.startswith("Tasks: READY 1, WAITING 0, RUNNING 0, SUCCESSFUL 0, FAILED 1")
    assert "Workers: 1 alive, 1 dead" in text
    assert "  1 tests.support.tasks.fail" in text


def test_logs_json(run_cli, conn, db_dsn, tmp_path):
    rid = enqueue(conn, "add", 1, 1)
    log = tmp_path / "l.log"
    log.write_text("a\nb\n")
    conn.execute("UPDATE task_runs SET logs_uri = %s WHERE result_id = %s", (str(log), rid))
    data = json.loads(run_cli("logs", "--dsn", db_dsn, "--id", str(rid), "--json").stdout)
    assert data == {"result_id": rid, "logs_uri": str(log), "text": "a\nb"}  # the last lines


def test_groups_without_a_subcommand_print_usage_and_exit_0(run_cli):
    for group in ("limit", "triage", "prune", "queue", "embedded"):
        result = run_cli(group)
        assert result.returncode == 0, group
        assert result.stdout.startswith(f"Usage: reproq {group} "), group


def test_logs_over_http(run_cli, conn, db_dsn, tmp_path):
    import functools
    import http.server
    import threading

    (tmp_path / "task.log").write_text("from http\nline two\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rid = enqueue(conn, "add", 1, 1)
        uri = f"http://127.0.0.1:{server.server_address[1]}/task.log"
        conn.execute("UPDATE task_runs SET logs_uri = %s WHERE result_id = %s", (uri, rid))
        assert run_cli("logs", "--dsn", db_dsn, "--id", str(rid)).stdout == "from http\nline two\n"
        conn.execute(
            "UPDATE task_runs SET logs_uri = %s WHERE result_id = %s", (uri + ".missing", rid)
        )
        missing = run_cli("logs", "--dsn", db_dsn, "--id", str(rid))
        assert missing.returncode == 1
        assert "cannot fetch logs from" in missing.stderr
    finally:
        server.shutdown()


def test_operator_commands_on_a_database_without_the_schema(run_cli, empty_db_dsn):
    # It was an internal error ("this is a bug in reproq") naming UndefinedTable.
    for args in (["queue", "pause", "mail"], ["triage", "list"], ["limit", "ls"]):
        result = run_cli(*args, "--dsn", empty_db_dsn)
        assert result.returncode == 1, args
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error: ") and "lacks reproq's schema" in lines[0], args
        assert lines[1] == "hint: run `reproq migrate` against it (or check the DSN)"


def test_a_statement_the_server_refuses_is_a_one_line_error(run_cli, conn, db_dsn):
    # Permission denied (and any other refusal) was "internal error ... a bug in reproq", exit
    # 3; Go's operator commands exit 1 with the message.
    from psycopg import conninfo

    rid = enqueue(conn, "add", 1, 1)
    role = "reproq_ops_read_only"
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        dsn = conninfo.make_conninfo(db_dsn, user=role)
        limit = ["limit", "set", "--key", "global", "--rate", "1", "--burst", "1"]
        for args, table in ((["cancel", "--id", str(rid)], "task_runs"), (limit, "rate_limits")):
            result = run_cli(*args, "--dsn", dsn)
            assert result.returncode == 1, (args, result.stderr)
            lines = result.stderr.splitlines()
            assert lines[0].startswith("error: "), lines
            assert lines[0].endswith(f"permission denied for table {table}"), lines
            assert lines[1].startswith("hint: connect as a role that has the privilege")
        assert row(conn, rid)["cancel_requested"] is False
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
