"""Plain values shared across layers: statuses and the records the worker passes around."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class TaskStatus(StrEnum):
    READY = "READY"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"


# Active rows are the ones the partial unique index on spec_hash covers.
ACTIVE_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.READY, TaskStatus.RUNNING)


class WorkflowStatus(StrEnum):
    RUNNING = "RUNNING"
    WAITING_CALLBACK = "WAITING_CALLBACK"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ClaimedTask:
    """A task this worker holds the lease on (the claim statement's RETURNING row)."""

    result_id: int
    queue_name: str
    priority: int
    spec_text: str  # spec_json as PostgreSQL renders jsonb: the exact bytes sent to the executor
    spec_hash: str
    enqueued_at: datetime
    attempts: int
    max_attempts: int
    timeout_seconds: int
    lock_key: str | None
    concurrency_key: str | None
    concurrency_limit: int
    leased_until: datetime
    task_path: str | None
    workflow_id: UUID | None


@dataclass(frozen=True)
class Failure:
    """How an attempt failed and what happens next, as written by complete_failure."""

    error: dict[str, Any]  # the errors_json entry
    retry: bool
    delay_seconds: float = 0.0
    refund_attempt: bool = False

    @property
    def summary(self) -> str:
        """last_error: the message, else the kind, else the raw JSON; at most 1024 bytes."""
        if "message" in self.error:
            value = self.error["message"]
            text = value if isinstance(value, str) else json.dumps(value)
        elif "kind" in self.error:
            text = str(self.error["kind"])
        else:
            text = json.dumps(self.error, separators=(",", ":"))
        return text.encode("utf-8")[:1024].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class ReclaimedTask:
    result_id: int
    failed: bool
    workflow_id: UUID | None
