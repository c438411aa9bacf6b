"""The no-op task every reproq benchmark runs (``benchmarks.noop_tasks.noop``)."""

from __future__ import annotations

from django.tasks import task


@task()
def noop(n: int = 0) -> None:
    """Does nothing; ``n`` only keeps specs apart so duplicate detection does not merge them."""
