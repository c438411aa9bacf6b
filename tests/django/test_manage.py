"""`manage.py reproq <subcommand>`."""

from __future__ import annotations

import io
import os
import re
import sys

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.management.sql import emit_post_migrate_signal

from reproq_django.models import PeriodicTask, QueueControl, RateLimit, TaskRun, Worker
from tests.conftest import REPO_ROOT
from tests.django.sampleapp import tasks
from tests.django.support import run_sqlite_script


def manage(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reproq", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_pause_and_resume_queue():
    out, _ = manage("pause-queue", "mail", "--reason", "maintenance")
    assert out.strip() == "Queue mail paused."
    control = QueueControl.objects.get(queue_name="mail")
    assert (control.paused, control.reason) == (True, "maintenance")
    assert control.paused_at is not None
    manage("resume-queue", "mail")
    control.refresh_from_db()
    assert (control.paused, control.paused_at, control.reason) == (False, None, "")
    for bad in ("", "a\nb", "a,b"):
        with pytest.raises(CommandError, match=rf"^queue name {re.escape(repr(bad))} cannot be"):
            manage("pause-queue", bad)
    assert QueueControl.objects.count() == 1


@pytest.mark.django_db
def test_stats():
    tasks.add.enqueue(1, 1)
    tasks.add.enqueue(2, 2)
    TaskRun.objects.filter(result_id=TaskRun.objects.first().result_id).update(status="FAILED")
    out, _ = manage("stats")
    assert "Database default:" in out
    assert "  FAILED: 1" in out
    assert "  READY: 1" in out


@pytest.mark.django_db
def test_allowlist_finds_task_modules():
    out, _ = manage("allowlist")
    line = out.strip()
    assert line.startswith("ALLOWED_TASK_MODULES=")
    prefixes = line.split("=", 1)[1].split(",")
    assert "tests.django.sampleapp.tasks." in prefixes
    assert "reproq_django.tasks." in prefixes
    plain, _ = manage("allowlist", "--format", "plain")
    assert plain.split() == prefixes


@pytest.mark.django_db
def test_migrate_syncs_recurring_tasks():
    """The app's post_migrate hook, which loads the recurring module only when it runs."""
    PeriodicTask.objects.all().delete()
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert PeriodicTask.objects.get(name="sample-add-every-5").cron_expr == "*/5 * * * *"


@pytest.mark.django_db
def test_recurring_stacks_on_task_and_syncs():
    out, _ = manage("sync-recurring")
    assert out.strip() == "Synced 1 recurring task(s) (auto)."
    row = PeriodicTask.objects.get(name="sample-add-every-5")
    assert row.task_path == "tests.django.sampleapp.tasks.periodic_add"
    assert row.cron_expr == "*/5 * * * *"
    assert row.payload_json == {"args": [1, 2], "kwargs": {}}
    assert row.next_run_at.minute % 5 == 0
    assert row.enabled
    # the decorated object is still Django's Task
    assert tasks.periodic_add.enqueue(1, 2).args == [1, 2]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("@daily", "@daily"),  # croniter took descriptors; the beat refused the row each pass
        ("0 9 * * 7", "above maximum (6)"),
        ("0 0 30 2 *", "never matches"),
    ],
)
def test_recurring_refuses_a_schedule_the_beat_would_refuse(schedule, message):
    from reproq_cli.core.cron import CronError
    from reproq_django.recurring import recurring

    with pytest.raises(CronError, match=re.escape(message)):
        recurring(schedule=schedule, key="never")


@pytest.mark.django_db
def test_stress_test():
    out, _ = manage("stress-test", "--count", "25", "--bulk")
    assert out.startswith("Enqueued 25 task(s)")
    assert TaskRun.objects.count() == 25
    manage("stress-test", "--count", "5")
    assert TaskRun.objects.count() == 30


@pytest.mark.django_db(transaction=True)
def test_check_and_migrate_worker_use_the_cli():
    out, _ = manage("check")
    assert "OK   worker binary:" in out
    assert "reproq 0." in out
    assert "Configuration looks good!" in out
    # Transactional tests truncate every table, the seeded global rate limit included:
    # migrate-worker puts back what is missing, then the check passes.
    RateLimit.objects.filter(key="global").delete()
    with pytest.raises(CommandError, match="exited with status 1"):
        manage("migrate-worker", "--check")
    manage("migrate-worker")
    manage("migrate-worker", "--check")
    assert RateLimit.objects.filter(key="global").exists()


