"""Tasks for the worker tests, run by tests.support.executor in real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {
        "args": list(args),
        "kwargs": kwargs,
        "attempt": int(os.environ["REPROQ_ATTEMPT"]),
        "payload_mode": os.environ["REPROQ_PAYLOAD_MODE"],
    }


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def fail_until(attempt: int) -> str:
    """Fails on attempts before ``attempt``, then succeeds."""
    current = int(os.environ["REPROQ_ATTEMPT"])
    if current < attempt:
        raise RuntimeError(f"attempt {current} fails")
    return f"succeeded on attempt {current}"


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _start_grandchild(pidfile: str, seconds: float) -> None:
    """A grandchild in the same process group that sleeps ``seconds``; its pid in ``pidfile``."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(pidfile, "w") as handle:
        handle.write(str(child.pid))


def leave_grandchild(pidfile: str, seconds: float) -> str:
    """Starts a grandchild and returns at once, without waiting for it."""
    _start_grandchild(pidfile, seconds)
    return "left"


def sleep_with_grandchild(pidfile: str, seconds: float) -> None:
    """Starts a grandchild, then sleeps as long as it does."""
    _start_grandchild(pidfile, seconds)
    time.sleep(seconds)


def noisy(stdout_bytes: int, stderr_bytes: int) -> str:
    print("x" * stdout_bytes)  # captured by the executor and forwarded to stderr
    sys.stderr.write("e" * stderr_bytes)
    return "done"


def corrupt_stdout() -> None:
    os.write(1, b"this is not json\n")


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(5)


def exit_silently(code: int) -> None:
    os._exit(code)


def record(path: str, seconds: float = 0.01) -> float:
    """Appends "<result_id> <start> <end>" to ``path`` (one write, O_APPEND) for overlap checks."""
    started = time.time()
    time.sleep(seconds)
    line = f"{os.environ['REPROQ_RESULT_ID']} {started:.6f} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return started


def touch(path: str) -> str:
    with open(path, "a") as handle:
        handle.write(os.environ["REPROQ_RESULT_ID"] + "\n")
    return path


def infinite() -> float:
    """A return value JSON has no number for (json.dumps writes Infinity)."""
    return float("inf")


def nul_text() -> str:
    """A return value jsonb refuses (its JSON has a \\u0000 escape)."""
    return "a\x00b"


def pid() -> int:
    return os.getpid()


def parent_pid() -> int:
    return os.getppid()


def frozen_objects() -> int:
    """How many objects this process's garbage collector leaves alone (gc.freeze)."""
    import gc

    return gc.get_freeze_count()


_HELD: list[bytearray] = []


def hold_memory(megabytes: int) -> int:
    """Keeps ``megabytes`` alive in this process after the task returns (a leak)."""
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it counts in RSS
    _HELD.append(block)
    return os.getpid()


def burn_cpu(seconds: float, ignore_sigxcpu: bool = False) -> float:
    """Spins for ``seconds`` of CPU time (a --task-cpu-limit test); optionally ignores SIGXCPU
    the way a careless C extension might, so only the hard limit's SIGKILL stops it."""
    import signal

    if ignore_sigxcpu:
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass
    return time.process_time() - started


def allocate(megabytes: int) -> int:
    """Allocates and touches ``megabytes`` (a --task-memory-limit test)."""
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


def write_stdout(data_hex: str, exit_now: bool = False) -> str:
    """Writes raw bytes to file descriptor 1, under the executor's envelope (garbage,
    partial or huge executor output); ``exit_now`` ends the process before the envelope."""
    os.write(1, bytes.fromhex(data_hex))
    if exit_now:
        os._exit(0)
    return "written"


def wait_for_file(path: str, timeout: float = 30.0) -> str:
    """Returns once ``path`` exists (the test's go-ahead), or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)
    return path


def write_stdout_then_sleep(data_hex: str, seconds: float) -> float:
    """Writes raw bytes to file descriptor 1, then sleeps (output left by a task that times out)."""
    os.write(1, bytes.fromhex(data_hex))
    time.sleep(seconds)
    return seconds
