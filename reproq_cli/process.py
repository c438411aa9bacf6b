"""Facts about this process shared by the worker and the Django app's memory logger."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from pathlib import Path


def memory_log_interval(raw: str) -> float:
    """REPROQ_MEMORY_LOG_INTERVAL: a Go duration or bare seconds; invalid or <= 0 disables."""
    raw = raw.strip()
    if not raw:
        return 0.0
    if raw.isdigit():
        value = float(raw)
    else:
        # Imported only for a Go duration: every executor calls this at start-up (usually
        # with the variable unset), and the config module's YAML parser and tables cost
        # ~0.14 s.
        from reproq_cli.config import parse_duration

        try:
            value = parse_duration(raw)
        except ValueError:
            return -1.0  # reported by the worker, then treated as disabled
    return value if value > 0 else -1.0


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def die_with_parent() -> None:
    """SIGKILL this executor, and the process group it leads, as soon as its parent exits.

    Workers start executors in a session of their own so that a timeout or a cancel reaches
    the task's whole process tree. The cost is that a worker killed with SIGKILL leaves them
    running: its lease then expires, another worker claims the task and runs it again while
    the orphan still does, which breaks lock_key and "not twice at once". Nobody is left to
    read an orphan's answer, so stopping it loses nothing that the rerun does not redo.
    """
    parent = os.getppid()
    try:
        fd: int | None = os.pidfd_open(parent)
    except OSError:
        fd = None  # kernels before 5.3: fall back to watching getppid()
    if os.getppid() != parent:  # the parent went before the pidfd was open
        _kill_own_group()
    threading.Thread(
        target=_wait_for_parent, args=(parent, fd), name="reproq-parent-watch", daemon=True
    ).start()


def _wait_for_parent(parent: int, fd: int | None) -> None:
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    else:
        while os.getppid() == parent:
            time.sleep(0.5)
    _kill_own_group()


def _kill_own_group() -> None:
    # Only the group's leader may take the group down: an executor started by hand from a
    # shell shares the shell's group.
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
