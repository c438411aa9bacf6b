"""Plain values shared across layers: task and workflow statuses."""

from __future__ import annotations

from enum import StrEnum


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
