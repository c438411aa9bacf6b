"""`python -m reproq_django.executor` usage errors (QA finding: no payload flag)."""

from __future__ import annotations

import subprocess
import sys

from tests.django.support import sqlite_env


def test_no_payload_flag_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "reproq_django.executor", "--result-id", "1"],
        env=sqlite_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""  # no envelope: nothing ran and nothing failed
    assert "usage: python -m reproq_django.executor" in result.stderr
    assert (
        "error: one of --payload-stdin, --payload-file or --payload-json is required"
        in result.stderr
    )
