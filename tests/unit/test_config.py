"""The config loader: syntax helpers, discovery, precedence with sources, and every error case."""

from __future__ import annotations

from pathlib import Path

import pytest

from reproq_cli.config import (
    format_duration,
    is_truthy,
    load_file,
    mask_dsn,
    parse_duration,
    parse_list,
    parse_queues,
    resolve,
    resolve_config_path,
)
from reproq_cli.errors import ConfigError

# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("300ms", 0.3),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("2h45m30.5s", 9930.5),
        ("-1m", -60.0),
        ("+5s", 5.0),
        ("100us", 0.0001),
        ("100µs", 0.0001),
        ("100μs", 0.0001),
        ("15ns", 15e-9),
        (".5s", 0.5),
        ("1.s", 1.0),
    ],
)
def test_parse_duration_valid(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty duration"),
        ("5", "missing unit"),
        ("1d", "invalid duration"),
        ("nope", "invalid duration"),
        ("1h 30m", "invalid duration"),
        ("-", "invalid duration"),
        ("s", "invalid duration"),
        ("1.2.3s", "invalid duration"),
    ],
)
def test_parse_duration_invalid(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.1, "100ms"),
        (5, "5s"),
        (60, "1m0s"),
        (3600, "1h0m0s"),
        (5400, "1h30m0s"),
        (1.5, "1.5s"),
        (0.0000015, "1.5µs"),
    ],
)
def test_format_duration_matches_go(seconds, text):
    assert format_duration(seconds) == text


# --- lists, truthy, masking --------------------------------------------------------------------


def test_parse_list_like_go():
    assert parse_list("alpha, beta,,gamma") == ["alpha", "beta", "gamma"]
    assert parse_list("foo.bar., baz.,,") == ["foo.bar.", "baz."]
    assert parse_list(" , ") == []


def test_parse_queues_defaults_to_default():
    assert parse_queues(" , ") == ["default"]
    assert parse_queues("one,two") == ["one", "two"]


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "On"])
def test_truthy(value):
    assert is_truthy(value)


@pytest.mark.parametrize("value", ["0", "false", "", None, "2", "enabled"])
def test_not_truthy(value):
    assert not is_truthy(value)


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://user:s3cret@db:5432/app", "postgresql://user:****@db:5432/app"),
        ("postgres://user@db/app", "postgres://user@db/app"),
        (
            "postgresql://postgres:@/reproq?host=/tmp/x",
            "postgresql://postgres:@/reproq?host=/tmp/x",
        ),
        (
            "postgresql://u@h/d?password=zz&sslmode=require",
            "postgresql://u@h/d?password=****&sslmode=require",
        ),
        ("host=db user=app password=s3cret dbname=x", "host=db user=app password=**** dbname=x"),
        ("host=db password='a b c' dbname=x", "host=db password=**** dbname=x"),
        ("", ""),
    ],
)
def test_mask_dsn(dsn, masked):
    assert mask_dsn(dsn) == masked


# --- discovery ------------------------------------------------------------------------------------


def test_discovery_order_in_working_directory(tmp_path):
    names = [
        "reproq.yaml",
        "reproq.yml",
        "reproq.toml",
        ".reproq.yaml",
        ".reproq.yml",
        ".reproq.toml",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    for name in names:
        path, why = resolve_config_path(None, {}, tmp_path)
        assert path == Path(name)
        assert why == "working directory"
        (tmp_path / name).unlink()
    assert resolve_config_path(None, {}, tmp_path) == (None, "none found")


def test_flag_beats_env_beats_cwd(tmp_path):
    (tmp_path / "reproq.yaml").write_text("")
    env = {"REPROQ_CONFIG": "/etc/env.yaml"}
    assert resolve_config_path("x.toml", env, tmp_path) == (Path("x.toml"), "flag --config")
    assert resolve_config_path(None, env, tmp_path) == (Path("/etc/env.yaml"), "env REPROQ_CONFIG")


def test_empty_config_flag_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="missing value for --config"):
        resolve_config_path("", {}, tmp_path)


