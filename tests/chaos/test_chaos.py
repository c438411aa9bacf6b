"""Each chaos scenario of docs/reliability.md: verify passes and every task reaches the final
state its plan expects (a planned failure FAILED, everything else SUCCESSFUL)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.chaos.conftest import env_for, finish, start_torture, torture
from tests.support.harness import wait_for

pytestmark = pytest.mark.slow


def test_sigkill_one_of_three_workers_every_two_seconds(db_dsn, tmp_path):
    outcome = torture(
        db_dsn, tmp_path, "--count", "800", "--workers", "3", "--executor", "pool",
        "--chaos", "kill-workers", "--chaos-interval", "2", "--lease-seconds", "3",
        "--retry-rate", "0", "--sleep", "50", "--seed", "1",
    )  # fmt: skip
    outcome.assert_verified()
    assert outcome.report["worker_kills"] >= 3
    # the kills really cut attempts short: some were reclaimed after their lease expired
    with psycopg.connect(db_dsn) as conn:
        expired = conn.execute(
            "SELECT count(*) FROM task_runs, jsonb_array_elements(errors_json) e"
            " WHERE e->>'kind' = 'lease_expiry'"
        ).fetchone()[0]
    assert expired >= 1


def test_postgres_restart_mid_run(private_pg, tmp_path):
    proc = start_torture(
        private_pg.dsn, tmp_path, "--count", "500", "--workers", "3", "--executor", "pool",
        "--retry-rate", "0", "--sleep", "30", "--lease-seconds", "10", "--seed", "2",
    )  # fmt: skip

    def finished() -> int:
        try:
            with psycopg.connect(private_pg.dsn) as conn:
                return conn.execute(
                    "SELECT count(*) FROM task_runs WHERE status IN ('SUCCESSFUL', 'FAILED')"
                ).fetchone()[0]
        except psycopg.OperationalError:
            return 0

    wait_for(lambda: finished() >= 100, timeout=120, interval=0.2, what="a fifth done")
    private_pg.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_pg.dsn, connect_timeout=2)
    # Idle slots poll (Polling error); busy ones heartbeat (Heartbeat failed) or listen.
    noticed = re.compile(r"Polling error|Heartbeat failed|LISTEN connection lost")
    wait_for(lambda: noticed.search(_worker_logs(tmp_path, proc)), timeout=30,
             what="workers notice the outage")  # fmt: skip
    private_pg.start()
    outcome = finish(proc, private_pg.dsn, tmp_path)
    outcome.assert_verified()  # includes: no worker exited on its own


def _worker_logs(tmp_path, proc) -> str:
    match = re.search(r"worker logs in (\S+)", (tmp_path / "torture.err").read_text())
    assert match, "torture announces its work directory"
    return "".join(p.read_text() for p in Path(match.group(1)).glob("*.log"))


def test_sigkill_executor_children(db_dsn, tmp_path):
    """Killed children fail their attempt (terminated by signal 9); the retry succeeds.
    Four kills early in the run, so no task is hit twice and waits out a second backoff."""
    outcome = torture(
        db_dsn, tmp_path, "--count", "60", "--workers", "3", "--executor", "spawn",
        "--chaos", "kill-children", "--chaos-interval", "1", "--chaos-limit", "4",
        "--retry-rate", "0", "--sleep", "1500", "--fail-rate", "0", "--seed", "3",
    )  # fmt: skip
    outcome.assert_verified()
    assert outcome.report["child_kills"] >= 3
    with psycopg.connect(db_dsn) as conn:
        killed = conn.execute(
            "SELECT count(*) FROM task_runs, jsonb_array_elements(errors_json) e"
            " WHERE e->>'message' LIKE 'terminated by signal 9%'"
        ).fetchone()[0]
    assert killed >= 1


def test_full_logs_filesystem(db_dsn, tmp_path):
    """A logs dir that fills up (a 64 KiB tmpfs; else a read-only directory) loses log files,
    never tasks."""
    logs = tmp_path / "logs"
    logs.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        logs.chmod(0o500)
        probe = logs / "probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("cannot make a full or read-only directory here (root without mount)")
    try:
        outcome = torture(
            db_dsn, tmp_path, "--count", "300", "--workers", "2", "--executor", "pool",
            "--retry-rate", "0", "--logs-dir", str(logs), "--seed", "4",
        )  # fmt: skip
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(logs)], check=False)
        else:
            logs.chmod(0o700)
    outcome.assert_verified()
    with psycopg.connect(db_dsn) as conn:
        kept, lost = conn.execute(
            "SELECT count(*) FILTER (WHERE logs_uri IS NOT NULL),"
            " count(*) FILTER (WHERE logs_uri IS NULL AND attempts > 0) FROM task_runs"
        ).fetchone()
    assert lost > 0  # the disk really was full (or read-only) ...
    if mounted:
        assert kept > 0  # ... after the first files fitted


def test_row_lock_held_longer_than_a_lease(db_dsn, tmp_path):
    outcome = torture(
        db_dsn, tmp_path, "--count", "300", "--workers", "3", "--executor", "pool",
        "--chaos", "lock-rows", "--chaos-interval", "1", "--lease-seconds", "3",
        "--retry-rate", "0", "--sleep", "250", "--seed", "5",
    )  # fmt: skip
    outcome.assert_verified()
    # One lock at a time, each held 6 s: the tasks' sleeps keep the run long enough for two.
    assert outcome.report["row_locks"] >= 2


def test_torture_restarts_the_embedded_server(tmp_path):
    """`--chaos restart-db` (what the documented 5,000-task run uses) on the embedded server."""
    env = {
        **env_for(tmp_path),
        "REPROQ_EMBEDDED": "1",
        "REPROQ_EMBEDDED_DIR": str(Path(tempfile.mkdtemp(prefix="rqemb-", dir="/tmp"))),
    }

    def reproq(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reproq_cli", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    try:
        assert reproq("migrate").returncode == 0
        run = reproq("torture", "--count", "200", "--workers", "2", "--executor", "pool",
                     "--chaos", "restart-db", "--retry-rate", "0", "--json")  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout)
        assert report["db_restarts"] == 2
        verify = reproq("verify", "--json")
        assert verify.returncode == 0, verify.stdout
    finally:
        reproq("embedded", "stop", timeout=60)
        shutil.rmtree(env["REPROQ_EMBEDDED_DIR"], ignore_errors=True)
