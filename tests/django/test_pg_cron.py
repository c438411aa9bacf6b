"""`manage.py reproq pg-cron` where pg_cron is absent, and the SQL function it installs.

The embedded PostgreSQL ships no pg_cron, so scheduling itself is not exercised here; the
function pg_cron would call is installed and called directly. test_pg_cron_real.py runs the
command against a PostgreSQL with pg_cron preloaded.
"""

from __future__ import annotations

import io
import textwrap

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from reproq_cli.db.queries import read_sql_resource
from reproq_django.management.commands.reproq import enqueue_command, job_name
from reproq_django.models import PeriodicTask, TaskRun
from tests.django.support import run_sqlite_script

pytestmark = pytest.mark.django_db


def manage(*args: str) -> str:
    out = io.StringIO()
    call_command("reproq", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _schedule(name: str, payload: object, **extra) -> PeriodicTask:
    return PeriodicTask.objects.create(
        name=name,
        cron_expr=extra.pop("cron_expr", "*/5 * * * *"),
        task_path="myapp.tasks.report",
        payload_json=payload,
        next_run_at=timezone.now(),
        **extra,
    )


def test_job_names_are_sanitised_and_unique():
    assert job_name("reproq_periodic", "nightly") == "reproq_periodic_nightly"
    odd = job_name("reproq_periodic", "nightly report!")
    assert odd.startswith("reproq_periodic_nightly_report_")
    assert odd != job_name("reproq_periodic", "nightly report?")
    long = job_name("reproq_periodic", "x" * 100)
    assert len(long) == 63
    assert enqueue_command("it's") == "SELECT reproq_enqueue_periodic_task('it''s')"


def test_without_pg_cron():
    _schedule("nightly", {})
    with pytest.raises(CommandError, match="pg_cron is not available"):
        manage("pg-cron")
    assert "skipping" in manage("pg-cron", "--if-supported")
    plan = manage("pg-cron", "--dry-run")
    assert "note: pg_cron is not available on this server" in plan
    assert "would schedule reproq_periodic_nightly '*/5 * * * *' -> nightly" in plan
    assert (
        "would drop function reproq_enqueue_periodic_task(text) unless jobs under another prefix"
        in manage("pg-cron", "--remove", "--dry-run")
    )
    with pytest.raises(CommandError):
        manage("pg-cron", "--install", "--remove")


def test_the_enqueue_function():
    with connection.cursor() as cursor:
        cursor.execute(read_sql_resource("pg_cron.sql"))
    _schedule("envelope", {"args": [1], "kwargs": {"a": 2}}, max_attempts=0, queue_name="")
    _schedule("bare_object", {"flag": True})
    _schedule("bare_array", [3, 4])
    _schedule("off", {}, enabled=False)
    with connection.cursor() as cursor:
        ids = {}
        for name in ("envelope", "bare_object", "bare_array", "off", "missing"):
            cursor.execute("SELECT reproq_enqueue_periodic_task(%s)", [name])
            ids[name] = cursor.fetchone()[0]
        # the test runs in one transaction, so now() and the scheduled_at are the same: dedupe
        cursor.execute("SELECT reproq_enqueue_periodic_task('envelope')")
        assert cursor.fetchone()[0] is None
    assert ids["off"] is None
    assert ids["missing"] is None
    run = TaskRun.objects.get(result_id=ids["envelope"])
    assert run.spec_json["args"] == [1]
    assert run.spec_json["kwargs"] == {"a": 2}
    assert (run.queue_name, run.max_attempts, run.status) == ("default", 3, "READY")
    assert run.spec_json["periodic_name"] == "envelope"
    assert run.spec_json["scheduled_at"].endswith("Z")
    import hashlib

    with connection.cursor() as cursor:
        cursor.execute("SELECT spec_json::text FROM task_runs WHERE result_id = %s", [run.pk])
        text = cursor.fetchone()[0]
    assert run.spec_hash.strip() == hashlib.sha256(text.encode()).hexdigest()
    assert TaskRun.objects.get(result_id=ids["bare_object"]).spec_json["kwargs"] == {"flag": True}
    assert TaskRun.objects.get(result_id=ids["bare_array"]).spec_json["args"] == [3, 4]
    assert PeriodicTask.objects.get(name="envelope").last_run_at is not None


def test_non_postgres_database(tmp_path):
    script = textwrap.dedent(
        """
        import django
        from django.core.management import call_command
        django.setup()
        call_command("migrate", verbosity=0)
        call_command("reproq", "pg-cron", "--if-supported")
        try:
            call_command("reproq", "pg-cron")
        except Exception as exc:
            print("ERROR", exc)
        """
    )
    result = run_sqlite_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pg-cron unavailable (non-Postgres database); skipping." in result.stdout
    assert "ERROR pg-cron requires a PostgreSQL database." in result.stdout