def test_directory_named_like_config_is_not_used(tmp_path):
    (tmp_path / "reproq.yaml").mkdir()
    (tmp_path / "reproq.toml").write_text("")
    assert resolve_config_path(None, {}, tmp_path)[0] == Path("reproq.toml")


# --- precedence -------------------------------------------------------------------------------------

YAML = """\
dsn: postgresql://root@file/db
worker:
  queues: [alpha, beta]
  concurrency: 3
  poll_min_backoff: 150ms
  poll_max_backoff: 1s
  exec_timeout: 2m
  shutdown_timeout: 12s
  process_role: scheduler
  priority_aging_factor: 120
metrics:
  addr: 127.0.0.1:9090
  allow_cidrs: [127.0.0.1/32]
  auth_token: tok
beat:
  interval: 10s
"""


def test_defaults_without_file(tmp_path):
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.path is None
    assert config.get("dsn") == ""
    assert config.get("worker.queues") == ["default"]
    assert config.get("worker.allowed_task_modules") == []
    assert config.get("worker.concurrency") == 10
    assert config.get("worker.poll_min_backoff") == pytest.approx(0.1)
    assert config.get("worker.poll_max_backoff") == 5.0
    assert config.get("worker.exec_timeout") == 3600.0
    assert config.get("worker.python_bin") == "python3"
    assert config.get("worker.executor_module") == "reproq_django.executor"
    assert config.get("worker.payload_mode") == "stdin"
    assert config.get("worker.max_payload_bytes") == 1048576
    assert config.get("worker.priority_aging_factor") == 60.0
    assert config.get("metrics.auth_limit") == 30
    assert config.get("metrics.auth_window") == 60.0
    assert config.get("metrics.auth_max_entries") == 1000
    assert config.get("worker.worker_id").endswith(f"-{__import__('os').getpid()}")
    assert all(r.source == "default" for r in config.values.values())


def test_file_overrides_defaults_like_go(tmp_path):
    (tmp_path / "reproq.yaml").write_text(YAML)
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.concurrency") == 3
    assert config.get("worker.poll_min_backoff") == pytest.approx(0.15)
    assert config.get("worker.poll_max_backoff") == 1.0
    assert config.get("worker.exec_timeout") == 120.0
    assert config.get("worker.shutdown_timeout") == 12.0
    assert config.get("worker.process_role") == "scheduler"
    assert config.get("worker.priority_aging_factor") == 120.0
    assert config.get("worker.queues") == ["alpha", "beta"]
    assert config.get("metrics.allow_cidrs") == ["127.0.0.1/32"]
    assert config.values["worker.concurrency"].source == "file"
    assert config.values["worker.concurrency"].origin == "reproq.yaml: worker.concurrency"


def test_toml_file_same_keys(tmp_path):
    (tmp_path / "reproq.toml").write_text(
        'dsn = "postgresql://t@h/d"\n[worker]\nqueues = ["x"]\nconcurrency = 4\n'
        'poll_max_backoff = "2s"\n[beat]\ninterval = "45s"\n'
    )
    worker = resolve("worker", env={}, cwd=tmp_path)
    assert worker.get("dsn") == "postgresql://t@h/d"
    assert worker.get("worker.queues") == ["x"]
    assert worker.get("worker.concurrency") == 4
    assert worker.get("worker.poll_max_backoff") == 2.0
    assert resolve("beat", env={}, cwd=tmp_path).get("beat.interval") == 45.0


