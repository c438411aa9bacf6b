"""Facts about this process shared by the worker and the Django app's memory logger, and the
executor side of the pool's fork server."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

# Set by the worker on the one `--serve` process it wants as a fork server (see serve_forks).
FORK_SERVER_ENV = "REPROQ_EXECUTOR_FORK_SERVER"


_PLAIN_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
# threading's waits fail past about 292 years less the monotonic clock's own reading: a longer
# wait is made of waits of a day.
_LONGEST_WAIT = 86400.0


def memory_log_interval(raw: str) -> tuple[float, str]:
    """REPROQ_MEMORY_LOG_INTERVAL as (seconds, error): a Go duration or bare seconds (a
    fraction, or an upper-case unit, as reproq-django's own parser took them). (0, "") when
    unset; (-1, why) when invalid or not positive, which disables the logger."""
    raw = raw.strip()
    if not raw:
        return 0.0, ""
    if _PLAIN_SECONDS.fullmatch(raw):
        value = float(raw)
    else:
        # Imported only for a Go duration: every executor calls this at start-up (usually
        # with the variable unset), and the config module's YAML parser and tables cost
        # ~0.14 s.
        from reproq_cli.config import parse_duration

        try:
            value = parse_duration(raw)
        except ValueError as exc:
            try:
                value = parse_duration(raw.lower())
            except ValueError:
                return -1.0, str(exc)
    if value <= 0:
        return -1.0, f"the interval must be positive, not {raw!r}"
    return value, ""


def wait_or_stop(stop: threading.Event, seconds: float) -> bool:
    """Wait ``seconds``, however long; True as soon as ``stop`` is set."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if stop.wait(min(remaining, _LONGEST_WAIT)):
            return True
    return stop.is_set()


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
    fd = pidfd(parent)  # None on kernels before 5.3: watch getppid() instead
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


def fork_server_requested() -> bool:
    return os.environ.get(FORK_SERVER_ENV) == "1"


def serve_forks(
    protocol: TextIO,
    child_main: Callable[[TextIO], int],
    before_fork: Callable[[], None] | None = None,
) -> int:
    """Be the pool's fork server: an executor set up once, which forks pool processes.

    The worker starts ``--serve`` with FORK_SERVER_ENV=1 and a Unix stream socket as stdin.
    This announces ``{"ready": true, "pid": N, "fork_server": true, "threads": T}`` on
    ``protocol`` (the original stdout), then for each request line on the socket, which
    carries three descriptors (the new process's stdin, stdout and stderr), forks a child and
    answers ``{"forked": pid}``; every child's end is answered ``{"exited": pid,
    "returncode": rc}`` (Popen's convention: -N for signal N). A child runs ``child_main``
    with the protocol stream on its new stdout, in a session of its own, and dies with this
    process; ``before_fork`` lets the server drop what children must not share (database
    connections).

    End of input stops the forking; the server stays until its last child has exited, so
    that the worker still learns how each ended. It leaves at once when the worker dies.
    """
    import socket  # here: ~4.5 ms that a spawned executor, which imports this module, skips

    os.environ.pop(FORK_SERVER_ENV, None)  # children and what they start are not servers
    control = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    parent = os.getppid()
    parent_fd = pidfd(parent)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd hears it
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    for fd in (control.fileno(), wake_r, parent_fd):
        if fd is not None:
            poller.register(fd, select.POLLIN)
    own = [control.fileno(), wake_r, wake_w, protocol.fileno()]
    if parent_fd is not None:
        own.append(parent_fd)

    def answer(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    # Threads the set-up started (an APM agent, a client library) are not copied into the
    # forked processes, and a lock one of them holds at a fork stays held there: the worker
    # warns about them.
    threads = len(os.listdir("/proc/self/task"))
    # What the set-up made lives as long as the children: frozen, their collections never
    # walk it, and so never write to (and copy) the pages it shares with this process.
    gc.collect()
    gc.freeze()
    answer({"ready": True, "pid": os.getpid(), "fork_server": True, "threads": threads})
    children: set[int] = set()
    accepting = True
    try:
        while accepting or children:
            if parent_fd is None and os.getppid() != parent:
                return 0
            for fd, _ in poller.poll(None if parent_fd is not None else 500):
                if fd == parent_fd:
                    return 0  # the worker is gone; the children follow this process
                if fd == wake_r:
                    while _read_some(wake_r):
                        pass
                    for pid, returncode in _reap():
                        children.discard(pid)
                        answer({"exited": pid, "returncode": returncode})
                    continue
                data, fds, _, _ = socket.recv_fds(control, 65536, 3)
                if not data:
                    accepting = False
                    poller.unregister(control.fileno())
                    continue
                if len(fds) != 3:
                    for received in fds:
                        os.close(received)
                    answer({"forked": None, "error": "a fork request needs three descriptors"})
                    continue
                if before_fork is not None:
                    before_fork()
                pid = _fork(fds, own, child_main)
                children.add(pid)
                answer({"forked": pid})
    except (BrokenPipeError, ConnectionError):
        return 0  # nobody is reading the answers any more
    return 0


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 512)
    except BlockingIOError:
        return b""


def _reap() -> list[tuple[int, int]]:
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        ended.append((pid, os.waitstatus_to_exitcode(status)))
    return ended


def _fork(fds: list[int], own: list[int], child_main: Callable[[TextIO], int]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    code = 1
    try:
        os.setsid()  # its own process group: a kill reaches what its task starts
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in own:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        die_with_parent()
        protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        code = child_main(protocol)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or None: no such
    process, or an older kernel."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
