from __future__ import annotations

from django.apps import AppConfig


class ReproqDjangoConfig(AppConfig):
    name = "reproq_django"
    verbose_name = "Reproq Django Tasks"
    default_auto_field = "django.db.models.BigAutoField"
