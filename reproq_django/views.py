"""HTTP endpoints: ``stats/`` for dashboards and reproq-tui, and ``stress-test/`` for staff
(reproq-django.md §6).

Access: ``Authorization: Bearer <METRICS_AUTH_TOKEN>`` (or ``X-Reproq-Token``), a TUI token
signed with it, or a logged-in staff user. Tokens are compared in constant time.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from reproq_cli.config import is_truthy
from reproq_cli.tuitoken import verify
from reproq_django.db import default_db_alias, queue_db_aliases
from reproq_django.models import PeriodicTask, QueueControl, TaskRun, Worker

ALIVE_WINDOW = dt.timedelta(minutes=2)
FALSY = {"", "0", "false", "off", "disabled", "none", "no"}


def _setting(name: str, default: str = "") -> str:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return str(value)


def _token_from(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-Reproq-Token", "").strip()


def authorized(request: HttpRequest) -> bool:
    secret = _setting("METRICS_AUTH_TOKEN")
    token = _token_from(request)
    if (
        secret
        and token
        and (hmac.compare_digest(token.encode(), secret.encode()) or verify(token, secret))
    ):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _denied() -> JsonResponse:
    return JsonResponse({"error": "Unauthorized"}, status=403)


View = Callable[..., HttpResponse]


def _wrong_method(request: HttpRequest, name: str, allowed: str) -> JsonResponse:
    """405, told only to a caller already let in (the views check who asks first)."""
    refused = JsonResponse({"error": f"{name} takes {allowed}, not {request.method}"}, status=405)
    refused["Allow"] = allowed
    return refused


def authorized_get(name: str) -> Callable[[View], View]:
    """GET for those ``authorized`` admits: everyone else gets 403 whatever the method, and
    only they get 405 for another method. Django's ``require_GET`` answers first, which tells
    an anonymous caller that the endpoint exists and what it takes."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not authorized(request):
                return _denied()
            if request.method != "GET":
                return _wrong_method(request, name, "GET")
            return view(request, *args, **kwargs)

        return guarded

    return decorate


def stats_aliases() -> list[str]:
    configured: Any = getattr(settings, "REPROQ_STATS_DATABASES", None)
    if configured in (None, "", []):
        return [default_db_alias()]
    if configured == "*" or configured == ["*"]:
        return queue_db_aliases()
    if isinstance(configured, str):
        return [a.strip() for a in configured.split(",") if a.strip()]
    return [str(a) for a in configured]


