"""What a task that takes context receives (reproq-django.md §1.10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone


@dataclass
class TaskContext:
    result_id: str
    attempt: int
    task_path: str
    queue_name: str
    priority: int
    db_alias: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def save_metadata(self) -> None:
        from reproq_django.models import TaskRun
        from reproq_django.serialization import normalize_json

        TaskRun.objects.using(self.db_alias).filter(result_id=int(self.result_id)).update(
            metadata_json=normalize_json(self.metadata), updated_at=timezone.now()
        )

    async def asave_metadata(self) -> None:
        await sync_to_async(self.save_metadata, thread_sensitive=True)()