def test_worker_dsn_beats_root_dsn_and_beat_dsn_is_separate(tmp_path):
    (tmp_path / "reproq.yaml").write_text(
        "dsn: postgresql://root/db\nworker:\n  dsn: postgresql://worker/db\nbeat:\n  dsn: postgresql://beat/db\n"
    )
    assert resolve("worker", env={}, cwd=tmp_path).get("dsn") == "postgresql://worker/db"
    assert resolve("beat", env={}, cwd=tmp_path).get("dsn") == "postgresql://beat/db"
    (tmp_path / "reproq.yaml").write_text("dsn: postgresql://root/db\n")
    assert resolve("beat", env={}, cwd=tmp_path).get("dsn") == "postgresql://root/db"


def test_env_overrides_file_and_flags_override_env(tmp_path):
    (tmp_path / "reproq.yaml").write_text(YAML)
    env = {
        "DATABASE_URL": "postgresql://env/db",
        "QUEUE_NAMES": "alpha, beta,,gamma",
        "ALLOWED_TASK_MODULES": "foo.bar., baz.,,",
        "REPROQ_LOGS_DIR": "/var/log/reproq",
        "PRIORITY_AGING_FACTOR": "30",
        "METRICS_AUTH_LIMIT": "5",
        "METRICS_AUTH_WINDOW": "30s",
        "WORKER_ID": "w-env",
    }
    config = resolve("worker", env=env, cwd=tmp_path)
    assert config.get("dsn") == "postgresql://env/db"
    assert config.values["dsn"].origin == "env DATABASE_URL"
    assert config.get("worker.queues") == ["alpha", "beta", "gamma"]
    assert config.get("worker.allowed_task_modules") == ["foo.bar.", "baz."]
    assert config.get("worker.logs_dir") == "/var/log/reproq"
    assert config.get("worker.priority_aging_factor") == 30.0
    assert config.get("metrics.auth_limit") == 5
    assert config.get("metrics.auth_window") == 30.0
    assert config.get("worker.worker_id") == "w-env"

    flagged = resolve(
        "worker",
        env=env,
        cwd=tmp_path,
        flags={
            "dsn": "postgresql://flag/db",
            "worker.queues": "one,two",
            "worker.allowed_task_modules": "pkg.one.,pkg.two.",
            "worker.logs_dir": "/flag/logs",
            "worker.concurrency": 7,
            "beat.interval": None,
        },
    )
    assert flagged.get("dsn") == "postgresql://flag/db"
    assert flagged.values["dsn"].source == "flag"
    assert flagged.values["dsn"].origin == "flag --dsn"
    assert flagged.get("worker.queues") == ["one", "two"]
    assert flagged.get("worker.allowed_task_modules") == ["pkg.one.", "pkg.two."]
    assert flagged.get("worker.logs_dir") == "/flag/logs"
    assert flagged.get("worker.concurrency") == 7
    # untouched by flags, still from the file
    assert flagged.values["worker.process_role"].source == "file"


def test_empty_values_never_override(tmp_path):
    (tmp_path / "reproq.yaml").write_text(
        'dsn: postgresql://file/db\nworker:\n  queues: []\n  logs_dir: ""\n  worker_id: ""\n'
    )
    config = resolve("worker", env={"DATABASE_URL": "", "QUEUE_NAMES": ""}, cwd=tmp_path)
    assert config.get("dsn") == "postgresql://file/db"
    assert config.get("worker.queues") == ["default"]
    assert config.values["worker.queues"].source == "default"
    assert config.values["worker.worker_id"].source == "default"


def test_zero_in_file_applies(tmp_path):
    (tmp_path / "reproq.yaml").write_text(
        "worker:\n  heartbeat_seconds: 0\n  reclaim_interval_seconds: 0\n  priority_aging_factor: 0\n"
        "  poll_min_backoff: 0s\n  poll_max_backoff: '0'\n"
    )
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.heartbeat_seconds") == 0
    assert config.get("worker.reclaim_interval_seconds") == 0
    assert config.get("worker.priority_aging_factor") == 0.0
    assert config.get("worker.poll_max_backoff") == 0.0


