"""The executor ``reproq torture`` runs its workers with: the executor protocol without Django.

    python -m reproq_cli.db.torture_executor --result-id N --attempt A --payload-stdin
    python -m reproq_cli.db.torture_executor --serve        (the pool's JSON-lines protocol)

It runs one task, ``reproq_torture.work``, whose body records each execution (start and end
on the database's clock, result_id, attempt, worker, pid) in ``reproq_torture_executions``,
so ``reproq verify`` can prove that no two executions overlapped where they must not. It
lives in ``reproq_cli.db`` because it talks to PostgreSQL (psycopg is the db layer's alone)
and needs nothing but the standard library and psycopg.

The database is ``REPROQ_TORTURE_DSN`` and the worker is ``WORKER_ID``, both set by torture
for the worker, whose environment the child inherits. Recording survives a database restart:
a lost connection is re-opened with backoff for up to RECONNECT_SECONDS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, TextIO

import psycopg

from reproq_cli.db.queries import query
from reproq_cli.process import die_with_parent, fork_server_requested, serve_forks

TASK_PATH = "reproq_torture.work"
DSN_ENV = "REPROQ_TORTURE_DSN"
RECONNECT_SECONDS = 60.0


class Recorder:
    """One connection per process, re-opened when the server went away."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection[Any] | None = None

    def _run(self, name: str, params: dict[str, Any]) -> Any:
        deadline = time.monotonic() + RECONNECT_SECONDS
        delay = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                cursor = self.conn.execute(query(name), params)
                return cursor.fetchone() if cursor.description else None
            except psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def start(self, result_id: int, attempt: int) -> int:
        row = self._run(
            "torture_execution_start",
            {
                "result_id": result_id,
                "attempt": attempt,
                "worker_id": os.environ.get("WORKER_ID", ""),
                "pid": os.getpid(),
            },
        )
        return int(row[0])

    def end(self, execution_id: int, outcome: str) -> None:
        self._run("torture_execution_end", {"id": execution_id, "outcome": outcome})


def work(
    recorder: Recorder,
    result_id: int,
    attempt: int,
    *,
    sleep_ms: float = 0,
    fail: bool = False,
    succeed_on: int = 1,
) -> dict[str, Any]:
    """The torture task: record the start, sleep, fail when told to, record the end."""
    execution = recorder.start(result_id, attempt)
    outcome = "error"
    try:
        time.sleep(sleep_ms / 1000.0)
        if fail:
            raise RuntimeError("torture: planned failure")
        if attempt < succeed_on:
            raise RuntimeError(f"torture: attempt {attempt} fails, {succeed_on} succeeds")
        outcome = "ok"
        return {"attempt": attempt, "slept_ms": sleep_ms}
    finally:
        recorder.end(execution, outcome)


def run(recorder: Recorder, spec_text: str, result_id: int, attempt: int) -> tuple[bool, str]:
    """(ok, envelope JSON) for one spec."""
    try:
        spec = json.loads(spec_text)
        if not isinstance(spec, dict) or spec.get("task_path") != TASK_PATH:
            raise ValueError(f"the torture executor runs only {TASK_PATH}")
        kwargs = spec.get("kwargs") or {}
        value = work(recorder, result_id, attempt, **kwargs)
        return True, json.dumps({"ok": True, "return": value})
    except Exception as exc:
        return False, json.dumps(
            {
                "ok": False,
                "exception_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
        )


def serve(recorder: Recorder) -> int:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    if fork_server_requested():
        # The pool forks its processes from here, so chaos meets forked processes too; the
        # recorder connects lazily, in each process that records.
        return serve_forks(
            protocol, lambda forked: _serve_requests(recorder, forked), recorder.close
        )
    return _serve_requests(recorder, protocol)


def _serve_requests(recorder: Recorder, protocol: TextIO) -> int:
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        _, text = run(recorder, request["spec"], request["result_id"], request["attempt"])
        protocol.write(f'{{"result": {text}, "stderr": ""}}\n')
        protocol.flush()
    return 0


def main() -> int:
    if not fork_server_requested():  # a fork server watches its parent in its own loop
        die_with_parent()
    recorder = Recorder(os.environ.get(DSN_ENV, ""))
    if sys.argv[1:] == ["--serve"]:
        return serve(recorder)
    parser = argparse.ArgumentParser(prog="python -m reproq_cli.db.torture_executor")
    parser.add_argument("--result-id", type=int, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--payload-stdin", action="store_true")
    mode.add_argument("--payload-file")
    mode.add_argument("--payload-json")
    args = parser.parse_args()
    if args.payload_stdin:
        raw = sys.stdin.read()
    elif args.payload_file:
        with open(args.payload_file, encoding="utf-8") as handle:
            raw = handle.read()
    else:
        raw = args.payload_json
    ok, text = run(recorder, raw, args.result_id, args.attempt)
    sys.stdout.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
