"""The wheel carries everything a user needs (a source checkout hides missing files)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.conftest import REPO_ROOT


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("reproq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "reproq_cli/cli.py",
        "reproq_cli/sql/queries.sql",
        "reproq_cli/sql/migrations/0001_baseline.sql",
        "reproq_django/migrations/0001_initial.py",
        "reproq_django/management/commands/reproq.py",
        "reproq_django/demo/__main__.py",
        "reproq_django/executor.py",
    ):
        assert required in names, required
    assert not any(name.startswith("tests/") for name in names)
