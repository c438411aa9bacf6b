"""Tasks for tests/django/test_backend_audit.py, outside ``tasks`` so the allow-list
discovery tests see the same task list as before."""

from __future__ import annotations

from typing import Any

from django.tasks import task


@task(takes_context=True)
def own_result(context: Any, label: str) -> dict[str, Any]:
    """What Django's ``context.task_result`` tells a running task about itself."""
    result = context.task_result
    return {
        "id": result.id,
        "task_path": result.task.module_path,
        "kwargs": result.kwargs,
        "same_object": context.task_result is result,
    }
