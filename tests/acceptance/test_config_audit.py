"""Configuration rules of go-worker.md §1.1 and §2 that an audit found handled differently,
checked through the real `reproq` process with real files and environment variables."""

from __future__ import annotations

import json

from tests.acceptance.test_cli_foundation import UNREACHABLE, assert_one_line_error


def _explained(result) -> dict:
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    return {key: (payload_value(payload["values"], key), source["origin"])
            for key, source in payload["sources"].items()}  # fmt: skip


def payload_value(values: dict, key: str):
    for part in key.split("."):
        values = values[part]
    return values


def test_an_env_list_that_parses_empty_still_replaces_the_file(run_cli, tmp_path):
    # Go applies any non-empty env value: "," is an empty list, so the file's prefixes give
    # way to the validator's defaults. It was dropped and the file's list kept.
    (tmp_path / "reproq.yaml").write_text(
        "worker:\n  allowed_task_modules: [app.tasks.]\nmetrics:\n  allow_cidrs: [10.0.0.0/8]\n"
    )
    env = {"ALLOWED_TASK_MODULES": ",", "METRICS_ALLOW_CIDRS": " , "}
    values = _explained(run_cli("config", "--json", "--explain", env=env))
    assert values["worker.allowed_task_modules"] == ([], "env ALLOWED_TASK_MODULES")
    assert values["metrics.allow_cidrs"] == ([], "env METRICS_ALLOW_CIDRS")


def test_a_yaml_exponent_in_an_integer_setting_is_read_as_yaml_v3_reads_it(run_cli, tmp_path):
    # yaml.v3 (YAML 1.2) reads a plain 1e1 as the number 10; PyYAML left it a string and the
    # setting refused it.
    (tmp_path / "reproq.yaml").write_text("worker:\n  concurrency: 1e1\n  lease_seconds: 1.5e3\n")
    values = _explained(run_cli("config", "--json", "--explain"))
    assert values["worker.concurrency"] == (10, "reproq.yaml: worker.concurrency")
    assert values["worker.lease_seconds"] == (1500, "reproq.yaml: worker.lease_seconds")
    (tmp_path / "reproq.yaml").write_text("worker:\n  concurrency: 2.5e0\n")
    assert_one_line_error(run_cli("config"), "worker.concurrency", "2.5e0", "not an integer")


def test_toml_keys_match_in_any_case_as_go_toml_matches_them(run_cli, tmp_path):
    # go-toml v2 matches struct fields case-insensitively; these were unknown keys, ignored.
    (tmp_path / "reproq.toml").write_text(
        'DSN = "postgresql://app@db/app"\n'
        '[Worker]\nConcurrency = 4\nQUEUES = ["high"]\nBogus = 1\n'
        '[BEAT]\nInterval = "10s"\n'
    )
    result = run_cli("config", "--json", "--explain")
    values = _explained(result)
    assert values["dsn"] == ("postgresql://app@db/app", "reproq.toml: dsn")
    assert values["worker.concurrency"] == (4, "reproq.toml: worker.concurrency")
    assert values["worker.queues"] == (["high"], "reproq.toml: worker.queues")
    assert "unknown key 'worker.Bogus'" in result.stderr
    beat = _explained(run_cli("config", "--mode", "beat", "--json", "--explain"))
    assert beat["beat.interval"] == ("10s", "reproq.toml: beat.interval")


def test_integer_flags_are_read_as_go_literals(run_cli):
    # Go's flag package (strconv.ParseInt, base 0): --concurrency 0x10 is 16, 010 is 8; the
    # flags were read as decimal only, so 010 was 10 and 0x10 a usage error.
    for given in ("0x10", "010", "1_6", "0o20"):
        started = run_cli("worker", "--dsn", UNREACHABLE, "--concurrency", given)
        assert_one_line_error(started, "cannot connect")  # got past the flags
        assert started.returncode == 1
    octal_eight = run_cli("worker", "--dsn", UNREACHABLE, "--concurrency", "08")
    assert octal_eight.returncode == 2
    assert_one_line_error(octal_eight, "--concurrency", "'08' is not a valid integer")
    zero = run_cli("worker", "--dsn", UNREACHABLE, "--concurrency", "0x0")
    assert zero.returncode == 2
    assert_one_line_error(zero, "--concurrency")  # 0, refused as 0 is


def test_integers_past_what_go_holds_are_refused_at_start(run_cli, tmp_path):
    # Both started the worker (a lease of 1e20 seconds then failed every claim with
    # PostgreSQL's "interval out of range"); Go's flag parser refuses what is past 64 bits.
    huge = run_cli("worker", "--dsn", UNREACHABLE, "--task-cpu-limit", "99999999999999999999")
    assert huge.returncode == 2
    assert_one_line_error(huge, "--task-cpu-limit", "out of range")
    past = run_cli("worker", "--dsn", UNREACHABLE, "--lease-seconds", "9223372037")
    assert past.returncode == 2
    assert_one_line_error(past, "--lease-seconds", "must be <= 9223372036")
    assert "from 1 to 9223372036" in past.stderr  # a bound the user can type, not 9.2e+09
    (tmp_path / "reproq.yaml").write_text("worker:\n  max_payload_bytes: 99999999999999999999\n")
    in_file = run_cli("config")
    assert in_file.returncode == 1
    assert_one_line_error(in_file, "worker.max_payload_bytes", "out of range")


def test_the_auth_window_and_limiter_sizes_are_checked_when_go_checks_them(run_cli):
    # --metrics-auth-window is checked only when there is a server, as a fatal error (exit
    # 1); it was a usage error (exit 2) with or without a server.
    idle = run_cli("worker", "--dsn", UNREACHABLE, "--metrics-auth-window", "0")
    assert_one_line_error(idle, "cannot connect")  # got past the configuration
    assert idle.returncode == 1
    serving = run_cli(
        "worker", "--dsn", UNREACHABLE, "--metrics-port", "9", "--metrics-auth-window=-1s"
    )
    assert serving.returncode == 1
    assert_one_line_error(serving, "--metrics-auth-window must be a positive duration")
    # The environment's limiter sizes are checked when read, whatever a flag says after.
    overridden = run_cli(
        "worker", "--dsn", UNREACHABLE, "--metrics-auth-limit", "5",
        env={"METRICS_AUTH_LIMIT": "0"},
    )  # fmt: skip
    assert overridden.returncode == 1
    assert_one_line_error(overridden, 'invalid METRICS_AUTH_LIMIT "0"')
