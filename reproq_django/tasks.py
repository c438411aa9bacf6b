"""Bundled tasks for checking a deployment (reproq-django.md §1.12)."""

from __future__ import annotations

import time

from django.tasks import task


@task()
def debug_noop_task(sleep_seconds: float = 0, label: str = "") -> str:
    """Returns "ok"; ``label`` only makes otherwise identical calls distinct tasks."""
    if sleep_seconds:
        time.sleep(sleep_seconds)
    return "ok"


@task()
def debug_error_task(message: str = "debug_error_task failed on purpose") -> None:
    raise RuntimeError(message)
