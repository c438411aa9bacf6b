"""Django admin for reproq's tables, with the operator actions of reproq-django.md §2.3."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db import IntegrityError, connections, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from reproq_cli.db.queries import query
from reproq_django.models import (
    PeriodicTask,
    QueueControl,
    RateLimit,
    TaskRun,
    TaskRunStatus,
    Worker,
    WorkflowRun,
)
from reproq_django.workflows import cancel_queued

ALIVE_WINDOW = dt.timedelta(minutes=2)
STALE_WORKER_AGE = dt.timedelta(minutes=10)


def _waits_on_unfinished(alias: str, result_id: int) -> bool:
    """Whether a FAILED row waits on a task that has not succeeded (reproq triage retry's
    rule), asked for this row alone: the selection, not every FAILED row of the table."""
    if connections[alias].vendor != "postgresql":
        return False
    with connections[alias].cursor() as cursor:
        cursor.execute(query("triage_retry_blocked"), {"all": False, "result_id": result_id})
        return cursor.fetchone() is not None


class ReproqModelAdmin(admin.ModelAdmin):
    def get_changelist_instance(self, request: HttpRequest) -> Any:
        # PostgreSQL refuses NUL in a text parameter; from a filter or the search box it
        # became a 500 when the page rendered. The admin's answer to a bad filter is ?e=1.
        if any("\x00" in value for value in request.GET.values()):
            raise IncorrectLookupParameters("a filter or search value holds a NUL character")
        return super().get_changelist_instance(request)


class LeaseStatusFilter(admin.SimpleListFilter):
    title = "lease"
    parameter_name = "lease"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("stale", "Stale"), ("active", "Active"), ("none", "None")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> QuerySet[TaskRun]:
        running = queryset.filter(status=TaskRunStatus.RUNNING)
        now = timezone.now()
        if self.value() == "stale":
            return running.filter(leased_until__lt=now)
        if self.value() == "active":
            return running.filter(leased_until__gte=now)
        if self.value() == "none":
            return running.filter(leased_until__isnull=True)
        return queryset


@admin.register(TaskRun)
class TaskRunAdmin(ReproqModelAdmin):
    list_display = (
        "result_id",
        "status",
        "lease_state",
        "task_path",
        "queue_name",
        "priority",
        "attempts_display",
        "lock_key",
        "concurrency_key",
        "enqueued_at",
        "finished_at",
    )
    list_filter = ("status", LeaseStatusFilter, "queue_name", "backend_alias")
    search_fields = ("=result_id", "spec_hash", "task_path", "leased_by", "lock_key")
    defer_fields = ("spec_json", "return_json", "errors_json", "metadata_json")
    ordering = ("-result_id",)
    actions = (
        "replay_tasks",
        "retry_failed_tasks",
        "discard_failed_tasks",
        "cancel_tasks",
        "delete_successful_tasks",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRun]:
        return super().get_queryset(request).defer(*self.defer_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in TaskRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # The replay action's permissions=("replay",) (Django calls has_<name>_permission):
        # a replay runs a task again, so it takes more than a view of the change list.
        return request.user.has_perm(f"{self.opts.app_label}.can_replay_taskrun")

    @admin.display(description="lease")
    def lease_state(self, obj: TaskRun) -> str:
        if obj.status != TaskRunStatus.RUNNING:
            return ""
        if obj.leased_until is None:
            return "NONE"
        return "STALE" if obj.leased_until < timezone.now() else "ACTIVE"

    @admin.display(description="attempts")
    def attempts_display(self, obj: TaskRun) -> str:
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.action(description="Replay selected tasks (new rows)", permissions=("replay",))
    def replay_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        created, skipped = 0, 0
        for run in queryset.defer(None):
            copy = TaskRun(
                backend_alias=run.backend_alias,
                queue_name=run.queue_name,
                priority=run.priority,
                spec_json=run.spec_json,
                spec_hash=run.spec_hash,
                task_path=run.task_path or (run.spec_json or {}).get("task_path"),
                max_attempts=run.max_attempts,
                timeout_seconds=run.timeout_seconds,
                lock_key=run.lock_key,
                concurrency_key=run.concurrency_key,
                concurrency_limit=run.concurrency_limit,
            )
            try:
                with transaction.atomic(using=run._state.db):
                    copy.save(using=run._state.db, force_insert=True)
                created += 1
            except IntegrityError:
                skipped += 1  # an identical spec is still READY or RUNNING
        self.message_user(request, f"Replayed {created} task(s).")
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped} task(s) whose spec is still queued or running.",
                messages.WARNING,
            )

    @admin.action(description="Retry selected failed tasks", permissions=("change",))
    def retry_failed_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        count, skipped = 0, 0
        failed = queryset.filter(status=TaskRunStatus.FAILED)
        for result_id in failed.values_list("result_id", flat=True):
            if _waits_on_unfinished(queryset.db, result_id):
                # READY, a chain child or chord callback would run before what it waits for.
                skipped += 1
                continue
            now = timezone.now()
            try:
                # One row at a time: a spec that is READY or RUNNING again (enqueued anew,
                # or twice in this selection) may be active only once (the unique index).
                with transaction.atomic(using=queryset.db):
                    count += failed.filter(result_id=result_id).update(
                        status=TaskRunStatus.READY,
                        run_after=now,
                        attempts=0,
                        last_error=None,
                        failed_at=None,
                        finished_at=None,
                        leased_until=None,
                        leased_by=None,
                        cancel_requested=False,
                        updated_at=now,
                    )
            except IntegrityError:
                skipped += 1
        self.message_user(request, f"Retried {count} task(s).")
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped} task(s) whose spec is already queued or running, or that "
                "wait on a task that has not succeeded.",
                messages.WARNING,
            )

    @admin.action(description="Discard selected failed tasks", permissions=("delete",))
    def discard_failed_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        now = timezone.now()
        count = queryset.filter(status=TaskRunStatus.FAILED).update(
            status=TaskRunStatus.CANCELLED,
            finished_at=now,
            last_error="Discarded in admin",
            updated_at=now,
        )
        self.message_user(request, f"Discarded {count} task(s).")

    @admin.action(description="Cancel selected tasks", permissions=("change",))
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        now = timezone.now()
        requested = queryset.filter(status=TaskRunStatus.RUNNING).update(
            cancel_requested=True, updated_at=now
        )
        cancelled = cancel_queued(queryset)
        self.message_user(
            request,
            f"Cancellation requested for {requested} running task(s); "
            f"cancelled {cancelled} queued task(s).",
        )

    @admin.action(description="Delete selected successful tasks", permissions=("delete",))
    def delete_successful_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        count, _ = queryset.filter(status=TaskRunStatus.SUCCESSFUL).delete()
        self.message_user(request, f"Deleted {count} task(s).")


@admin.register(Worker)
class WorkerAdmin(ReproqModelAdmin):
    list_display = ("worker_id", "hostname", "state", "concurrency", "queues", "last_seen_at")
    search_fields = ("worker_id", "hostname")
    actions = ("delete_stale_workers",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="state")
    def state(self, obj: Worker) -> str:
        return "ALIVE" if obj.last_seen_at >= timezone.now() - ALIVE_WINDOW else "DEAD"

    @admin.action(description="Delete workers not seen for 10 minutes", permissions=("delete",))
    def delete_stale_workers(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        count, _ = queryset.filter(last_seen_at__lt=timezone.now() - STALE_WORKER_AGE).delete()
        self.message_user(request, f"Deleted {count} stale worker(s).")


@admin.register(QueueControl)
class QueueControlAdmin(ReproqModelAdmin):
    list_display = ("queue_name", "paused", "paused_at", "reason", "updated_at")
    actions = ("pause_queues", "resume_queues")

    @admin.action(description="Pause selected queues", permissions=("change",))
    def pause_queues(self, request: HttpRequest, queryset: QuerySet[QueueControl]) -> None:
        now = timezone.now()
        count = queryset.update(paused=True, paused_at=now, updated_at=now)
        self.message_user(request, f"Paused {count} queue(s).")

    @admin.action(description="Resume selected queues", permissions=("change",))
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[QueueControl]) -> None:
        count = queryset.update(paused=False, paused_at=None, updated_at=timezone.now())
        self.message_user(request, f"Resumed {count} queue(s).")


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(ReproqModelAdmin):
    list_display = ("name", "cron_expr", "task_path", "queue_name", "enabled", "next_run_at")
    search_fields = ("name", "task_path")


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ReproqModelAdmin):
    list_display = (
        "workflow_id",
        "status",
        "expected_count",
        "success_count",
        "failure_count",
        "callback_result_id",
    )
    search_fields = ("=workflow_id",)


@admin.register(RateLimit)
class RateLimitAdmin(ReproqModelAdmin):
    list_display = ("key", "tokens_per_second", "burst_size", "current_tokens", "last_refilled_at")
    search_fields = ("key",)
