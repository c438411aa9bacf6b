"""``manage.py reproq_check``: the same checks as ``manage.py reproq check``."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Check the reproq CLI, the database and the tables."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("reproq", "check", stdout=self.stdout, stderr=self.stderr)
