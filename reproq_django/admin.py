"""Django admin for reproq's tables, with the operator actions of reproq-django.md §2.3."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connections, transaction
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.tasks import task_backends
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from reproq_cli.db.queries import query
from reproq_django.backend import ReproqBackend
from reproq_django.db import resolve_queue_db
from reproq_django.models import (
    PeriodicTask,
    QueueControl,
    RateLimit,
    TaskRun,
    TaskRunStatus,
    UndecodableJSON,
    Worker,
    WorkflowRun,
)
from reproq_django.serialization import canonical_spec
from reproq_django.workflows import cancel_queued

ALIVE_WINDOW = dt.timedelta(minutes=2)
STALE_WORKER_AGE = dt.timedelta(minutes=10)
# How long ago the test row's lease ran out (reproq-django.md §2.3): expired for any reclaim.
EXPIRED_LEASE_AGE = dt.timedelta(minutes=10)
EXPIRED_LEASE_OWNER = "admin-expired-lease"
# Other rows with the same spec_hash shown on a task's page; a hot spec can have thousands.
DUPLICATE_SPECS_SHOWN = 50
UNDECODABLE_SHOWN = 200  # characters of a value too deeply nested to pretty-print
STATUS_COLOURS = {
    TaskRunStatus.READY: "#6c757d",
    TaskRunStatus.RUNNING: "#2271b1",
    TaskRunStatus.WAITING: "#8e6bbf",
    TaskRunStatus.SUCCESSFUL: "#2e7d32",
    TaskRunStatus.FAILED: "#d32f2f",
    TaskRunStatus.CANCELLED: "#ef6c00",
}
LEASE_COLOURS = {"STALE": "#d32f2f", "ACTIVE": "#2e7d32", "NONE": "#9e9e9e"}


def _waits_on_unfinished(alias: str, result_id: int) -> bool:
    """Whether a FAILED row waits on a task that has not succeeded (reproq triage retry's
    rule), asked for this row alone: the selection, not every FAILED row of the table."""
    if connections[alias].vendor != "postgresql":
        return False
    with connections[alias].cursor() as cursor:
        cursor.execute(query("triage_retry_blocked"), {"all": False, "result_id": result_id})
        return cursor.fetchone() is not None


def _debug_backend() -> ReproqBackend:
    """The backend that enqueues ``debug_noop_task``, or else the first reproq backend."""
    from reproq_django.tasks import debug_noop_task  # its @task() needs the TASKS setting

    backend = task_backends[debug_noop_task.backend]
    if isinstance(backend, ReproqBackend):
        return backend
    for candidate in task_backends.all():
        if isinstance(candidate, ReproqBackend):
            return candidate
    raise LookupError("no TASKS backend is reproq_django.backend.ReproqBackend")


def create_expired_lease_task() -> TaskRun:
    """Insert a RUNNING ``debug_noop_task`` row whose lease ran out 10 minutes ago, as a
    worker that died mid-task leaves it, so an operator can watch reclaim pick it up."""
    from reproq_django.tasks import debug_noop_task

    backend = _debug_backend()
    reclaim_test_id = uuid.uuid4().hex
    # The label keeps each test row's spec_hash apart: an identical spec may be active only
    # once (the unique index), and an earlier test row may still be RUNNING.
    spec, fields = backend.build_spec(
        debug_noop_task, (), {"label": f"reclaim-test-{reclaim_test_id}"}
    )
    spec["provenance"]["reclaim_test_id"] = reclaim_test_id
    normalized, digest, _text = canonical_spec(spec)
    now = timezone.now()
    run = TaskRun(
        **fields,
        spec_json=normalized,
        spec_hash=digest,
        status=TaskRunStatus.RUNNING,
        enqueued_at=now - EXPIRED_LEASE_AGE,
        started_at=now - EXPIRED_LEASE_AGE,
        last_attempted_at=now - EXPIRED_LEASE_AGE,
        attempts=1,
        worker_ids=[EXPIRED_LEASE_OWNER],
        metadata_json={"reclaim_test_id": reclaim_test_id},
        leased_until=now - EXPIRED_LEASE_AGE,
        leased_by=EXPIRED_LEASE_OWNER,
    )
    run.save(using=resolve_queue_db(fields["queue_name"]), force_insert=True)
    return run


def _pretty_json(value: Any) -> str:
    if isinstance(value, UndecodableJSON):
        return format_html(
            "<p>Nested too deeply for Python's JSON decoder to show ({} characters); "
            "it begins:</p><pre>{}</pre>",
            f"{len(value):,}",
            value[:UNDECODABLE_SHOWN] + "…",
        )
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html("<pre>{}</pre>", text)


class ReproqModelAdmin(admin.ModelAdmin):
    def get_changelist_instance(self, request: HttpRequest) -> Any:
        # PostgreSQL refuses NUL in a text parameter; from a filter or the search box it
        # became a 500 when the page rendered. The admin's answer to a bad filter is ?e=1.
        if any("\x00" in value for value in request.GET.values()):
            raise IncorrectLookupParameters("a filter or search value holds a NUL character")
        return super().get_changelist_instance(request)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        try:
            return super().get_search_results(request, queryset, search_term)
        except ValidationError:
            # Django 6.1 skips a term that is no UUID for workflow_id__exact; a release that
            # hands it to the lookup anyway raises here. Such a term names no workflow, and
            # the admin answers it with an empty list rather than a 500.
            return queryset.none(), False


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
    change_list_template = "admin/reproq_django/taskrun/change_list.html"
    list_display = (
        "result_id",
        "status_badge",
        "lease_state",
        "task_path",
        "lock_key",
        "concurrency_key",
        "queue_name",
        "priority",
        "enqueued_at",
        "duration",
        "attempts_display",
        "workflow_info",
    )
    list_filter = ("status", LeaseStatusFilter, "queue_name", "backend_alias")
    # workflow_id__exact rather than =workflow_id: an exact uuid match can use the column,
    # where =workflow_id compares its text case-insensitively (a scan, no dashless form).
    search_fields = (
        "=result_id",
        "spec_hash",
        "task_path",
        "leased_by",
        "lock_key",
        "workflow_id__exact",
    )
    defer_fields = ("spec_json", "return_json", "errors_json", "metadata_json")
    pretty_fields = ("pretty_spec", "pretty_errors", "pretty_return", "duplicate_specs")
    ordering = ("-result_id",)
    actions = (
        "replay_tasks",
        "retry_failed_tasks",
        "discard_failed_tasks",
        "cancel_tasks",
        "delete_successful_tasks",
        "create_expired_lease_test_task",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRun]:
        return super().get_queryset(request).defer(*self.defer_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in TaskRun._meta.fields] + list(self.pretty_fields)

    def get_urls(self) -> list[URLPattern]:
        # Before the defaults: their "<path:object_id>/" would swallow this path.
        return [
            path(
                "create-expired-lease/",
                self.admin_site.admin_view(self.create_expired_lease_view),
                name="reproq_django_taskrun_create_expired_lease",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The whole table, not the filtered page: the counts are the queue's state at a glance.
        # One count per status, each answered from that status's partial index: a single
        # aggregate with FILTER reads every row, finished ones included, at every reload.
        rows = super().get_queryset(request)
        counts = {
            name: rows.filter(status=status).count()
            for name, status in (
                ("ready", TaskRunStatus.READY),
                ("running", TaskRunStatus.RUNNING),
                ("failed", TaskRunStatus.FAILED),
            )
        }
        context = {
            "reproq_counts": counts,
            "reproq_can_create_expired_lease": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # The replay action's permissions=("replay",) (Django calls has_<name>_permission):
        # a replay runs a task again, so it takes more than a view of the change list.
        return request.user.has_perm(f"{self.opts.app_label}.can_replay_taskrun")

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: TaskRun) -> str:
        return format_html(
            '<span style="background:{};color:#fff;padding:2px 8px;border-radius:10px;'
            'font-size:11px;font-weight:bold">{}</span>',
            STATUS_COLOURS.get(obj.status, "#000"),
            obj.status,
        )

    @admin.display(description="lease")
    def lease_state(self, obj: TaskRun) -> str:
        if obj.status != TaskRunStatus.RUNNING:
            return ""
        if obj.leased_until is None:
            state = "NONE"
        else:
            state = "STALE" if obj.leased_until < timezone.now() else "ACTIVE"
        return format_html('<b style="color:{}">{}</b>', LEASE_COLOURS[state], state)

    @admin.display(description="duration")
    def duration(self, obj: TaskRun) -> str:
        if obj.started_at is None:
            return "-"
        if obj.finished_at is not None:
            return f"{(obj.finished_at - obj.started_at).total_seconds():.2f}s"
        # Still running (or left RUNNING by a dead worker): the time so far.
        return f"{(timezone.now() - obj.started_at).total_seconds():.1f}s…"

    @admin.display(description="attempts")
    def attempts_display(self, obj: TaskRun) -> str:
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description="workflow")
    def workflow_info(self, obj: TaskRun) -> str:
        if obj.workflow_id is None and obj.parent_id is None:
            return "-"
        return format_html(
            '<small title="{}">{}</small><br><small>wait {} | parent {}</small>',
            obj.workflow_id or "",
            str(obj.workflow_id)[:8] if obj.workflow_id else "chain",
            obj.wait_count,
            obj.parent_id or "-",
        )

    @admin.display(description="spec")
    def pretty_spec(self, obj: TaskRun) -> str:
        return _pretty_json(obj.spec_json)

    @admin.display(description="errors")
    def pretty_errors(self, obj: TaskRun) -> str:
        return _pretty_json(obj.errors_json)

    @admin.display(description="return value")
    def pretty_return(self, obj: TaskRun) -> str:
        return _pretty_json(obj.return_json)

    @admin.display(description="other runs with this spec_hash")
    def duplicate_specs(self, obj: TaskRun) -> str:
        others = list(
            TaskRun.objects.using(obj._state.db)
            .filter(spec_hash=obj.spec_hash)
            .exclude(result_id=obj.result_id)
            .order_by("-result_id")
            .values_list("result_id", "status")[: DUPLICATE_SPECS_SHOWN + 1]
        )
        if not others:
            return "None"
        links = format_html_join(
            ", ",
            '<a href="{}">{}</a> ({})',
            (
                (
                    reverse(
                        "admin:reproq_django_taskrun_change",
                        args=[result_id],
                        current_app=self.admin_site.name,
                    ),
                    result_id,
                    status,
                )
                for result_id, status in others[:DUPLICATE_SPECS_SHOWN]
            ),
        )
        if len(others) > DUPLICATE_SPECS_SHOWN:
            return format_html("{}, … (the {} newest shown)", links, DUPLICATE_SPECS_SHOWN)
        return links

    def create_expired_lease_view(self, request: HttpRequest) -> HttpResponse:
        # A GET must not insert rows (a prefetch or a crawler would); admin_view gives CSRF.
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        self._create_expired_lease(request)
        return HttpResponseRedirect(
            reverse("admin:reproq_django_taskrun_changelist", current_app=self.admin_site.name)
        )

    def _create_expired_lease(self, request: HttpRequest) -> None:
        try:
            run = create_expired_lease_task()
        except LookupError as exc:
            self.message_user(request, f"No test task created: {exc}.", messages.ERROR)
            return
        self.message_user(
            request,
            f"Created expired-lease test task {run.result_id} "
            f"(reclaim_test_id {run.metadata_json['reclaim_test_id']}); "
            "a worker's reclaim will pick it up.",
        )

    @admin.action(description="Create an expired-lease test task", permissions=("change",))
    def create_expired_lease_test_task(
        self, request: HttpRequest, queryset: QuerySet[TaskRun]
    ) -> None:
        # The selection does not matter: the admin only runs an action on some selection.
        self._create_expired_lease(request)

    @admin.action(description="Replay selected tasks (new rows)", permissions=("replay",))
    def replay_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRun]) -> None:
        created, skipped = 0, 0
        for run in queryset.defer(None):
            # A spec nested too deeply for Python reads as its text, and is copied as it is.
            spec = run.spec_json if isinstance(run.spec_json, dict) else {}
            copy = TaskRun(
                backend_alias=run.backend_alias,
                queue_name=run.queue_name,
                priority=run.priority,
                spec_json=run.spec_json,
                spec_hash=run.spec_hash,
                task_path=run.task_path or spec.get("task_path"),
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
    # An exact UUID, as on the task runs: `=workflow_id` compared the text, missing the
    # dashless form and the column's index.
    search_fields = ("workflow_id__exact",)


@admin.register(RateLimit)
class RateLimitAdmin(ReproqModelAdmin):
    list_display = ("key", "tokens_per_second", "burst_size", "current_tokens", "last_refilled_at")
    search_fields = ("key",)