def pg_cron_available(alias: str) -> bool:
    """Whether PostgreSQL on ``alias`` has the pg_cron package (pg_available_extensions), as
    reproq-django reports it.

    A role refused the catalog, or any other database error, means False: stats/ must still
    answer. The savepoint keeps such an error from aborting the request's transaction."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return False
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron')"
            )
            row = cursor.fetchone()
    except DatabaseError:
        return False
    return bool(row and row[0])


def scheduler_status() -> dict[str, Any]:
    """reproq-django.md §6: beat if beat runs, else cron when REPROQ_SCHEDULER_MODE says a
    timer runs ``reproq schedule``, else pg_cron if the server has it, else disabled with a
    warning that names what turned beat off.

    ``cron`` is the mode the ``systemd --schedule`` timer runs under; reported as disabled
    (or as pg_cron, when the server merely lists it) it told the operator that nothing
    enqueues the periodic tasks. LOW_MEMORY_MODE does not affect it: a one-shot run keeps
    no process resident."""
    low_memory = is_truthy(_setting("LOW_MEMORY_MODE"))
    chosen = _setting("REPROQ_SCHEDULER_MODE").strip()
    beat_cmd = getattr(settings, "REPROQ_BEAT_CMD", os.environ.get("REPROQ_BEAT_CMD"))
    beat_cmd_off = beat_cmd is not None and str(beat_cmd).strip().lower() in FALSY
    beat_configured = chosen.lower() in ("", "beat") and not beat_cmd_off
    beat_enabled = beat_configured and not low_memory
    available = pg_cron_available(default_db_alias())
    if beat_enabled:
        mode = "beat"
    elif chosen.lower() == "cron":
        mode = "cron"
    elif available:
        mode = "pg_cron"
    else:
        mode = "disabled"
    status: dict[str, Any] = {
        "mode": mode,
        "low_memory": low_memory,
        "beat_enabled": beat_enabled,
        "beat_configured": beat_configured,
        "pg_cron_available": available,
    }
    if mode == "disabled":
        if chosen.lower() not in ("", "beat"):
            reason = f"REPROQ_SCHEDULER_MODE is {chosen!r}"
        elif beat_cmd_off:
            reason = f"REPROQ_BEAT_CMD is {str(beat_cmd)!r}"
        else:
            reason = "LOW_MEMORY_MODE is on"
        status["warning"] = (
            f"No scheduler is running: beat is off ({reason}) and pg_cron is not available;"
            " periodic tasks are enqueued only if `reproq beat --once` runs from cron or a timer"
            " (set REPROQ_SCHEDULER_MODE=cron when one does)."
        )
    return status


@authorized_get("stats/")
def stats(request: HttpRequest) -> JsonResponse:
    now = timezone.now()
    tasks: dict[str, int] = {}
    queues: dict[str, dict[str, int]] = {}
    workers: list[dict[str, Any]] = []
    periodic: list[dict[str, Any]] = []
    controls: list[dict[str, Any]] = []
    failing: dict[str, int] = {}
    databases: dict[str, dict[str, Any]] = {}
    alive = dead = 0
    for alias in stats_aliases():
        runs = TaskRun.objects.using(alias)
        per_db: dict[str, int] = {}
        for row in runs.values("queue_name", "status").annotate(n=Count("result_id")):
            tasks[row["status"]] = tasks.get(row["status"], 0) + row["n"]
            per_db[row["status"]] = per_db.get(row["status"], 0) + row["n"]
            queue = queues.setdefault(row["queue_name"], {})
            queue[row["status"]] = queue.get(row["status"], 0) + row["n"]
        for row in runs.filter(status="FAILED").values("task_path").annotate(n=Count("result_id")):
            failing[row["task_path"]] = failing.get(row["task_path"], 0) + row["n"]
        db_alive = 0
        for worker in Worker.objects.using(alias).order_by("worker_id"):
            is_alive = worker.last_seen_at >= now - ALIVE_WINDOW
            db_alive += is_alive
            workers.append(
                {
                    "worker_id": worker.worker_id,
                    "hostname": worker.hostname,
                    "concurrency": worker.concurrency,
                    "queues": worker.queues,
                    "started_at": worker.started_at,
                    "last_seen_at": worker.last_seen_at,
                    "version": worker.version,
                    "alive": is_alive,
                    "database": alias,
                }
            )
        db_workers = Worker.objects.using(alias).count()
        alive += db_alive
        dead += db_workers - db_alive
        for task in PeriodicTask.objects.using(alias).order_by("name"):
            periodic.append(
                {
                    "name": task.name,
                    "cron_expr": task.cron_expr,
                    "enabled": task.enabled,
                    "next_run_at": task.next_run_at,
                    "queue_name": task.queue_name,
                    "database": alias,
                }
            )
        for control in QueueControl.objects.using(alias).order_by("queue_name"):
            controls.append(
                {
                    "queue_name": control.queue_name,
                    "paused": control.paused,
                    "paused_at": control.paused_at,
                    "reason": control.reason,
                    "updated_at": control.updated_at,
                    "database": alias,
                }
            )
        databases[alias] = {"tasks": per_db, "workers": db_workers, "workers_alive": db_alive}
    top = sorted(failing.items(), key=lambda item: (-item[1], item[0]))[:5]
    return JsonResponse(
        {
            "tasks": tasks,
            "queues": queues,
            "workers": workers,
            "periodic": periodic,
            "queue_controls": controls,
            "worker_health": {"alive": alive, "dead": dead},
            "scheduler": scheduler_status(),
            "top_failing": [{"task_path": path, "count": count} for path, count in top],
            "databases": databases,
            "fetched_at": timezone.now(),
        }
    )


STRESS_TEST_MAX = 10_000


def stress_test(request: HttpRequest) -> JsonResponse:
    """POST by staff only; everyone else gets 403 whatever the method, so the method answer
    does not tell an anonymous caller that the endpoint exists."""
    user = getattr(request, "user", None)
    if not (user is not None and user.is_authenticated and user.is_staff):
        return _denied()
    if request.method != "POST":
        return _wrong_method(request, "stress-test/", "POST")
    from django.tasks import task_backends

    from reproq_django.tasks import debug_noop_task

    raw = request.POST.get("count", "100")
    try:
        count: int | None = int(raw)
    except ValueError:
        count = None
    if count is None or not 0 <= count <= STRESS_TEST_MAX:
        return JsonResponse(
            {"error": f"count must be a whole number from 0 to {STRESS_TEST_MAX}, got {raw!r}"},
            status=400,
        )
    run = timezone.now().strftime("%Y%m%d%H%M%S%f")
    items = [
        (debug_noop_task, (), {"sleep_seconds": 0.1, "label": f"http-{run}-{i}"})
        for i in range(count)
    ]
    task_backends[debug_noop_task.backend].bulk_enqueue(items)
    return JsonResponse({"ok": True, "enqueued": count})
