"""Helpers for worker tests: enqueue rows like reproq-django does, run real workers, wait."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from reproq_cli.spec import canonical_json, spec_hash

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
TASKS = "tests.support.tasks"


def make_spec(
    task_path: str, args: list | None = None, kwargs: dict | None = None, **extra
) -> dict:
    spec = {
        "v": 1,
        "task_path": task_path,
        "args": args or [],
        "kwargs": kwargs or {},
        "takes_context": False,
        "queue_name": extra.pop("queue_name", "default"),
        "priority": extra.pop("priority", 0),
        "lock_key": extra.pop("lock_key", None),
        "concurrency_key": extra.pop("concurrency_key", None),
        "concurrency_limit": extra.pop("concurrency_limit", 0),
        "run_after": None,
        "exec": {
            "timeout_seconds": extra.pop("timeout_seconds", 900),
            "max_attempts": extra.pop("max_attempts", 3),
        },
        "provenance": {"code_ref": None, "pip_lock_hash": None},
    }
    spec.update(extra)
    return spec


def enqueue(
    conn: psycopg.Connection,
    task: str,
    *args: Any,
    kwargs: dict | None = None,
    columns: dict | None = None,
    unique: str | None = None,
    **spec_extra: Any,
) -> int:
    """Insert a READY row the way ReproqBackend.enqueue does; returns result_id.

    ``task`` is a function name in tests.support.tasks or a full dotted path. ``unique``
    goes into the spec so otherwise identical tasks get distinct hashes.
    """
    path = task if "." in task else f"{TASKS}.{task}"
    columns = dict(columns or {})
    spec = make_spec(
        path,
        list(args),
        kwargs,
        queue_name=columns.get("queue_name", "default"),
        priority=columns.get("priority", 0),
        lock_key=columns.get("lock_key"),
        concurrency_key=columns.get("concurrency_key"),
        concurrency_limit=columns.get("concurrency_limit", 0),
        timeout_seconds=columns.get("timeout_seconds", 900),
        max_attempts=columns.get("max_attempts", 3),
        **({"unique": unique} if unique is not None else {}),
        **spec_extra,
    )
    text = canonical_json(spec)
    values = {
        "spec_json": text,
        "spec_hash": spec_hash(spec),
        "task_path": path,
        "status": "READY",
        **columns,
    }
    names = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    row = conn.execute(
        f"INSERT INTO task_runs ({names}) VALUES ({placeholders}) RETURNING result_id", values
    ).fetchone()
    return int(row[0])


def row(conn: psycopg.Connection, result_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM task_runs WHERE result_id = %s", (result_id,))
    names = [d.name for d in cur.description]
    values = cur.fetchone()
    assert values is not None, f"no task_runs row {result_id}"
    return dict(zip(names, values, strict=True))


def waiting_on_task_runs(conn: psycopg.Connection) -> list[int]:
    """The backends waiting for a lock on task_runs (a test holds one to stop a claim, a
    pass or a write at a known point)."""
    return [
        pid
        for (pid,) in conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'task_runs' AND NOT l.granted"
        )
    ]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not stopped. A zombie counts as gone: it has
    stopped, and only its parent's reaping is missing (kill(pid, 0) would still succeed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def holds_for(
    condition: Callable[[], Any], seconds: float, *, interval: float = 0.05, what: str = ""
) -> None:
    """Check ``condition`` every ``interval`` for ``seconds``; fail the first time it is false
    (for what must not happen within a window where the code under test would do it)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if not condition():
            raise AssertionError(f"stopped holding: {what or condition}")
        time.sleep(interval)


@dataclass
class WorkerRun:
    returncode: int
    stdout: str
    stderr: str
    logs: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[str]:
        return [entry.get("msg", "") for entry in self.logs]


def parse_logs(stdout: str) -> list[dict[str, Any]]:
    logs = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            logs.append(json.loads(line))
    return logs


class WorkerFactory:
    """Runs `reproq worker` processes against one test database."""

    def __init__(self, dsn: str, workdir: Path, *, executor: str = "spawn") -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.executor = executor
        self.processes: list[subprocess.Popen[str]] = []
        # Output goes to files, never to pipes nobody reads: a full pipe would block the
        # worker's logging and stall it.
        self.outputs: dict[int, tuple[Path, Path]] = {}

    def config(self, **worker: Any) -> Path:
        settings = {
            "python_bin": sys.executable,
            "executor_module": "tests.support.executor",
            "allowed_task_modules": ["tests.support."],
            "poll_min_backoff": "10ms",
            "poll_max_backoff": "50ms",
            "executor": self.executor,
            **worker,
        }
        path = self.workdir / "reproq.yaml"
        path.write_text(yaml.safe_dump({"dsn": self.dsn, "worker": settings}))
        return path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["REPROQ_TEST_RECORD_DSN"] = self.dsn
        env.update(extra or {})
        return env

    def start(
        self, *flags: str, env: dict[str, str] | None = None, **worker: Any
    ) -> subprocess.Popen[str]:
        self.config(**worker)
        number = len(self.processes)
        out_path = self.workdir / f"worker-{number}.out"
        err_path = self.workdir / f"worker-{number}.err"
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reproq_cli", "worker", *flags],
                cwd=self.workdir,
                env=self.env(env),
                stdout=out,
                stderr=err,
                text=True,
            )
        self.processes.append(proc)
        self.outputs[proc.pid] = (out_path, err_path)
        return proc

    def output(self, proc: subprocess.Popen[str]) -> str:
        """What the worker has logged on stdout so far."""
        return self.outputs[proc.pid][0].read_text()

    def wait_executing(self, proc: subprocess.Popen[str], count: int = 1) -> None:
        """Wait until the worker has handed ``count`` tasks to their executors.

        A row turns RUNNING when it is claimed, before a runner takes the task: a stop signal
        in between gives it back unstarted. "Executing task" is logged past that point."""
        wait_for(
            lambda: self.output(proc).count('"msg":"Executing task"') >= count,
            what=f"{count} task(s) executing",
        )

    def run(
        self, *flags: str, timeout: float = 60.0, env: dict[str, str] | None = None, **worker: Any
    ) -> WorkerRun:
        """Run a worker with --burst until it exits."""
        proc = self.start("--burst", *flags, env=env, **worker)
        return self.finish(proc, timeout=timeout)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60.0) -> WorkerRun:
        """Wait for the worker to exit and collect its output."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Every thread's stack first (the worker's faulthandler, to its stderr): where
            # it is stuck is what the failure needs to say.
            out_path, err_path = self.outputs[proc.pid]
            proc.send_signal(signal.SIGUSR1)
            with contextlib.suppress(AssertionError):  # the failure below says the rest
                wait_for(lambda: "most recent call first" in err_path.read_text(), timeout=5)
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"worker did not exit within {timeout}s:\n{out_path.read_text()[-5000:]}\n"
                f"{err_path.read_text()[-20000:]}"
            ) from None
        out_path, err_path = self.outputs[proc.pid]
        stdout, stderr = out_path.read_text(), err_path.read_text()
        return WorkerRun(proc.returncode, stdout, stderr, parse_logs(stdout))

    def cleanup(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
