"""`reproq top` driven in a real pseudo-terminal: it draws, refreshes, and quits on q."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.support.harness import enqueue


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never appeared on screen:\n{bytes(seen)[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return bytes(seen)


def test_top_in_a_pty(conn, db_dsn):
    enqueue(conn, "add", 1, 1, columns={"queue_name": "mail"})
    conn.execute("INSERT INTO reproq_workers (worker_id, hostname) VALUES ('w-top', 'box')")
    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reproq_cli", "top", "--dsn", db_dsn, "--interval", "0.2"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        close_fds=True,
    )
    os.close(child)
    seen = bytearray()
    try:
        _read_until(main, b"mail", seen)
        _read_until(main, b"w-top", seen)
        enqueue(conn, "add", 2, 2, columns={"queue_name": "zebra"})
        _read_until(main, b"zebra", seen)  # a later refresh shows the new queue
        os.write(main, b"q")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
