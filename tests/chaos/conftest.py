"""Chaos runs: `reproq torture` (real workers, real executor processes) under one kind of
trouble each, then `reproq verify`. Counts are small enough for CI (docs/reliability.md has
the figures of a full-size run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Outcome:
    report: dict[str, Any]
    verify: dict[str, Any]
    verify_text: str

    def assert_verified(self) -> None:
        failed = [i for i in self.verify["invariants"] if i["status"] != "PASS"]
        assert self.verify["ok"] and not failed, json.dumps(failed, indent=1, default=str)
        assert self.report["complete"], self.report
        assert self.report["unexpected_exits"] == [], self.report

    def invariant(self, name: str) -> dict[str, Any]:
        return next(i for i in self.verify["invariants"] if i["name"] == name)


def env_for(cwd: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TMPDIR"] = str(cwd)  # torture's work directory (worker logs) goes with the test's
    return env


def start_torture(dsn: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reproq_cli", "torture", "--dsn", dsn, "--json", *args],
        cwd=cwd,
        env=env_for(cwd),
        stdout=subprocess.PIPE,
        stderr=(cwd / "torture.err").open("w"),
        text=True,
    )


def finish(proc: subprocess.Popen[str], dsn: str, cwd: Path, timeout: float = 240) -> Outcome:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(
            f"torture did not finish in {timeout}s:\n{(cwd / 'torture.err').read_text()[-3000:]}"
        ) from None
    assert out.strip(), (cwd / "torture.err").read_text()[-3000:]
    report = json.loads(out)
    verify = subprocess.run(
        [sys.executable, "-m", "reproq_cli", "verify", "--dsn", dsn, "--json"],
        cwd=cwd,
        env=env_for(cwd),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    outcome = Outcome(report, json.loads(verify.stdout), verify.stdout)
    assert (verify.returncode == 0) == outcome.verify["ok"], verify.stderr
    return outcome


def torture(dsn: str, cwd: Path, *args: str, timeout: float = 240) -> Outcome:
    return finish(start_torture(dsn, cwd, *args), dsn, cwd, timeout)


@pytest.fixture
def private_pg():
    from tests.support.private_pg import PrivateServer

    server = PrivateServer()
    try:
        yield server
    finally:
        server.cleanup()
