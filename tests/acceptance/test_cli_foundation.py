"""The real `reproq` process: version, migrate, config and the embedded fallback.

Errors must be one `error:` line plus one `hint:` line on stderr, a non-zero exit, and no
traceback.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from reproq_cli import __version__

UNREACHABLE = "postgresql://app:s3cret@127.0.0.1:1/nowhere"


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert lines[1].startswith("hint: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


def test_version_flag_and_command(run_cli):
    for args in (["--version"], ["version"]):
        result = run_cli(*args)
        assert result.returncode == 0
        assert result.stdout == f"reproq {__version__}\n"


def test_no_command_prints_usage_and_exits_1(run_cli):
    result = run_cli()
    assert result.returncode == 1
    assert "Usage: reproq" in result.stdout


def test_unknown_command_is_a_usage_error(run_cli):
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_migrate_print_needs_no_server(run_cli):
    result = run_cli("migrate", "--print", env={"DATABASE_URL": UNREACHABLE})
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE IF NOT EXISTS task_runs" in result.stdout
    assert "idx_task_runs_spec_unique" in result.stdout
    assert result.stderr == ""


def test_migrate_then_check(run_cli, empty_db_dsn):
    result = run_cli("migrate", "--check", "--dsn", empty_db_dsn)
    assert_one_line_error(result, "schema incomplete")
    assert "table task_runs is missing" in result.stdout

    result = run_cli("migrate", "--dsn", empty_db_dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "schema up to date (0001_baseline.sql, 0002_notify_ready.sql, 0003_parent_fk_set_null.sql)"
    )

    result = run_cli("migrate", "--dsn", empty_db_dsn)
    assert result.returncode == 0, result.stderr

    result = run_cli("migrate", "--check", "--json", env={"DATABASE_URL": empty_db_dsn})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "missing": []}


def test_migrate_check_json_lists_missing(run_cli, db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX idx_task_runs_claim")
    result = run_cli("migrate", "--check", "--json", "--dsn", db_dsn)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "missing": ["index idx_task_runs_claim on task_runs is missing"],
    }


def test_migrate_reads_dsn_from_config_file(run_cli, empty_db_dsn, tmp_path):
    (tmp_path / "reproq.yaml").write_text(f"dsn: '{empty_db_dsn}'\n")
    result = run_cli("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_unreachable_dsn_is_one_line_with_masked_password(run_cli):
    result = run_cli("migrate", "--dsn", UNREACHABLE)
    assert_one_line_error(result, "cannot connect to postgresql://app:****@127.0.0.1:1/nowhere: ")
    assert "s3cret" not in result.stderr


def test_a_short_password_does_not_garble_the_message(run_cli):
    # Masked wherever it appeared, "on" made "connection" into "c****necti****": the
    # message was unreadable and its gaps spelled the password out.
    result = run_cli("migrate", "--dsn", "postgresql://app:on@127.0.0.1:1/appdb")
    assert_one_line_error(result, "cannot connect to postgresql://app:****@127.0.0.1:1/appdb: ")
    assert 'connection to server at "127.0.0.1", port 1 failed' in result.stderr
    assert "****" not in result.stderr.split(": ", 2)[2]


def test_unreachable_key_value_dsn_from_env(run_cli):
    result = run_cli(
        "migrate", env={"DATABASE_URL": "host=127.0.0.1 port=1 user=app password=s3cret"}
    )
    assert_one_line_error(result, "cannot connect to host=127.0.0.1 port=1 user=app password=****")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://x:s3cret@[::1",  # libpq quotes the whole DSN
        "postgresql://x:s3%zzcret@127.0.0.1:1/db",  # libpq quotes the bad token
        "postgresql://x:s3%A0cret@127.0.0.1:1/db",  # not UTF-8 once decoded (was exit 3)
    ],
)
def test_a_malformed_dsn_never_shows_its_password(run_cli, dsn):
    result = run_cli("stats", "--dsn", dsn)
    assert_one_line_error(result, "invalid DSN 'postgresql://x:****@")
    assert "s3" not in result.stderr
    result = run_cli("cancel", "--id", "1", env={"DATABASE_URL": dsn})
    assert_one_line_error(result, "invalid DSN 'postgresql://x:****@")
    assert "s3" not in result.stderr


def test_garbage_dsn(run_cli):
    result = run_cli("migrate", "--dsn", "this is not = a dsn = at all")
    assert_one_line_error(result, "invalid DSN")


def test_libpq_env_vars_are_honoured(run_cli, db_dsn):
    params = psycopg.conninfo.conninfo_to_dict(db_dsn)
    env = {"PGHOST": str(params["host"]), "PGDATABASE": str(params["dbname"]), "PGUSER": "postgres"}
    if params.get("port"):  # a REPROQ_TEST_DSN server need not listen on 5432
        env["PGPORT"] = str(params["port"])
    result = run_cli("migrate", "--check", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema complete"


def test_bad_config_file_is_one_line(run_cli, tmp_path):
    (tmp_path / "reproq.yaml").write_text("worker:\n  queues: [a, b\n")
    result = run_cli("config", cwd=tmp_path)
    assert_one_line_error(result, "cannot parse YAML config file reproq.yaml")


def test_bad_duration_is_one_line(run_cli, tmp_path):
    (tmp_path / "reproq.toml").write_text('[worker]\npoll_max_backoff = "5 seconds"\n')
    result = run_cli("config", cwd=tmp_path)
    assert_one_line_error(result, "invalid worker.poll_max_backoff in reproq.toml", "5 seconds")


@pytest.mark.parametrize(
    ("args", "fragments", "code"),
    [
        # A 2**31 concurrency started 2**32 threads and took the host's memory.
        (["worker", "--concurrency", "2147483647"], ["--concurrency: 2147483647 must be <= 1000"], 2),
        (["worker", "--priority-aging-factor", "nan"], ["NaN must be a finite number"], 2),
        (["beat", "--once", "--interval", "99999999999h"], ["'99999999999h' is out of range"], 2),
        # limit set's own checks are Go fatals: exit 1.
        (["limit", "set", "--key", "k", "--rate", "nan"], ["--rate nan is not a usable rate"], 1),
        (["limit", "set", "--key", "k", "--burst", "99999999999"], ["burst_size must be <= "], 1),
        (["top", "--interval", "nan"], ["--interval nan is not a number of seconds"], 2),
    ],
)  # fmt: skip
def test_values_out_of_any_sane_range_are_refused(run_cli, args, fragments, code):
    # Each failed later: an internal error (exit 3), a stored NaN, or memory exhaustion.
    result = run_cli(*args, "--dsn", UNREACHABLE)
    assert_one_line_error(result, *fragments)
    assert result.returncode == code


def test_a_huge_value_in_the_config_file_names_the_key(run_cli, tmp_path):
    (tmp_path / "reproq.yaml").write_text(
        "worker:\n  concurrency: 99999999999999999999999\n  poll_max_backoff: 99999999999h\n"
    )
    result = run_cli("config", cwd=tmp_path)
    assert_one_line_error(result, "invalid worker.concurrency in reproq.yaml", "must be <= 1000")
    assert result.stderr.splitlines()[1] == "hint: give an integer from 1 to 1000 in reproq.yaml"


def test_bad_env_value_is_one_line(run_cli):
    result = run_cli("config", env={"PRIORITY_AGING_FACTOR": "high"})
    assert_one_line_error(result, "invalid PRIORITY_AGING_FACTOR", "high")


def test_unknown_extension_and_missing_file(run_cli, tmp_path):
    result = run_cli("config", "--config", "settings.ini")
    assert_one_line_error(result, "unsupported config extension: .ini")
    result = run_cli("config", env={"REPROQ_CONFIG": str(tmp_path / "absent.yaml")})
    assert_one_line_error(result, "cannot read config file", "absent.yaml")


def test_config_explain_shows_every_source_and_masks_secrets(run_cli, tmp_path):
    (tmp_path / "reproq.yaml").write_text(
        "dsn: postgresql://app:filepw@db/app\n"
        "worker:\n  concurrency: 4\n  unknown_thing: 1\n"
        "metrics:\n  auth_token: sekrit\n"
    )
    result = run_cli(
        "config",
        "--explain",
        "--dsn",
        "postgresql://app:flagpw@flaghost/app",
        cwd=tmp_path,
        env={"QUEUE_NAMES": "high,low"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Config file: reproq.yaml" in out
    assert "Precedence: defaults < config file < environment < flags" in out
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}
    assert lines["dsn"].endswith('"postgresql://app:****@flaghost/app"  (flag --dsn)')
    assert lines["worker.concurrency"].endswith("4  (reproq.yaml: worker.concurrency)")
    assert lines["worker.queues"].endswith('["high", "low"]  (env QUEUE_NAMES)')
    assert lines["worker.lease_seconds"].endswith("300  (built-in)")
    assert lines["metrics.auth_token"].endswith('"****"  (reproq.yaml: metrics.auth_token)')
    assert "flagpw" not in out
    assert "filepw" not in out
    assert "sekrit" not in out
    assert "unknown key 'worker.unknown_thing'" in result.stderr


def test_config_json_for_beat(run_cli, tmp_path):
    (tmp_path / ".reproq.toml").write_text(
        'dsn = "postgresql://u:pw@h/d"\n[beat]\ninterval = "90s"\n'
    )
    result = run_cli("config", "--mode", "beat", "--json", "--explain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "beat"
    assert payload["config_file"] == ".reproq.toml"
    assert payload["values"] == {"dsn": "postgresql://u:****@h/d", "beat": {"interval": "1m30s"}}
    assert payload["sources"]["beat.interval"] == {
        "source": "file",
        "origin": ".reproq.toml: beat.interval",
    }


def test_no_dsn_and_fallback_off_gives_the_go_error(run_cli):
    result = run_cli("migrate", env={"REPROQ_EMBEDDED": "0"})
    assert_one_line_error(result)
    assert result.stderr.splitlines()[0] == (
        "error: DSN required (use --dsn, DATABASE_URL, or config file)"
    )


@pytest.fixture
def embedded_env():
    # pgserver needs the socket path short; keep the directory directly under /tmp.
    directory = Path(tempfile.mkdtemp(prefix="rqe-", dir="/tmp")) / "pgdata"
    env = {"REPROQ_EMBEDDED": "1", "REPROQ_EMBEDDED_DIR": str(directory)}
    yield env
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "reproq_cli", "embedded", "stop"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        check=False,
        timeout=60,
    )
    shutil.rmtree(directory.parent, ignore_errors=True)


@pytest.mark.slow
def test_embedded_fallback_and_management(run_cli, embedded_env):
    status = run_cli("embedded", "status", "--json", env=embedded_env)
    assert json.loads(status.stdout)["running"] is False

    result = run_cli("migrate", env=embedded_env)
    assert result.returncode == 0, result.stderr
    notice = [line for line in result.stderr.splitlines() if "embedded PostgreSQL" in line]
    assert len(notice) == 1
    dsn = notice[0].split(" at ", 1)[1].split(" (", 1)[0]
    assert dsn.startswith("postgresql://")
    assert embedded_env["REPROQ_EMBEDDED_DIR"] in dsn

    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM rate_limits").fetchone() == (1,)

    url = run_cli("embedded", "url", env=embedded_env)
    assert url.stdout.strip() == dsn

    status = json.loads(run_cli("embedded", "status", "--json", env=embedded_env).stdout)
    assert status["running"] is True
    assert status["initialized"] is True

    again = run_cli("migrate", "--check", env=embedded_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "schema complete"

    stopped = run_cli("embedded", "stop", env=embedded_env)
    assert stopped.stdout.strip() == "stopped"
    assert (
        json.loads(run_cli("embedded", "status", "--json", env=embedded_env).stdout)["running"]
        is False
    )
    assert run_cli("embedded", "stop", env=embedded_env).stdout.strip() == "not running"


def test_a_reproq_embedded_value_that_is_not_a_boolean_is_refused(run_cli, embedded_env):
    # "maybe" read as on started a database the user may have meant to turn off.
    result = run_cli("stats", env={**embedded_env, "REPROQ_EMBEDDED": "maybe"})
    assert_one_line_error(result, "invalid REPROQ_EMBEDDED 'maybe': not a boolean")
    assert not Path(embedded_env["REPROQ_EMBEDDED_DIR"]).exists()
    doctor = run_cli("doctor", env={**embedded_env, "REPROQ_EMBEDDED": "maybe"})
    assert "FAIL dsn: invalid REPROQ_EMBEDDED 'maybe'" in doctor.stdout
    assert doctor.returncode == 1


def test_migrate_print_and_check_exclude_each_other(run_cli):
    result = run_cli("migrate", "--print", "--check")
    assert_one_line_error(result, "--print and --check exclude each other")
    assert result.returncode == 2


def test_an_unusable_embedded_directory_is_one_line(run_cli, embedded_env):
    directory = Path(embedded_env["REPROQ_EMBEDDED_DIR"])
    directory.mkdir(parents=True)
    (directory / "notes.txt").write_text("mine")
    result = run_cli("stats", env=embedded_env)
    assert_one_line_error(result, f"{directory} holds other files and no PostgreSQL cluster")
    assert (directory / "notes.txt").read_text() == "mine"
    (directory / "notes.txt").unlink()
    directory.rmdir()
    directory.write_text("a file")
    result = run_cli("embedded", "start", env=embedded_env)
    assert_one_line_error(result, f"{directory} is a file, not a directory")


@pytest.mark.parametrize(
    ("args", "message", "where"),
    [
        (["worker", "--concurrency", "abc"], "Invalid value for '--concurrency'", "reproq worker"),
        (["triage", "bogus"], "No such command 'bogus'.", "reproq triage"),
        (["worker", "--log-format", "xml"], "'xml' is not one of 'json', 'text'", "reproq worker"),
    ],
)
def test_click_usage_errors_are_one_error_line_and_a_hint(run_cli, args, message, where):
    result = run_cli(*args)
    assert_one_line_error(result, message)
    assert result.stderr.splitlines()[1] == f"hint: see `{where} --help`"
    assert result.returncode == 2


def test_an_argument_that_is_not_utf8_is_one_line(run_cli):
    # It reached the database encoder and was reported as a bug (exit 3).
    result = run_cli("triage", "list", "--queue", "q\udcff", "--dsn", UNREACHABLE)
    assert_one_line_error(result, "argument b'q\\xff' is not valid UTF-8")
    assert result.returncode == 1


def test_the_first_config_flag_counts(run_cli, tmp_path):
    # As the Go worker scans its arguments; click kept the last one.
    (tmp_path / "first.yaml").write_text("worker:\n  concurrency: 3\n")
    result = run_cli("config", "--config", "first.yaml", "--config", "second.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "worker.concurrency              = 3" in result.stdout
