"""What a task that takes context receives (reproq-django.md §1.10)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.utils import timezone

if TYPE_CHECKING:
    from reproq_django.proxy import TaskResultProxy


class TaskContext:
    """The running attempt's identity and its row's ``metadata_json``.

    ``metadata`` is read from the row on first access, not up front: most tasks never touch
    it, and skipping the read (and the connection it would open) is most of a no-op task's
    cost in a pool process. The executor writes it back only when it changed, so a task that
    did not touch it cannot overwrite what an operator or another process stored meanwhile.
    """

    def __init__(
        self,
        result_id: str,
        attempt: int,
        task_path: str,
        queue_name: str,
        priority: int,
        db_alias: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.result_id = result_id
        self.attempt = attempt
        self.task_path = task_path
        self.queue_name = queue_name
        self.priority = priority
        self.db_alias = db_alias
        self._metadata = metadata
        self._task_result: TaskResultProxy | None = None
        # The stored form of what the row held (or was last saved), to tell whether it changed.
        self._stored: str | None = _stored_form(metadata) if metadata is not None else None

    def __repr__(self) -> str:
        return (
            f"TaskContext(result_id={self.result_id!r}, attempt={self.attempt}, "
            f"task_path={self.task_path!r}, queue_name={self.queue_name!r}, "
            f"priority={self.priority}, db_alias={self.db_alias!r})"
        )

    @property
    def task_result(self) -> TaskResultProxy:
        """This run's ``TaskResultProxy``, as Django's ``TaskContext.task_result`` gives a task
        its result; read from the row when first asked (``TaskResultDoesNotExist`` without
        one)."""
        if self._task_result is None:
            from reproq_django.db import format_result_id
            from reproq_django.proxy import TaskResultProxy

            self._task_result = TaskResultProxy.read(
                self.db_alias,
                self.result_id,
                format_result_id(self.result_id, self.db_alias),
            )
        return self._task_result

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = self._load_metadata()
            self._stored = _stored_form(self._metadata)
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata = value

    @property
    def metadata_changed(self) -> bool:
        """The task read or replaced ``metadata`` and it now differs from the stored value."""
        return self._metadata is not None and _stored_form(self._metadata) != self._stored

    def _load_metadata(self) -> dict[str, Any]:
        from reproq_django.models import TaskRun

        if not self.result_id:
            return {}
        value = (
            TaskRun.objects.using(self.db_alias)
            .filter(result_id=int(self.result_id))
            .values_list("metadata_json", flat=True)
            .first()
        )
        return dict(value) if isinstance(value, dict) else {}

    def save_metadata(self) -> None:
        from reproq_django.models import TaskRun
        from reproq_django.serialization import normalize_json

        stored = normalize_json(self.metadata)
        TaskRun.objects.using(self.db_alias).filter(result_id=int(self.result_id)).update(
            metadata_json=stored, updated_at=timezone.now()
        )
        self._stored = _stored_form(stored)

    async def asave_metadata(self) -> None:
        await sync_to_async(self.save_metadata, thread_sensitive=True)()


def _stored_form(value: dict[str, Any]) -> str:
    from reproq_django.serialization import canonical_json

    return canonical_json(value)
