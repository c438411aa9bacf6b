"""``reproq torture``: a mixed workload, W real workers, optional chaos, and the figures.

The workload (``plan``) is seeded and mixes plain successes and failures, retries, lock_key
groups, concurrency-limited keys, priorities, two queues, delayed tasks, chains and chords;
every row records in metadata_json.torture the final status it must reach, so ``reproq
verify`` can judge it. Tasks run under ``reproq_cli.db.torture_executor``, which logs each
execution in ``reproq_torture_executions``.

Chaos, each optional: SIGKILL a random worker every interval (a replacement starts at once);
SIGKILL a random executor child; restart PostgreSQL at 30% and 70% of the run (when the
caller can: the embedded server); hold a row lock from another session for twice the lease.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import reproq_cli
from reproq_cli.db.connect import connection
from reproq_cli.db.torture import (
    create_executions_table,
    execution_counts,
    hold_row_lock,
    insert_plan,
    progress,
)
from reproq_cli.db.torture_executor import DSN_ENV, TASK_PATH
from reproq_cli.errors import DatabaseError, ReproqError
from reproq_cli.spec import canonical_json, spec_hash

CHAOS_KINDS: tuple[str, ...] = ("kill-workers", "kill-children", "restart-db", "lock-rows")
QUEUES: tuple[str, ...] = ("torture", "torture-bulk")
TERMINAL = ("SUCCESSFUL", "FAILED")
# Planned successes get room for chaos: a worker kill or a child kill costs an attempt.
SURVIVOR_ATTEMPTS = 6
STOP_GRACE = 30.0
RESTART_AT = (0.3, 0.7)


@dataclass(frozen=True)
class TortureOptions:
    count: int
    workers: int
    fail_rate: float = 0.05
    retry_rate: float = 0.02
    sleep_ms: int = 20
    executor: str = "spawn"
    concurrency: int = 4
    chaos: frozenset[str] = frozenset()
    chaos_interval: float = 3.0
    chaos_limit: int = 0  # most events of each kind (0: no limit)
    lease_seconds: int = 10
    timeout: float = 1800.0
    seed: int | None = None
    logs_dir: str = ""


@dataclass
class Report:
    run: str
    tasks: int
    statuses: dict[str, int]
    complete: bool
    duration_seconds: float
    workers: int
    executor: str
    chaos: list[str]
    worker_kills: int = 0
    child_kills: int = 0
    db_restarts: int = 0
    row_locks: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    executions: int = 0
    unfinished_executions: int = 0
    db_errors: int = 0
    workdir: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- the workload -----------------------------------------------------------------------------


def plan(options: TortureOptions, run: str, rng: random.Random) -> list[dict[str, Any]]:
    """``options.count`` rows, parents before children; see the module docstring."""
    rows: list[dict[str, Any]] = []

    def add(
        kind: str, expect: str, *, behaviour: dict[str, Any] | None = None, **extra: Any
    ) -> str:
        key = f"t{len(rows)}"
        queue = extra.pop("queue", rng.choice(QUEUES) if rng.random() < 0.3 else QUEUES[0])
        behaviour = {"sleep_ms": rng.randint(0, options.sleep_ms), **(behaviour or {})}
        fails = behaviour.get("fail", False)
        max_attempts = 1 if fails else SURVIVOR_ATTEMPTS
        spec = {
            "v": 1,
            "task_path": TASK_PATH,
            "args": [],
            "kwargs": behaviour,
            "takes_context": False,
            "queue_name": queue,
            "priority": extra.get("priority", 0),
            "lock_key": extra.get("lock_key"),
            "concurrency_key": extra.get("concurrency_key"),
            "concurrency_limit": extra.get("concurrency_limit", 0),
            "run_after": None,
            "exec": {"timeout_seconds": 60, "max_attempts": max_attempts},
            "provenance": {"code_ref": None, "pip_lock_hash": None},
            "torture": {"run": run, "key": key},
        }
        parent = extra.get("parent")
        callback = extra.get("callback", False)
        rows.append(
            {
                "key": key,
                "parent": parent,
                "chord": extra.get("chord"),
                "callback": callback,
                "meta": {"run": run, "kind": kind, "expect": expect},
                "columns": {
                    "queue_name": queue,
                    "priority": spec["priority"],
                    "spec_json": canonical_json(spec),
                    "spec_hash": spec_hash(spec),
                    "task_path": TASK_PATH,
                    "status": "WAITING" if parent or callback else "READY",
                    "max_attempts": max_attempts,
                    "timeout_seconds": 60,
                    "lock_key": spec["lock_key"],
                    "concurrency_key": spec["concurrency_key"],
                    "concurrency_limit": spec["concurrency_limit"],
                    "wait_count": 1 if parent else 0,
                    "workflow_id": extra.get("workflow_id"),
                    "delay": extra.get("delay", 0.0),
                },
            }
        )
        return key

    while len(rows) < options.count:
        room = options.count - len(rows)
        draw = rng.random()
        priority = rng.choice((-10, 0, 0, 5, 10))
        if draw < 0.10 and room >= 3:
            broken = rng.random() < 0.2
            head = add(
                "chain", "FAILED" if broken else "SUCCESSFUL", behaviour={"fail": broken},
                queue=QUEUES[0],
            )  # fmt: skip
            expect = "FAILED" if broken else "SUCCESSFUL"
            middle = add("chain", expect, parent=head, queue=QUEUES[0])
            add("chain", expect, parent=middle, queue=QUEUES[0])
        elif draw < 0.20 and room >= 5:
            chord = f"c{len(rows)}"
            workflow = str(uuid.uuid4())
            broken = rng.random() < 0.2
            expect = "FAILED" if broken else "SUCCESSFUL"
            common = {"chord": chord, "workflow_id": workflow, "queue": QUEUES[0]}
            add("chord-callback", expect, callback=True, **common)
            for member in range(4):
                fails = broken and member == 0
                add(
                    "chord-member", "FAILED" if fails else "SUCCESSFUL",
                    behaviour={"fail": fails}, **common,
                )  # fmt: skip
        elif draw < 0.30:
            add("lock_key", "SUCCESSFUL", lock_key=f"torture:lock:{rng.randrange(8)}")
        elif draw < 0.40:
            add(
                "concurrency", "SUCCESSFUL",
                concurrency_key=f"torture:conc:{rng.randrange(4)}", concurrency_limit=2,
            )  # fmt: skip
        elif draw < 0.45:
            add("delayed", "SUCCESSFUL", delay=rng.uniform(1.0, 8.0), priority=priority)
        elif draw < 0.45 + options.retry_rate:
            add("retry", "SUCCESSFUL", behaviour={"succeed_on": 2}, priority=priority)
        elif rng.random() < options.fail_rate:
            add("failure", "FAILED", behaviour={"fail": True}, priority=priority)
        else:
            add("success", "SUCCESSFUL", priority=priority)
    return rows


# --- processes --------------------------------------------------------------------------------


def executor_processes(workers: set[int]) -> list[int]:
    """Live processes descended from one of ``workers`` (Linux /proc): a pool's processes are
    children of its fork server, not of the worker."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    level = list(workers)
    while level:
        level = [child for pid in level for child in children.get(pid, [])]
        found.extend(level)
    return found


