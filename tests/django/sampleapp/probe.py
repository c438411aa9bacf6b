"""A task module that imports nothing of reproq's, for checking what an executor loaded."""

from __future__ import annotations

import sys

from django.tasks import task, task_backends

# Before this module's first @task, which builds the default backend if nothing has yet.
_BUILT_AT_IMPORT = sorted(backend.alias for backend in task_backends.all(initialized_only=True))


@task()
def loaded(names: list[str]) -> list[str]:
    return sorted(name for name in names if name in sys.modules)


@task()
def built_at_import() -> list[str]:
    """The task backends this process had built before it imported this module."""
    return _BUILT_AT_IMPORT


@task()
def parent() -> list[int]:
    import os

    return [os.getpid(), os.getppid()]


@task()
def threads() -> dict[str, object]:
    """This process's thread names, and how many threads its parent has."""
    import os
    import threading

    return {
        "names": sorted(thread.name for thread in threading.enumerate()),
        "parent": len(os.listdir(f"/proc/{os.getppid()}/task")),
    }