@pytest.mark.django_db(transaction=True)
def test_worker_runs_the_projects_tasks(tmp_path, monkeypatch):
    (tmp_path / "reproq.yaml").write_text(
        yaml.safe_dump(
            {
                "worker": {
                    "poll_min_backoff": "10ms",
                    "poll_max_backoff": "50ms",
                }
            }
        )
    )
    # A python3 on PATH that is not this environment: tasks must still run in ours.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text("#!/bin/sh\nexit 3\n")
    (fake_bin / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("REPROQ_DEFAULT_PYTHON_BIN", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.django.settings")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = tasks.add.enqueue(4, 5)
    # Django's own options after the subcommand stay Django's (the CLI refused them).
    _, err = manage(
        "worker", "--burst", "--settings", "tests.django.settings", "--queues", "default,high",
        "--verbosity=1", "--no-color",
    )  # fmt: skip
    assert "Auto-configured ALLOWED_TASK_MODULES=" in err
    result.refresh()
    assert result.return_value == 9


@pytest.mark.django_db
def test_djangos_options_after_a_table_subcommand_are_djangos():
    out, _ = manage("stats", "--no-color", "--verbosity", "2")
    assert out.startswith("Database default:")
    with pytest.raises(CommandError, match=r"unrecognized arguments: --bogus"):
        manage("stats", "--bogus")


def test_a_cli_usage_error_keeps_its_exit_code():
    with pytest.raises(CommandError, match=r"^reproq config exited with status 2$") as caught:
        manage("config", "--no-such-flag")
    assert caught.value.returncode == 2


def test_systemd_units(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, err = manage(
        "systemd", "--user", "app", "--concurrency", "4", "--queues", "default,high",
        "--env-file", "/etc/reproq.env", "--metrics-auth-token", "tok", "--schedule",
    )  # fmt: skip
    name = tmp_path.name
    worker = (tmp_path / f"reproq-worker-{name}.service").read_text()
    assert "User=app" in worker
    assert "Group=app" in worker
    assert f"WorkingDirectory={tmp_path}" in worker
    assert "reproq worker --concurrency 4 --queues default,high" in worker
    assert "Restart=always" in worker
    assert "EnvironmentFile=/etc/reproq.env" in worker
    assert 'Environment="METRICS_AUTH_TOKEN=tok"' in worker
    beat = (tmp_path / f"reproq-beat-{name}.service").read_text()
    assert "REPROQ_SCHEDULER_MODE:-beat" in beat
    timer = (tmp_path / f"reproq-schedule-{name}.timer").read_text()
    assert "OnCalendar=*-*-* *:*:00" in timer
    assert "Persistent=true" in timer
    assert out.count("Wrote ") == 4
    assert err.startswith(f"warning: no manage.py in {tmp_path}")
    (tmp_path / "manage.py").write_text("")
    assert manage("systemd")[1] == ""
    for flag in ("--queues", "--user", "--env-file"):
        with pytest.raises(CommandError, match=rf"^{flag} 'x\\nExecStartPre=/bin/true' holds"):
            manage("systemd", flag, "x\nExecStartPre=/bin/true")
    assert "ExecStartPre" not in (tmp_path / f"reproq-worker-{name}.service").read_text()


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_init_writes_a_config_the_cli_accepts(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    skips = ("--skip-install", "--skip-worker-migrate", "--skip-migrate")
    out, _ = manage("init", "--format", fmt, *skips)
    assert f"Wrote reproq.{fmt}" in out
    from reproq_cli.config import resolve

    config = resolve("worker", env={}, cwd=tmp_path)
    assert "tests.django.sampleapp.tasks." in config.get("worker.allowed_task_modules")
    assert config.get("worker.queues") == ["default"]
    again, _ = manage("init", "--format", fmt, *skips)
    assert "exists; keeping it" in again


@pytest.mark.django_db
def test_health_and_check_commands(tmp_path, monkeypatch):
    tasks.add.enqueue(1, 2)
    out = io.StringIO()
    call_command("reproq_health", stdout=out)
    assert "READY: 1" in out.getvalue()
    assert "Enabled periodic tasks:" in out.getvalue()
    out = io.StringIO()
    call_command("reproq_check", stdout=out, stderr=io.StringIO())
    assert "Configuration looks good!" in out.getvalue()


def test_init_executor_stub(tmp_path):
    path = tmp_path / "stub.py"
    call_command("reproq_init_executor", "--path", str(path), stdout=io.StringIO())
    assert "from reproq_django.executor import execute" in path.read_text()
    with pytest.raises(CommandError, match="exists"):
        call_command("reproq_init_executor", "--path", str(path), stdout=io.StringIO())


def test_paths_and_urls_that_cannot_be_used_are_one_line_errors(tmp_path):
    nowhere = tmp_path / "no" / "such" / "dir"
    with pytest.raises(CommandError, match=rf"^cannot write {nowhere}/x.py: No such file"):
        call_command("reproq_init_executor", "--path", str(nowhere / "x.py"))
    with pytest.raises(CommandError, match=rf"^cannot write {nowhere}/r.yaml: No such file"):
        manage("init", "--config", str(nowhere / "r.yaml"), "--skip-migrate")
    with pytest.raises(CommandError, match=r"^--source 'http://\[::1' is not a valid URL: "):
        manage("install", "--source", "http://[::1")


def test_memory_logger_in_django_processes(tmp_path):
    script = (
        "import logging, django; logging.basicConfig(level=logging.INFO); django.setup();"
        "import time; time.sleep(0.5)"
    )
    result = run_sqlite_script(script, tmp_path, REPROQ_MEMORY_LOG_INTERVAL="30s")
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "reproq_memory_usage" in x]
    assert "rss_bytes=" in line
    assert "interval_s=30.0" in line


def _aged(result, **fields):
    TaskRun.objects.filter(result_id=int(result.id)).update(**fields)


@pytest.mark.django_db
def test_reclaim_requeue_and_fail():
    import datetime as dt

    from django.utils import timezone

    old = timezone.now() - dt.timedelta(hours=1)
    a, b, fresh, cancelled = (tasks.add.enqueue(i, i) for i in range(4))
    for result in (a, b):
        _aged(result, status="RUNNING", leased_until=old, leased_by="dead")
    _aged(fresh, status="RUNNING", leased_until=timezone.now() + dt.timedelta(hours=1))
    _aged(cancelled, status="RUNNING", leased_until=old, cancel_requested=True)
    out, _ = manage("reclaim", "--dry-run")
    assert out.strip() == "Would reclaim 2 task(s) (requeue)."
    out, _ = manage("reclaim", "--limit", "1")
    assert out.strip() == "Reclaimed 1 task(s) (requeue)."
    a.refresh()
    assert (a.raw_status, a.data.leased_by) == ("READY", None)
    out, _ = manage("reclaim", "--action", "fail", "--older-than", "10m")
    assert out.strip() == "Reclaimed 1 task(s) (fail)."
    b.refresh()
    assert b.raw_status == "FAILED"
    assert b.errors_json[-1]["kind"] == "reclaim"
    fresh.refresh()
    cancelled.refresh()
    assert (fresh.raw_status, cancelled.raw_status) == ("RUNNING", "RUNNING")


@pytest.mark.django_db
def test_prune_commands():
    import datetime as dt

    from django.utils import timezone

    long_ago = timezone.now() - dt.timedelta(days=30)
    done, failed, recent, running = (tasks.add.enqueue(i, i) for i in range(4))
    _aged(done, status="SUCCESSFUL", finished_at=long_ago)
    _aged(failed, status="FAILED", finished_at=long_ago)
    _aged(recent, status="SUCCESSFUL", finished_at=timezone.now())
    _aged(running, status="RUNNING", finished_at=long_ago)
    assert manage("prune-successful", "--dry-run")[0].strip() == "Would prune 1 task(s)."
    assert manage("prune-successful")[0].strip() == "Pruned 1 task(s)."
    assert manage("prune", "--statuses", "FAILED,SUCCESSFUL")[0].strip() == "Pruned 1 task(s)."
    assert TaskRun.objects.count() == 2
    with pytest.raises(CommandError, match="RUNNING"):
        manage("prune", "--statuses", "RUNNING")
    with pytest.raises(CommandError, match="invalid age"):
        manage("prune", "--older-than", "soon")
    _aged(recent, status="SUCCESSFUL", finished_at=long_ago)
    for command in ("prune", "prune-successful", "prune-workers", "reclaim"):
        with pytest.raises(CommandError, match=r"^--older-than is empty: give an age such as 7d"):
            manage(command, "--older-than", " ")
    with pytest.raises(CommandError, match=r"^--statuses: unknown status BOGUS, DONE; use "):
        manage("prune", "--statuses", "bogus,SUCCESSFUL,done")
    assert TaskRun.objects.count() == 2  # neither removed the aged SUCCESSFUL row
    Worker.objects.create(worker_id="old", last_seen_at=long_ago)
    Worker.objects.create(worker_id="new")
    assert manage("prune-workers")[0].strip() == "Deleted 1 worker(s)."
    assert list(Worker.objects.values_list("worker_id", flat=True)) == ["new"]


@pytest.mark.django_db(transaction=True)
def test_logs_use_the_cli_and_cancel_requests_a_stop(tmp_path, capfd):
    result = tasks.add.enqueue(6, 7)
    log = tmp_path / "t.log"
    log.write_text("first\nsecond\n")
    TaskRun.objects.filter(result_id=int(result.id)).update(status="RUNNING", logs_uri=str(log))
    manage("logs", "--id", result.id, "--tail", "1")
    assert capfd.readouterr().out.strip().endswith("second")
    # cancel is the admin's cancel, done here (`reproq cancel` marks RUNNING rows only).
    out, _ = manage("cancel", "--id", result.id)
    assert "Cancellation requested for task run" in out
    result.refresh()
    assert result.data.cancel_requested is True


@pytest.mark.django_db(transaction=True)
def test_doctor_uses_the_cli(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reproq.yaml").write_text(
        yaml.safe_dump({"worker": {"python_bin": sys.executable, "allowed_task_modules": ["x."]}})
    )
    manage("migrate-worker")  # transactional tests may have emptied rate_limits
    capfd.readouterr()
    _, err = manage("doctor", "--strict")
    out = capfd.readouterr().out
    assert "OK   dsn: answers:" in out
    assert "OK   schema: complete" in out
    assert "OK   executor: reproq_django.executor importable" in out
    # The file's allow-list is the worker's: an auto-configured variable would outrank it.
    assert "OK   allow-list: x." in out
    assert "Auto-configured" not in err
    # Without one, doctor checks the list `manage.py reproq worker` fills in (it warned).
    (tmp_path / "reproq.yaml").write_text(
        yaml.safe_dump({"worker": {"python_bin": sys.executable}})
    )
    _, err = manage("doctor")
    out = capfd.readouterr().out
    assert "OK   allow-list: reproq_django.tasks., tests.django.sampleapp.tasks." in out
    assert "Auto-configured ALLOWED_TASK_MODULES=reproq_django.tasks.,tests.django" in err


@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_an_unknown_or_non_postgres_database_alias_is_refused(settings):
    # A wrong --database fell through to the CLI's own DSN (or the embedded server) and
    # migrated or ran against that instead; the table commands raised a traceback.
    for command in ("migrate-worker", "stats", "pause-queue q", "prune", "doctor"):
        with pytest.raises(
            CommandError, match=r"^--database 'nosuch' is not in DATABASES; use one of: default"
        ):
            manage(*command.split(), "--database", "nosuch")
    settings.DATABASES = {
        **settings.DATABASES,
        "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }
    with pytest.raises(
        CommandError,
        match=r"^--database 'lite' is django.db.backends.sqlite3, not PostgreSQL",
    ):
        manage("migrate-worker", "--database", "lite")
    assert not QueueControl.objects.filter(queue_name="q").exists()


def test_the_cli_gets_the_databases_options_too(monkeypatch):
    from django.db import connections
    from psycopg import conninfo

    from reproq_django.management.commands.reproq import database_dsn

    # Left out, the worker reached another database (OPTIONS' service), the public schema
    # instead of the project's search_path, or the server without TLS.
    options = {
        "options": "-c search_path=elsewhere",
        "sslmode": "disable",
        "prepare_threshold": 3,  # Django's, not libpq's
        "connect_timeout": 7,
    }
    monkeypatch.setitem(connections["default"].settings_dict, "OPTIONS", options)
    params = conninfo.conninfo_to_dict(database_dsn("default"))
    assert params["options"] == "-c search_path=elsewhere"
    assert (params["sslmode"], params["connect_timeout"]) == ("disable", "7")
    assert params["dbname"] == connections["default"].settings_dict["NAME"]
    assert "prepare_threshold" not in params and "context" not in params


@pytest.mark.django_db
def test_the_cli_connects_as_the_role_django_assumes(monkeypatch):
    import psycopg
    from django.db import connections
    from psycopg import conninfo

    from reproq_django.management.commands.reproq import database_dsn

    role = "reproq test\\role"  # a space and a backslash, which libpq's options escape
    login = database_dsn("default")
    # Roles belong to the server, not to the test's transaction: made and dropped outside it.
    with psycopg.connect(login, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        options = {"options": "-c search_path=public", "assume_role": role}
        monkeypatch.setitem(connections["default"].settings_dict, "OPTIONS", options)
        dsn = database_dsn("default")
        assert "assume_role" not in conninfo.conninfo_to_dict(dsn)
        # Django's SET ROLE covered its own connections only: the worker wrote as the login.
        with psycopg.connect(dsn) as conn:
            query = "SELECT current_user, current_setting('search_path')"
            assert conn.execute(query).fetchone() == (role, "public")
    finally:
        with psycopg.connect(login, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
