"""`manage.py migrate` on PostgreSQL gives exactly `reproq migrate`'s schema; SQLite works too."""

from __future__ import annotations

import os
import textwrap

import psycopg
import pytest

from reproq_django.schema import TABLES
from tests.conftest import dsn_for
from tests.django.support import run_sqlite_script
from tests.integration.test_schema import catalog

REPROQ_TABLES = set(TABLES)


def reproq_catalog(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        snapshot = catalog(conn)
    snapshot.pop("rate_limits")  # rows, not schema: transactional tests truncate tables
    snapshot["columns"] = {t: c for t, c in snapshot["columns"].items() if t in REPROQ_TABLES}
    snapshot["indexes"] = {n: i for n, i in snapshot["indexes"].items() if i[0] in REPROQ_TABLES}
    snapshot["constraints"] = [
        c for c in snapshot["constraints"] if any(c[0].startswith(t) for t in REPROQ_TABLES)
    ]
    snapshot["triggers"] = [t for t in snapshot["triggers"] if "task_runs" in t[1]]
    return snapshot


@pytest.mark.django_db
def test_django_migrate_matches_reproq_migrate(pg_cluster):
    django_db = os.environ["REPROQ_TEST_DJANGO_DSN"]
    reproq_db = dsn_for(pg_cluster.admin_dsn, pg_cluster.template)
    assert reproq_catalog(django_db) == reproq_catalog(reproq_db)


def test_sqlite_project_can_migrate_enqueue_and_inspect(tmp_path):
    script = textwrap.dedent(
        """
        import django, json
        from django.conf import settings
        from django.core.management import call_command
        django.setup()
        call_command("migrate", verbosity=0)
        from django.tasks import task_backends
        from reproq_django.models import TaskRun, RateLimit
        from reproq_django.workflows import chord
        from tests.django.sampleapp import tasks
        a = tasks.add.enqueue(1, 2)
        b = tasks.add.enqueue(1, 2)
        members, callback = chord((tasks.add, (3, 4)), callback=(tasks.shout, ("x",))).enqueue()
        TaskRun.objects.filter(result_id=int(a.id)).update(status="SUCCESSFUL", return_json=3)
        got = tasks.add.get_result(a.id)
        print(json.dumps({
            "dedup": a.id == b.id,
            "rows": TaskRun.objects.count(),
            "return": got.return_value,
            "callback": callback.raw_status,
            "global_limit": RateLimit.objects.filter(key="global").count(),
            "check": [m.id for m in task_backends["default"].check()],
        }))
        """
    )
    result = run_sqlite_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "dedup": True,
        "rows": 3,
        "return": 3,
        "callback": "WAITING",
        "global_limit": 1,
        "check": ["reproq_django.W001"],
    }
