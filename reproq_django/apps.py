from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ReproqDjangoConfig(AppConfig):
    name = "reproq_django"
    verbose_name = "Reproq Django Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from reproq_django.memlog import start_memory_logger
        from reproq_django.recurring import maybe_sync_recurring_tasks

        start_memory_logger()
        post_migrate.connect(
            maybe_sync_recurring_tasks, sender=self, dispatch_uid="reproq_recurring_sync"
        )