def test_config_env_var_selects_file(tmp_path):
    other = tmp_path / "elsewhere.toml"
    other.write_text("[worker]\nconcurrency = 2\n")
    config = resolve("worker", env={"REPROQ_CONFIG": str(other)}, cwd=tmp_path)
    assert config.path == other
    assert config.get("worker.concurrency") == 2


def test_unknown_keys_are_reported_as_warnings(tmp_path):
    (tmp_path / "reproq.yaml").write_text("worker:\n  concurrence: 4\nmystery: 1\n")
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.concurrency") == 10
    assert any("'worker.concurrence'" in w for w in config.warnings)
    assert any("'mystery'" in w for w in config.warnings)


def test_display_masks_secrets_and_formats_durations(tmp_path):
    (tmp_path / "reproq.yaml").write_text(
        "dsn: postgresql://u:pw@h/d\nmetrics:\n  auth_token: hunter2\n"
    )
    shown = resolve("worker", env={}, cwd=tmp_path).display()
    assert shown["dsn"] == "postgresql://u:****@h/d"
    assert shown["metrics"]["auth_token"] == "****"
    assert shown["worker"]["poll_min_backoff"] == "100ms"
    assert shown["worker"]["exec_timeout"] == "1h0m0s"
    assert "hunter2" not in repr(shown)


# --- errors -----------------------------------------------------------------------------------------


def _error(tmp_path: Path, text: str, name: str = "reproq.yaml", **kw) -> ConfigError:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve(kw.pop("mode", "worker"), env=kw.pop("env", {}), cwd=tmp_path, **kw)
    return info.value


def test_bad_duration_names_file_key_and_value(tmp_path):
    err = _error(tmp_path, "worker:\n  poll_min_backoff: nope\n")
    assert "worker.poll_min_backoff" in err.message
    assert "reproq.yaml" in err.message
    assert "'nope'" in err.message
    assert "300ms" in (err.hint or "")


def test_a_duplicate_yaml_key_is_an_error_not_a_silent_merge(tmp_path):
    # PyYAML kept the second `worker:` and dropped the first one's settings.
    err = _error(tmp_path, "worker:\n  concurrency: 3\nworker:\n  queues: [a]\n")
    assert err.message.startswith("cannot parse YAML config file reproq.yaml")
    assert "found duplicate key 'worker'" in err.message
    err = _error(tmp_path, "worker:\n  concurrency: 3\n  concurrency: 4\n")
    assert "found duplicate key 'concurrency'" in err.message


def test_duration_without_unit_in_file(tmp_path):
    err = _error(tmp_path, "worker:\n  exec_timeout: 30\n")
    assert "missing unit" in err.message
    assert "worker.exec_timeout" in err.message


def test_backoff_range(tmp_path):
    err = _error(tmp_path, "worker:\n  poll_min_backoff: 5s\n  poll_max_backoff: 1s\n")
    assert "worker.poll_max_backoff must be >= worker.poll_min_backoff" in err.message
    # only the min set: compared against the default max (5s), like Go
    err = _error(tmp_path, "worker:\n  poll_min_backoff: 10s\n")
    assert "must be >=" in err.message


def test_type_mismatch_in_file(tmp_path):
    err = _error(tmp_path, "worker:\n  concurrency: lots\n")
    assert err.message == 'invalid worker.concurrency in reproq.yaml: "lots" is not an integer'
    err = _error(tmp_path, "worker:\n  queues: 5\n")
    assert "worker.queues" in err.message and "not a list" in err.message
    err = _error(tmp_path, "worker:\n  concurrency: true\n")
    assert "boolean" in err.message


