"""Tasks used by the Django tests; run by reproq_django.executor in worker children."""

from __future__ import annotations

import asyncio
import os
import time

from django.tasks import task

from reproq_django.concurrency import limits_concurrency
from reproq_django.recurring import recurring


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="high", priority=5)
def shout(text: str) -> str:
    print("this print must not reach the envelope")
    return text.upper()


@task()
def explode(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def with_context(context, note: str) -> dict:
    context.metadata["note"] = note
    return {"attempt": context.attempt, "result_id": context.result_id}


@task(takes_context=True)
def note_from_outside(context) -> str:
    """Writes its own row's metadata the way another process would, without touching
    ``context.metadata``: the executor must not write its own (stale) copy over it."""
    from reproq_django.models import TaskRun

    TaskRun.objects.filter(result_id=int(context.result_id)).update(
        metadata_json={"written_by": "another process"}
    )
    return "noted"


@task()
async def async_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@limits_concurrency(key=lambda account: f"account:{account}", to=2)
@task()
def per_account(account: int) -> int:
    return account


@task()
def stamp(label: str) -> dict:
    """When the task body ran, by this machine's clock: ordering checks that do not depend
    on the rows' now() timestamps."""
    started = time.time()
    time.sleep(0.02)
    return {"label": label, "start": started, "end": time.time()}


@task()
def linger(directory: str) -> None:
    """Start a grandchild, say its pid, this process's and its parent's (the worker, or the
    pool's fork server), then outlast any test: only a kill ends it."""
    import subprocess

    grandchild = subprocess.Popen(["sleep", "300"])
    marker = os.path.join(directory, "linger.pids")
    with open(marker + ".tmp", "w") as handle:
        handle.write(f"{os.getpid()} {grandchild.pid} {os.getppid()}")
    os.replace(marker + ".tmp", marker)
    time.sleep(300)


@task()
def settings_module() -> str:
    return os.environ.get("DJANGO_SETTINGS_MODULE", "")


@recurring(schedule="*/5 * * * *", key="sample-add-every-5", args=[1, 2])
@task()
def periodic_add(a: int, b: int) -> int:
    return a + b
