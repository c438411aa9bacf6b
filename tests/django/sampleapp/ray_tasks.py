"""Tasks for the Ray executor tests (tests/django/test_ray.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.tasks import task

from reproq_django.distributed import is_ray_available, parallel_map
from reproq_django.models import TaskRun
from reproq_django.raytask import ray_options


@task()
def square(value: int) -> dict:
    """Where it ran: a Ray worker has Ray connected, and Django's ORM works there."""
    return {
        "value": value * value,
        "in_ray": is_ray_available(),
        "pid": os.getpid(),
        "rows": TaskRun.objects.count() > 0,
    }


@ray_options(num_gpus=8)
@task()
def needs_gpus() -> str:
    return "never runs on a cluster without GPUs"


@task(takes_context=True)
def flaky(context) -> int:
    """Fails on its first attempt, succeeds on the second."""
    if context.attempt == 1:
        raise RuntimeError("first attempt fails")
    return context.attempt


@task(takes_context=True)
def sleeper(context, folder: str, seconds: float, only_first_attempt: bool = False) -> int:
    """Writes ``<id>-<attempt>.started`` (its pid) and, however it ends, ``.ended``."""
    base = Path(folder) / f"{context.result_id}-{context.attempt}"
    base.with_suffix(".started").write_text(str(os.getpid()))
    try:
        if context.attempt == 1 or not only_first_attempt:
            # Short sleeps: a cooperative cancel (an exception raised between bytecodes)
            # lands within one of them.
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        base.with_suffix(".ended").write_text(str(time.time()))
    return context.attempt


@task()
def fan_out(count: int) -> dict:
    """parallel_map with a function nested in the task (std pickle cannot send it)."""
    offset = 7

    def shifted_square(item: int) -> int:
        return item * item + offset

    values = parallel_map(shifted_square, range(count))

    def timed(seconds: float) -> tuple[float, float]:
        started = time.time()
        time.sleep(seconds)
        return started, time.time()

    # A sliding window of two: the short calls start while the long first one still runs.
    spans = parallel_map(timed, [3.0, 0.05, 0.05, 0.05, 0.05], max_concurrency=2)
    return {"values": values, "spans": spans, "in_ray": is_ray_available()}
