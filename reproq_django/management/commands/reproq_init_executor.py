"""``manage.py reproq_init_executor``: write a tiny script that runs the executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reproq_django.management.commands.reproq import write_file

STUB = '''#!/usr/bin/env python
"""Runs one reproq task: point worker.executor_module or python_bin at this project."""
import sys

from reproq_django.executor import execute

sys.exit(execute())
'''


class Command(BaseCommand):
    help = "Write an executor stub script (executor_stub.py)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--path", default="executor_stub.py")
        parser.add_argument("--force", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if path.exists() and not options["force"]:
            raise CommandError(f"{path} exists; use --force to overwrite it")
        write_file(path, STUB)
        path.chmod(0o755)
        self.stdout.write(f"Wrote {path}")
