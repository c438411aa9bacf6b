"""Helpers for Django tests that run a separate process: on SQLite settings, or a worker
on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.support.harness import WorkerFactory


def sqlite_env(**extra: str) -> dict[str, str]:
    """The environment of a child using tests.django.settings on SQLite in memory."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django.settings",
        "PYTHONPATH": str(REPO_ROOT),
        **extra,
    }
    env.pop("REPROQ_TEST_DJANGO_DSN", None)
    return env


def run_sqlite_script(script: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        env=sqlite_env(**extra_env),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def run_worker(
    factory: WorkerFactory,
    *flags: str,
    modules: tuple[str, ...] = ("tests.django.sampleapp.tasks.",),
) -> subprocess.CompletedProcess[str]:
    """A `reproq worker --burst` on tests.django.settings, run to its end; it must exit 0."""
    run = factory.run(
        "--queues",
        "default,high",
        *flags,
        env={"DJANGO_SETTINGS_MODULE": "tests.django.settings"},
        executor_module="reproq_django.executor",
        allowed_task_modules=list(modules),
        python_bin=sys.executable,
    )
    assert run.returncode == 0, run.stderr
    return run