def test_out_of_range_in_file(tmp_path):
    err = _error(tmp_path, "worker:\n  concurrency: 0\n")
    assert "worker.concurrency" in err.message and "must be >= 1" in err.message
    err = _error(tmp_path, "worker:\n  payload_mode: carrier-pigeon\n")
    assert "stdin, file, inline" in err.message
    err = _error(tmp_path, "beat:\n  interval: 0s\n", mode="beat")
    assert "beat.interval" in err.message and "must be a positive duration" in err.message
    err = _error(tmp_path, "metrics:\n  auth_window: -1m\n")
    assert "metrics.auth_window" in err.message and "positive duration" in err.message


def test_malformed_yaml(tmp_path):
    err = _error(tmp_path, "worker:\n  queues: [a, b\n")
    assert err.message.startswith("cannot parse YAML config file reproq.yaml:")
    assert "\n" not in err.message


def test_malformed_toml(tmp_path):
    err = _error(tmp_path, "[worker\nconcurrency = 1\n", name="reproq.toml")
    assert err.message.startswith("cannot parse TOML config file reproq.toml:")


def test_not_a_mapping(tmp_path):
    err = _error(tmp_path, "- a\n- b\n")
    assert "must hold a mapping" in err.message
    err = _error(tmp_path, "worker: 3\n")
    assert "invalid worker" in err.message


