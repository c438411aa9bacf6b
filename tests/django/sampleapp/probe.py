"""A task module that imports nothing of reproq's, for checking what an executor loaded."""

from __future__ import annotations

import sys

from django.tasks import task


@task()
def loaded(names: list[str]) -> list[str]:
    return sorted(name for name in names if name in sys.modules)
