"""The README's demo: `python -m reproq_django.demo` end to end on the test server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def run_demo(cwd: Path, database_url: str, columns: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "COLUMNS": str(columns),
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "reproq_django.demo"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_runs_every_sample_to_its_end(pg_admin_dsn, tmp_path):
    result = run_demo(tmp_path, pg_admin_dsn, 200)
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows["add(2, 3)"][1:] == ["SUCCESSFUL", "1", "5"]
    assert rows["flaky_payment(42)"][1:3] == ["FAILED", "2"]
    assert "payment gateway unreachable" in rows["flaky_payment(42)"][3]
    assert rows["chord callback"][1:] == ["SUCCESSFUL", "1", "'report: all pages fetched'"]
    assert all(cells[1] in ("SUCCESSFUL", "FAILED") for cells in rows.values())
    assert len(rows) == 11
    assert "lock_key pair ran one after the other: True" in result.stdout


def test_demo_with_an_unreachable_database_url_says_so_in_two_lines(tmp_path):
    """The DSN is shown whole however narrow the terminal, without its password, and a
    database that cannot be reached is an error and a hint, not a traceback."""
    result = run_demo(tmp_path, "postgresql://demo:sekrit@127.0.0.1:1/nowhere", 30)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == ["PostgreSQL: postgresql://demo:****@127.0.0.1:1/nowhere"]
    error, hint = result.stderr.splitlines()
    assert error.startswith("error: cannot connect to postgresql://demo:****@127.0.0.1:1/nowhere: ")
    assert hint == (
        "hint: unset DATABASE_URL to run the demo on the embedded PostgreSQL, or correct it"
    )
    assert "sekrit" not in result.stdout + result.stderr
