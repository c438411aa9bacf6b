"""``manage.py reproq_health``: counts, recent runs, workers and periodic tasks."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.db.models import Count
from django.utils import timezone

from reproq_django.db import default_db_alias

REQUIRED = ("task_runs", "reproq_workers", "periodic_tasks", "reproq_queue_controls")


class Command(BaseCommand):
    help = "Summarise the health of reproq in this project's database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stale-minutes", type=int, default=2)
        parser.add_argument("--recent-limit", type=int, default=5)

    def handle(self, *args: Any, **options: Any) -> None:
        from reproq_django.models import PeriodicTask, TaskRun, Worker

        recent_limit = options["recent_limit"]
        if recent_limit < 0:
            raise CommandError(f"--recent-limit must be 0 or more, not {recent_limit}")
        stale_minutes = options["stale_minutes"]
        if stale_minutes < 0:
            raise CommandError(f"--stale-minutes must be 0 or more, not {stale_minutes}")
        try:
            cutoff = timezone.now() - dt.timedelta(minutes=stale_minutes)
        except OverflowError:  # a cutoff before year 1
            raise CommandError(
                f"--stale-minutes {stale_minutes} is out of range; give a number of minutes "
                "such as 2 (at most about 1000000000)"
            ) from None
        alias = default_db_alias()
        try:
            tables = set(connections[alias].introspection.table_names())
        except Exception as exc:
            raise CommandError(f"cannot connect to database {alias!r}: {exc}") from None
        self.stdout.write(f"Database {alias!r}: connected")
        self.stdout.write(f"DATABASE_URL set: {'yes' if os.environ.get('DATABASE_URL') else 'no'}")
        missing = [t for t in REQUIRED if t not in tables]
        if missing:
            raise CommandError(f"Missing tables: {', '.join(missing)}")
        runs = TaskRun.objects.using(alias)
        for row in runs.values("status").annotate(n=Count("result_id")).order_by("status"):
            self.stdout.write(f"  {row['status']}: {row['n']}")
        self.stdout.write("Recent runs:")
        for run in runs.order_by("-result_id")[:recent_limit]:
            self.stdout.write(f"  {run.result_id} {run.status} {run.task_path} {run.enqueued_at}")
        for worker in Worker.objects.using(alias).order_by("worker_id"):
            state = "ALIVE" if worker.last_seen_at >= cutoff else "STALE"
            self.stdout.write(f"  worker {worker.worker_id}: {state}")
        enabled = PeriodicTask.objects.using(alias).filter(enabled=True).count()
        self.stdout.write(f"Enabled periodic tasks: {enabled}")
