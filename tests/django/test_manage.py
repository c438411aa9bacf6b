"""`manage.py reproq <subcommand>`."""

from __future__ import annotations

import io
import os
import sys

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from reproq_django.models import PeriodicTask, QueueControl, RateLimit, TaskRun
from tests.conftest import REPO_ROOT
from tests.django.sampleapp import tasks


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


@pytest.mark.django_db
def test_stress_test():
    out, _ = manage("stress-test", "--count", "25", "--bulk")
    assert out.startswith("Enqueued 25 task(s)")
    assert TaskRun.objects.count() == 25
    manage("stress-test", "--count", "5")
    assert TaskRun.objects.count() == 30


@pytest.mark.django_db
def test_install_says_it_is_not_available():
    with pytest.raises(CommandError, match="not available yet"):
        manage("install")


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
                    "python_bin": sys.executable,
                    "poll_min_backoff": "10ms",
                    "poll_max_backoff": "50ms",
                }
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.django.settings")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = tasks.add.enqueue(4, 5)
    _, err = manage("worker", "--burst", "--queues", "default,high")
    assert "Auto-configured ALLOWED_TASK_MODULES=" in err
    result.refresh()
    assert result.return_value == 9
