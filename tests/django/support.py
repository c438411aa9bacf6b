"""Helpers for Django tests that need a separate process on SQLite settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


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
