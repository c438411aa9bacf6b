"""The six reproq tables as Django models (reproq-django.md §2.1).

On PostgreSQL the tables are created by the SQL in sql/migrations (the same files `reproq
migrate` runs), so both tools give one schema; elsewhere (SQLite in a project's tests) Django
creates them from these models.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from reproq_cli.gojson import syntax_error


class UndecodableJSON(str):
    """The text of a jsonb value nested deeper than Python's JSON decoder goes (jsonb takes
    10,000 levels, the decoder ~1,500). Other tools write such values (an executor's
    return value, a row written by hand); read as this text, the row still loads."""


class _Verbatim(json.JSONEncoder):
    def encode(self, o: Any) -> str:
        return str(o) if isinstance(o, UndecodableJSON) else super().encode(o)


class JSONFormField(forms.JSONField):
    """Django's form field for JSON, with a value too deeply nested for Python shown and
    taken back as its text (Django's showed it as a JSON string, which a save then stored)."""

    def to_python(self, value: Any) -> Any:
        if isinstance(value, UndecodableJSON):
            return value
        try:
            return super().to_python(value)
        except RecursionError:
            if syntax_error(value) is not None:
                raise ValidationError(self.error_messages["invalid"], code="invalid") from None
            return UndecodableJSON(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return UndecodableJSON(data)  # shown again as typed; to_python checks it

    def prepare_value(self, value: Any) -> Any:
        return str(value) if isinstance(value, UndecodableJSON) else super().prepare_value(value)


class JSONField(models.JSONField):
    """Django's JSONField, but a value too deeply nested for Python reads as its text
    (UndecodableJSON) instead of raising RecursionError from every query that loads the
    row, and is written back unchanged when the row is saved."""

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        try:
            return super().from_db_value(value, expression, connection)
        except RecursionError:
            return UndecodableJSON(value)

    def get_db_prep_value(
        self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False
    ) -> Any:
        if isinstance(value, UndecodableJSON):
            # Encoded as a value it would be stored as a JSON string of its own text.
            return connection.ops.adapt_json_value(value, _Verbatim)
        return super().get_db_prep_value(value, connection, prepared)

    def formfield(self, **kwargs: Any) -> Any:
        return super().formfield(**{"form_class": JSONFormField, **kwargs})

    def deconstruct(self) -> Any:
        # Migrations see Django's field: the column and its type are the same.
        name, _, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


def appended(history: Any, entry: dict[str, Any]) -> Any:
    """An errors_json value with ``entry`` added last, as the worker's SQL adds one
    (``COALESCE(errors_json, '[]') || jsonb_build_array(entry)``): a value that is not an
    array becomes the first element, and the text of one too deep for Python gets the entry
    written into it."""
    if isinstance(history, UndecodableJSON):
        text = history.strip()
        if text.startswith("["):  # an array: the entry goes before its closing bracket
            body = text[:-1].rstrip()
            return UndecodableJSON(f"{body}{'' if body == '[' else ', '}{json.dumps(entry)}]")
        return UndecodableJSON(f"[{text}, {json.dumps(entry)}]")
    if history is None:
        return [entry]
    return [*history, entry] if isinstance(history, list) else [history, entry]


class TaskRunStatus:
    READY = "READY"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    ACTIVE = (READY, RUNNING)
    TERMINAL = (SUCCESSFUL, FAILED, CANCELLED)


class TaskRun(models.Model):
    result_id = models.BigAutoField(primary_key=True)
    backend_alias = models.TextField(default="default")
    queue_name = models.TextField(default="default")
    priority = models.IntegerField(default=0)
    run_after = models.DateTimeField(null=True, blank=True)
    spec_json = JSONField()
    spec_hash = models.CharField(max_length=64)
    task_path = models.TextField(null=True, blank=True)
    status = models.TextField(default=TaskRunStatus.READY)
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=3)
    timeout_seconds = models.IntegerField(default=900)
    lock_key = models.TextField(null=True, blank=True)
    concurrency_key = models.TextField(null=True, blank=True)
    concurrency_limit = models.IntegerField(default=0)
    worker_ids = JSONField(default=list)
    return_json = JSONField(null=True, blank=True)
    errors_json = JSONField(default=list)
    metadata_json = JSONField(default=dict)
    last_error = models.TextField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    leased_by = models.TextField(null=True, blank=True)
    logs_uri = models.TextField(null=True, blank=True)
    artifacts_uri = models.TextField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        db_column="parent_id",
        db_constraint=True,
    )
    workflow_id = models.UUIDField(null=True, blank=True)
    wait_count = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        db_table = "task_runs"
        verbose_name = "Task Run"
        verbose_name_plural = "Task Runs"
        permissions = [("can_replay_taskrun", "Can replay task runs")]

    def __str__(self) -> str:
        return f"{self.result_id} ({self.status})"

    def save(self, *args: object, **kwargs: object) -> None:
        self.updated_at = timezone.now()
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Worker(models.Model):
    worker_id = models.TextField(primary_key=True)
    hostname = models.TextField(null=True, blank=True)
    concurrency = models.IntegerField(null=True, blank=True)
    queues = JSONField(default=list)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    version = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "reproq_workers"

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.hostname})"


class PeriodicTask(models.Model):
    name = models.TextField(primary_key=True)
    cron_expr = models.TextField()
    task_path = models.TextField()
    payload_json = JSONField(default=dict)
    queue_name = models.TextField(default="default")
    priority = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=3)
    concurrency_key = models.TextField(null=True, blank=True)
    concurrency_limit = models.IntegerField(default=0)
    last_run_at = models.DateTimeField(null=True, blank=True)
    next_run_at = models.DateTimeField()
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "periodic_tasks"

    def __str__(self) -> str:
        return f"{self.name} ({self.cron_expr})"


class QueueControl(models.Model):
    queue_name = models.TextField(primary_key=True)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "reproq_queue_controls"

    def __str__(self) -> str:
        return self.queue_name


class WorkflowRun(models.Model):
    workflow_id = models.UUIDField(primary_key=True)
    expected_count = models.IntegerField()
    success_count = models.IntegerField(default=0)
    failure_count = models.IntegerField(default=0)
    callback_result_id = models.BigIntegerField(null=True, blank=True)
    status = models.TextField(default="RUNNING")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "workflow_runs"

    def __str__(self) -> str:
        return f"{self.workflow_id} ({self.status})"


class RateLimit(models.Model):
    key = models.TextField(primary_key=True)
    tokens_per_second = models.FloatField()
    burst_size = models.IntegerField()
    current_tokens = models.FloatField()
    last_refilled_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "rate_limits"

    def __str__(self) -> str:
        return self.key