def test_unknown_extension(tmp_path):
    (tmp_path / "conf.ini").write_text("")
    with pytest.raises(ConfigError, match=r"unsupported config extension: \.ini"):
        resolve("worker", env={}, cwd=tmp_path, config_path=str(tmp_path / "conf.ini"))


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.yaml"):
        load_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve("worker", env={"REPROQ_CONFIG": str(tmp_path / "gone.toml")}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PRIORITY_AGING_FACTOR": "fast"}, "invalid PRIORITY_AGING_FACTOR"),
        ({"METRICS_AUTH_LIMIT": "0"}, "invalid METRICS_AUTH_LIMIT"),
        ({"METRICS_AUTH_LIMIT": "many"}, "invalid METRICS_AUTH_LIMIT"),
        ({"METRICS_AUTH_WINDOW": "0s"}, "must be a positive duration"),
        ({"METRICS_AUTH_WINDOW": "soon"}, "invalid METRICS_AUTH_WINDOW"),
        ({"METRICS_AUTH_MAX_ENTRIES": "-3"}, "invalid METRICS_AUTH_MAX_ENTRIES"),
        # Go's Atoi, ParseFloat and ParseDuration take ASCII digits only; int() and \d did not
        ({"METRICS_AUTH_LIMIT": "5_0"}, "invalid METRICS_AUTH_LIMIT"),
        ({"METRICS_AUTH_MAX_ENTRIES": "\u0663"}, "invalid METRICS_AUTH_MAX_ENTRIES"),
        ({"PRIORITY_AGING_FACTOR": "1_0.5"}, "invalid PRIORITY_AGING_FACTOR"),
        ({"METRICS_AUTH_WINDOW": "\u0663s"}, "invalid METRICS_AUTH_WINDOW"),
    ],
)
def test_env_errors(tmp_path, env, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        resolve("worker", env=env, cwd=tmp_path)
    assert next(iter(env.values())) in info.value.message


def test_flag_errors_are_usage_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve("worker", env={}, cwd=tmp_path, flags={"worker.concurrency": -1})
    assert info.value.exit_code == 2
    assert "--concurrency" in info.value.message
    with pytest.raises(ConfigError, match="--interval") as info:
        resolve("beat", env={}, cwd=tmp_path, flags={"beat.interval": "0s"})
    with pytest.raises(ConfigError, match="--metrics-auth-window"):
        resolve("worker", env={}, cwd=tmp_path, flags={"metrics.auth_window": "xyz"})


def test_a_port_past_65535_names_its_key(tmp_path):
    err = _error(tmp_path, "metrics:\n  port: 70000\n")
    assert err.message == "invalid metrics.port in reproq.yaml: 70000 must be <= 65535"


def test_a_blank_worker_id_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^worker.worker_id is blank \(from flag") as info:
        resolve("worker", env={}, cwd=tmp_path, flags={"worker.worker_id": ""})
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"^worker.worker_id is blank \(from env WORKER_ID"):
        resolve("worker", env={"WORKER_ID": "  "}, cwd=tmp_path)
    assert resolve("worker", env={}, cwd=tmp_path).get("worker.worker_id").strip()


# --- bool settings (worker.no_listen) -------------------------------------------------------------


def test_no_listen_defaults_off_and_follows_file_env_flag(tmp_path):
    assert resolve("worker", env={}, cwd=tmp_path).get("worker.no_listen") is False
    (tmp_path / "reproq.yaml").write_text("worker:\n  no_listen: true\n")
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.no_listen") is True
    assert config.values["worker.no_listen"].origin == "reproq.yaml: worker.no_listen"
    # an explicit false in the environment beats the file ("not set" is only the empty string)
    config = resolve("worker", env={"REPROQ_NO_LISTEN": "off"}, cwd=tmp_path)
    assert config.get("worker.no_listen") is False
    assert config.values["worker.no_listen"].origin == "env REPROQ_NO_LISTEN"
    config = resolve(
        "worker", env={"REPROQ_NO_LISTEN": "0"}, cwd=tmp_path, flags={"worker.no_listen": True}
    )
    assert config.get("worker.no_listen") is True
    assert config.display()["worker"]["no_listen"] is True


@pytest.mark.parametrize("word", ["1", "true", "YES", " on "])
def test_bool_env_true_words(tmp_path, word):
    config = resolve("worker", env={"REPROQ_NO_LISTEN": word}, cwd=tmp_path)
    assert config.get("worker.no_listen") is True


def test_bool_errors_name_the_input(tmp_path):
    with pytest.raises(ConfigError, match="invalid REPROQ_NO_LISTEN: 'maybe' is not a boolean"):
        resolve("worker", env={"REPROQ_NO_LISTEN": "maybe"}, cwd=tmp_path)
    err = _error(tmp_path, "worker:\n  no_listen: 1\n")
    assert err.message == "invalid worker.no_listen in reproq.yaml: 1 is not a boolean"
    assert err.hint == "give true or false in reproq.yaml"
    err = _error(tmp_path, 'worker:\n  no_listen: "sometimes"\n')
    assert "'sometimes' is not a boolean" in err.message


def test_default_python_bin_is_replaceable_but_below_the_file(tmp_path, monkeypatch):
    assert resolve("worker", env={}, cwd=tmp_path).get("worker.python_bin") == "python3"
    monkeypatch.setenv("REPROQ_DEFAULT_PYTHON_BIN", "/venv/bin/python")
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.python_bin") == "/venv/bin/python"
    (tmp_path / "reproq.yaml").write_text("worker:\n  python_bin: /opt/py/bin/python3\n")
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.python_bin") == "/opt/py/bin/python3"


def test_the_auth_limiter_sizes_are_checked_as_go_checks_them(tmp_path):
    # From the environment always; from a flag or the file only when there is an HTTP
    # server to limit; a fatal error (exit 1) either way. They were checked always, exit 2.
    off = resolve("worker", env={}, cwd=tmp_path, flags={"metrics.auth_limit": 0})
    assert off.get("metrics.auth_limit") == 0
    (tmp_path / "reproq.yaml").write_text("metrics:\n  auth_max_entries: -3\n")
    assert resolve("worker", env={}, cwd=tmp_path).get("metrics.auth_max_entries") == -3
    with pytest.raises(ConfigError) as caught:
        resolve("worker", env={}, cwd=tmp_path, flags={"metrics.port": 9100})
    assert caught.value.message == (
        "--metrics-auth-max-entries must be a positive integer "
        "(from reproq.yaml: metrics.auth_max_entries)"
    )
    assert caught.value.exit_code == 1
    (tmp_path / "reproq.yaml").unlink()
    with pytest.raises(ConfigError) as caught:
        resolve("worker", env={"METRICS_AUTH_LIMIT": "0"}, cwd=tmp_path)
    assert caught.value.message == 'invalid METRICS_AUTH_LIMIT "0" (must be a positive integer)'
    assert caught.value.exit_code == 1


def test_yaml_scalars_are_read_as_gos_yaml_reads_them(tmp_path):
    # Each was refused ("12345 is not a string", "30.0 is not an integer", ...) where the
    # Go worker's yaml.v3 takes it.
    (tmp_path / "reproq.yaml").write_text(
        "worker:\n  worker_id: 12345\n  queues: [1, two]\n  priority_aging_factor: 1e3\n"
        "  lease_seconds: 30.0\n  poll_min_backoff: 0\n"
    )
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.worker_id") == "12345"
    assert config.get("worker.queues") == ["1", "two"]
    assert config.get("worker.priority_aging_factor") == 1000.0
    assert config.get("worker.lease_seconds") == 30
    assert config.get("worker.poll_min_backoff") == 0.0
    (tmp_path / "reproq.yaml").write_text("worker:\n  lease_seconds: 30.5\n")
    with pytest.raises(ConfigError, match=r"30\.5 is not an integer"):
        resolve("worker", env={}, cwd=tmp_path)
    (tmp_path / "reproq.yaml").write_text("worker:\n  poll_min_backoff: 5\n")
    with pytest.raises(ConfigError, match="missing unit in duration 5"):
        resolve("worker", env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16", 16), ("0x10", 16), ("0X1f", 31), ("0x_1f", 31), ("0o20", 16), ("020", 16),
        ("0_20", 16), ("0b1_0000", 16), ("1_000", 1000), ("0", 0), ("00", 0), ("-0x10", -16),
        ("+7", 7), ("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -(2**63)),
    ],
)  # fmt: skip
def test_integer_flags_read_go_literals(text, value):
    from reproq_cli.config import parse_go_int

    assert parse_go_int(text) == value


@pytest.mark.parametrize(
    "text",
    ["08", "0o8", "0b2", "0x", "1__0", "_1", "1_", " 5", "5 ", "", "+", "--1", "1e3", "٣", "0x1g"],
)
def test_what_go_does_not_read_as_an_integer_flag_is_refused(text):
    from reproq_cli.config import parse_go_int

    with pytest.raises(ValueError, match="is not a valid integer"):
        parse_go_int(text)


def test_an_integer_flag_past_64_bits_is_refused():
    from reproq_cli.config import parse_go_int

    for text in ("9223372036854775808", "-0x8000000000000001"):
        with pytest.raises(ValueError, match=rf"^{text} is out of range \(a 64-bit integer\)"):
            parse_go_int(text)


def test_yaml_words_are_read_as_go_reads_them(tmp_path):
    # yaml.v3 follows YAML 1.2: only true and false are booleans. PyYAML (YAML 1.1) made
    # `worker_id: on` a boolean (refused) and `queues: [yes, no]` two booleans.
    (tmp_path / "reproq.yaml").write_text(
        "worker:\n  worker_id: on\n  queues: [yes, no, Off]\n  no_listen: y\n  pool_no_fork: NO\n"
    )
    config = resolve("worker", env={}, cwd=tmp_path)
    assert config.get("worker.worker_id") == "on"
    assert config.get("worker.queues") == ["yes", "no", "Off"]
    # A bool setting takes the YAML 1.1 words, as yaml.v3 does for a typed bool.
    assert config.get("worker.no_listen") is True
    assert config.get("worker.pool_no_fork") is False
    (tmp_path / "reproq.yaml").write_text("worker:\n  worker_id: true\n")
    with pytest.raises(ConfigError, match=r"worker\.worker_id .*true is a boolean"):
        resolve("worker", env={}, cwd=tmp_path)
