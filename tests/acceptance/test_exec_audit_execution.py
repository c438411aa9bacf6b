"""Audit of execution against go-worker.md §5.3-§5.7: spawn errors, wait errors, envelope
errors and log files, as the Go worker words and places them."""

from __future__ import annotations

import os

from tests.support.harness import enqueue, row, wait_for


def test_a_child_killed_by_a_signal_leaves_gos_wait_error_in_its_log(conn, workers, tmp_path):
    # Go appends its wait error to the captured stderr: "signal: user defined signal 1", not
    # a name made from the constant ("signal: usr1").
    rid = enqueue(conn, "kill_self", 10, columns={"max_attempts": 1})
    run = workers.run("--logs-dir", str(tmp_path / "logs"))
    assert run.returncode == 0, run.stdout + run.stderr
    task = row(conn, rid)
    assert task["last_error"] == "terminated by signal 10 (SIGUSR1)"
    content = (tmp_path / "logs" / f"task-{rid}-attempt-1.log").read_text()
    assert content.endswith("STDERR:\nsignal: user defined signal 1\n")


def test_a_python_bin_that_cannot_start_is_worded_as_go_words_it(conn, workers):
    missing = enqueue(conn, "add", 1, 2, unique="missing")
    run = workers.run("--max-tasks", "1", python_bin="reproq-no-such-python")
    assert run.returncode == 0, run.stdout + run.stderr
    error = row(conn, missing)["errors_json"][0]
    assert error["kind"] == "infra_error"
    assert error["message"] == ('exec: "reproq-no-such-python": executable file not found in $PATH')
    absent = enqueue(conn, "add", 1, 3, unique="absent")
    run = workers.run("--max-tasks", "1", python_bin="/nonexistent/python")
    assert run.returncode == 0, run.stdout + run.stderr
    error = row(conn, absent)["errors_json"][0]
    assert error["message"] == "fork/exec /nonexistent/python: no such file or directory"


def test_stdout_starting_with_a_quote_names_it_as_go_does(conn, workers):
    # The task writes 'x' before the executor's envelope line.
    rid = enqueue(conn, "write_stdout", b"'x'\n".hex(), columns={"max_attempts": 1})
    run = workers.run()
    assert run.returncode == 0, run.stdout + run.stderr
    assert row(conn, rid)["last_error"] == (
        "Invalid JSON on stdout: invalid character '\\'' looking for beginning of value"
    )


def test_logs_uri_is_the_cleaned_join_and_every_new_dir_is_private(conn, workers, tmp_path):
    # filepath.Join cleans: "./a/b/" + name is stored as "a/b/<name>"; MkdirAll makes every
    # directory it creates 0700, not only the last one.
    rid = enqueue(conn, "noisy", 1, 1)
    run = workers.run("--logs-dir", "./a/b/")  # relative to the worker's cwd, tmp_path
    assert run.returncode == 0, run.stdout + run.stderr
    name = f"task-{rid}-attempt-1.log"
    assert row(conn, rid)["logs_uri"] == f"a/b/{name}"
    assert (tmp_path / "a" / "b" / name).is_file()
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert oct(os.stat(directory).st_mode & 0o777) == "0o700", directory


def test_a_spec_without_a_usable_task_path_fails_with_gos_decoder_text(conn, workers):
    # Only rows from before the check constraint lack a task_path column (go-worker.md §5.1):
    # the worker then reads the spec as json.Unmarshal into runner.taskSpec does.
    conn.execute("ALTER TABLE task_runs DROP CONSTRAINT task_runs_task_path_not_empty")
    conn.execute("ALTER TABLE task_runs DISABLE TRIGGER trg_task_runs_task_path")
    expected = {
        "[1]": "json: cannot unmarshal array into Go value of type runner.taskSpec",
        '{"task_path": 5}': (
            "json: cannot unmarshal number into Go struct field taskSpec.task_path of type string"
        ),
        "null": "spec_json missing task_path",
    }
    ids = {
        spec: conn.execute(
            "INSERT INTO task_runs (spec_json, spec_hash, max_attempts) VALUES (%s, %s, 1)"
            " RETURNING result_id",
            (spec, f"{n:064d}"),
        ).fetchone()[0]
        for n, spec in enumerate([*expected, '{"TASK_PATH": "tests.support.tasks.add"}'])
    }
    run = workers.run()
    assert run.returncode == 0, run.stdout + run.stderr
    for spec, message in expected.items():
        task = row(conn, ids[spec])
        assert (task["errors_json"][0]["kind"], task["last_error"]) == ("invalid_spec", message)
    # Go matches the key case-insensitively, so this one reaches the executor (which wants
    # the exact key and fails: an app error, not an invalid spec).
    task = row(conn, ids['{"TASK_PATH": "tests.support.tasks.add"}'])
    assert task["errors_json"][0]["kind"] == "app_error"


def test_a_timed_out_task_logs_its_stdout_as_captured(conn, workers, tmp_path):
    # Go writes the stdout of a timed-out attempt to the log file untrimmed; only the stdout
    # it parses as an envelope is trimmed.
    rid = enqueue(
        conn,
        "write_stdout_then_sleep",
        b"  partial\n\n".hex(),
        30,
        columns={"timeout_seconds": 1, "max_attempts": 1},
    )
    run = workers.run("--logs-dir", str(tmp_path / "logs"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert row(conn, rid)["errors_json"][0]["kind"] == "timeout"
    content = (tmp_path / "logs" / f"task-{rid}-attempt-1.log").read_text()
    assert content.startswith("STDOUT:\n  partial\n\nSTDERR:\n")


_REFUSE_OUTCOMES = """
CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outcome refused by the test' USING ERRCODE = '22000';
END $$;
CREATE TRIGGER refuse_outcome BEFORE UPDATE ON task_runs FOR EACH ROW
    WHEN (OLD.status = 'RUNNING' AND NEW.status <> 'RUNNING') EXECUTE FUNCTION refuse_outcome();
"""


def test_a_failed_outcome_write_is_logged_in_gos_words(conn, workers):
    # go-worker.md §6.3: "Failed to mark cancellation|infra error|failure".
    conn.execute(_REFUSE_OUTCOMES)
    enqueue(conn, "add", 1, 2)
    run = workers.run("--max-tasks", "1", python_bin="/nonexistent/python")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Failed to mark infra error" in run.messages()

    rid = enqueue(conn, "sleep", 30)
    proc = workers.start("--burst", heartbeat_seconds=1)
    wait_for(lambda: row(conn, rid)["status"] == "RUNNING", what="task running")
    conn.execute("UPDATE task_runs SET cancel_requested = true WHERE result_id = %s", (rid,))
    run = workers.finish(proc)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Failed to mark cancellation" in run.messages()
