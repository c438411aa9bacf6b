from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_recurring_tasks(**kwargs: Any) -> None:
    # Imported when migrate runs, not at every django.setup(): the scheduler's cron parser
    # is start-up time that executor processes pay for nothing.
    from reproq_django.recurring import maybe_sync_recurring_tasks

    maybe_sync_recurring_tasks(**kwargs)


class ReproqDjangoConfig(AppConfig):
    name = "reproq_django"
    verbose_name = "Reproq Django Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django registers its task backends' system checks when django.tasks is imported,
        # which `manage.py check` alone never does: the backend's checks would not run.
        import django.tasks  # noqa: F401

        from reproq_django.memlog import start_memory_logger

        start_memory_logger()
        post_migrate.connect(
            _sync_recurring_tasks, sender=self, dispatch_uid="reproq_recurring_sync"
        )