class Torture:
    def __init__(
        self,
        options: TortureOptions,
        dsn: str,
        *,
        restart_db: Callable[[], None] | None = None,
        say: Callable[[str], None] = lambda _message: None,
    ) -> None:
        if "restart-db" in options.chaos and restart_db is None:
            raise ReproqError(
                "--chaos restart-db needs a server torture can restart",
                hint="use the embedded PostgreSQL (no --dsn), or leave restart-db out",
            )
        self.options = options
        self.dsn = dsn
        self.restart_db = restart_db
        self.say = say
        self.run_id = uuid.uuid4().hex[:12]
        self.rng = random.Random(options.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="reproq-torture-"))
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._serial = 0
        self._stop_locks = threading.Event()
        self._lock_threads: list[threading.Thread] = []
        self._locked: set[int] = set()  # rows the lock chaos has held (each only once)

    # --- setup --------------------------------------------------------------------------------

    def enqueue(self) -> int:
        rows = plan(self.options, self.run_id, self.rng)
        with connection(self.dsn) as conn:
            create_executions_table(conn)
            insert_plan(conn, rows)
        return len(rows)

    def _config(self) -> Path:
        o = self.options
        worker: dict[str, Any] = {
            "python_bin": sys.executable,
            "executor_module": "reproq_cli.db.torture_executor",
            "allowed_task_modules": ["reproq_torture."],
            "queues": list(QUEUES),
            "concurrency": o.concurrency,
            "lease_seconds": o.lease_seconds,
            "heartbeat_seconds": max(1, o.lease_seconds // 5),
            "reclaim_interval_seconds": max(1, o.lease_seconds // 5),
            "poll_min_backoff": "10ms",
            "poll_max_backoff": "250ms",
            "executor": o.executor,
            "shutdown_timeout": "20s",
        }
        if o.logs_dir:
            worker["logs_dir"] = o.logs_dir
        path = self.workdir / "reproq.yaml"
        path.write_text(json.dumps({"dsn": self.dsn, "worker": worker}))  # JSON is YAML
        return path

    def _start_worker(self, config: Path) -> None:
        self._serial += 1
        worker_id = f"torture-{self.run_id}-w{self._serial}"
        env = dict(os.environ)
        env[DSN_ENV] = self.dsn
        env["WORKER_ID"] = worker_id
        # The children import reproq_cli from wherever this process did.
        source = str(Path(reproq_cli.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        with (self.workdir / f"{worker_id}.log").open("wb") as out:
            self.workers[worker_id] = subprocess.Popen(
                [sys.executable, "-m", "reproq_cli", "worker", "--config", str(config)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> Report:
        o = self.options
        total = self.enqueue()
        self.say(f"torture {self.run_id}: enqueued {total} tasks; starting {o.workers} workers")
        self.say(f"torture: worker logs in {self.workdir}")
        report = Report(
            run=self.run_id,
            tasks=total,
            statuses={},
            complete=False,
            duration_seconds=0.0,
            workers=o.workers,
            executor=o.executor,
            chaos=sorted(o.chaos),
            workdir=str(self.workdir),
        )
        config = self._config()
        started = time.monotonic()
        try:
            for _ in range(o.workers):
                self._start_worker(config)
            self._loop(report, config, total, started)
        finally:
            self._stop_locks.set()
            self._stop_workers()
            for thread in self._lock_threads:
                thread.join(timeout=5)
        report.duration_seconds = round(time.monotonic() - started, 1)
        try:
            report.statuses = progress(self.dsn, self.run_id)
            report.complete = sum(report.statuses.get(s, 0) for s in TERMINAL) == total
            counts = execution_counts(self.dsn)
            report.executions = counts["executions"]
            report.unfinished_executions = counts["unfinished"]
        except DatabaseError as exc:
            self.say(f"torture: cannot read the final counts: {exc}")
        return report

    def _loop(self, report: Report, config: Path, total: int, started: float) -> None:
        o = self.options
        deadline = started + o.timeout
        next_chaos = time.monotonic() + o.chaos_interval
        restarts = list(RESTART_AT) if "restart-db" in o.chaos else []
        last_said = 0.0
        while time.monotonic() < deadline:
            try:
                statuses = progress(self.dsn, self.run_id)
            except DatabaseError:
                report.db_errors += 1
                statuses = None
            if statuses is not None:
                done = sum(statuses.get(s, 0) for s in TERMINAL)
                if done == total:
                    return
                if time.monotonic() - last_said >= 5:
                    last_said = time.monotonic()
                    self.say(f"torture: {done}/{total} finished {dict(sorted(statuses.items()))}")
                if restarts and done >= restarts[0] * total:
                    restarts.pop(0)
                    self._restart_db(report)
            self._check_workers(report, config)
            if time.monotonic() >= next_chaos:
                next_chaos = time.monotonic() + o.chaos_interval
                self._chaos(report, config)
            time.sleep(0.25)
        self.say(f"torture: gave up after {o.timeout:g}s with tasks unfinished")

    def _check_workers(self, report: Report, config: Path) -> None:
        """A worker that exits on its own is a finding: record it and replace it."""
        for worker_id, proc in list(self.workers.items()):
            if proc.poll() is not None:
                report.unexpected_exits.append(f"{worker_id} exited with {proc.returncode}")
                self.say(f"torture: {worker_id} exited with {proc.returncode}; replacing it")
                del self.workers[worker_id]
                self._start_worker(config)

    def _chaos(self, report: Report, config: Path) -> None:
        o = self.options

        def more(done: int) -> bool:
            return not o.chaos_limit or done < o.chaos_limit

        if "kill-workers" in o.chaos and self.workers and more(report.worker_kills):
            worker_id = self.rng.choice(sorted(self.workers))
            proc = self.workers.pop(worker_id)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            report.worker_kills += 1
            self._start_worker(config)
        if "kill-children" in o.chaos and more(report.child_kills):
            children = executor_processes({p.pid for p in self.workers.values()})
            if children:
                try:
                    os.kill(self.rng.choice(children), signal.SIGKILL)
                    report.child_kills += 1
                except ProcessLookupError:
                    pass  # it finished on its own meanwhile
        if "lock-rows" in o.chaos and more(report.row_locks):
            self._lock_a_row(report)

    def _lock_a_row(self, report: Report) -> None:
        seconds = self.options.lease_seconds * 2.0

        def counted(_result_id: int) -> None:
            # Counted when taken: a lock still held when the run ends has happened all the same.
            report.row_locks += 1

        def hold() -> None:
            hold_row_lock(
                self.dsn, self.run_id, seconds, self._stop_locks, exclude=self._locked,
                on_locked=counted,
            )  # fmt: skip

        self._lock_threads = [t for t in self._lock_threads if t.is_alive()]
        if not self._lock_threads:  # one lock held at a time
            thread = threading.Thread(target=hold, daemon=True)
            thread.start()
            self._lock_threads.append(thread)

    def _restart_db(self, report: Report) -> None:
        assert self.restart_db is not None
        self.say("torture: restarting PostgreSQL")
        self.restart_db()
        report.db_restarts += 1

    def _stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.workers.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
