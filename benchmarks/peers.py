"""The baselines, driven from the harness: a raw SQL claim loop, a bare spawn-a-Python-per-task
loop with django.setup(), pgqueuer and procrastinate. Each gets its own database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import ROOT, child_env, paced, percentile, stop_process, wait_until
from benchmarks.peer_workers import RAW_CLAIM_ONE, RAW_DONE_ONE, RAW_SCHEMA

PEER_WORKERS = [sys.executable, "-m", "benchmarks.peer_workers"]
PROCESS_TIMEOUT = 600


@dataclass
class PeerRun:
    tasks: int
    wall_seconds: float  # first worker process start -> last exit
    busy_seconds: float  # first job start -> last job end

    @property
    def rate(self) -> float:
        return self.tasks / self.busy_seconds if self.busy_seconds > 0 else float("nan")

    @property
    def wall_rate(self) -> float:
        return self.tasks / self.wall_seconds


def _run_all(argvs: list[list[str]], env: dict[str, str]) -> float:
    """Start every process at once, wait for all; seconds from first start to last exit."""
    started = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for argv in argvs]
    for proc in procs:
        try:
            proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in procs:
                stop_process(other)
            raise RuntimeError(f"{argvs[0][3]} worker did not finish in time") from None
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argvs[0][2:4])} worker exited {proc.returncode}")
    return time.perf_counter() - started


# --- raw SQL --------------------------------------------------------------------------------------


def raw_setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_jobs")
        conn.execute(RAW_SCHEMA)


def raw_fill(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_jobs RESTART IDENTITY")
        conn.execute(
            "INSERT INTO bench_jobs (payload) SELECT jsonb_build_object('n', i)"
            " FROM generate_series(1, %s::int) AS i",
            (count,),
        )
        conn.execute("VACUUM ANALYZE bench_jobs")


def raw_span(dsn: str, count: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'),"
            " extract(epoch FROM max(finished_at) - min(started_at)) FROM bench_jobs"
        ).fetchone()
    assert row is not None
    if int(row[0]) != count:
        raise RuntimeError(f"only {row[0]} of {count} jobs done")
    return float(row[1])


def raw_throughput(dsn: str, *, connections: int, batch: int, count: int) -> PeerRun:
    """``connections`` processes claim one job (batch 1) or ``batch`` jobs per statement."""
    raw_fill(dsn, count)
    argv = [*PEER_WORKERS, "rawsql", "--dsn", dsn, "--batch", str(batch)]
    wall = _run_all([argv] * connections, child_env(dsn))
    return PeerRun(count, wall, raw_span(dsn, count))


def raw_enqueue(dsn: str, count: int, bulk: int = 1000) -> tuple[float, float]:
    """(one INSERT per job in its own transaction, INSERT … SELECT unnest() of ``bulk``) jobs/s."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_jobs RESTART IDENTITY")
        started = time.perf_counter()
        for i in range(count):
            conn.execute(
                "INSERT INTO bench_jobs (payload) VALUES (%s::jsonb)", (json.dumps({"n": i}),)
            )
        single = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for first in range(0, count * 5, bulk):
            payloads = [json.dumps({"n": i}) for i in range(first, first + bulk)]
            conn.execute("INSERT INTO bench_jobs (payload) SELECT unnest(%s::jsonb[])", (payloads,))
        many = count * 5 / (time.perf_counter() - started)
    return single, many


# --- a Python with django.setup() per task --------------------------------------------------------

BARE_CHILD = "import django; django.setup(); from benchmarks.noop_tasks import noop; noop.call(0)"


def bare_spawn(dsn: str, django_dsn: str, *, concurrency: int, count: int) -> PeerRun:
    """``concurrency`` threads each claim a job (raw SQL), run ``python -c BARE_CHILD`` with
    the benchmark's Django settings, and mark the job done."""
    raw_fill(dsn, count)
    env = child_env(django_dsn)
    failures: list[str] = []

    def loop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while (row := conn.execute(RAW_CLAIM_ONE).fetchone()) is not None:
                done = subprocess.run(
                    [sys.executable, "-c", BARE_CHILD],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    check=False,
                )
                if done.returncode != 0:
                    failures.append(done.stderr.decode(errors="replace")[-500:])
                conn.execute(RAW_DONE_ONE, (row[0],))

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"bare spawn child failed: {failures[0]}")
    return PeerRun(count, wall, raw_span(dsn, count))


# --- pgqueuer -------------------------------------------------------------------------------------


async def _pgq_queries(dsn: str) -> tuple[Any, Any]:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    return conn, Queries(PsycopgDriver(conn))


def pgqueuer_setup(dsn: str) -> None:
    async def go() -> None:
        conn, queries = await _pgq_queries(dsn)
        await queries.install()
        await conn.close()

    asyncio.run(go())


def _pgq_clear(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")


def pgqueuer_enqueue(dsn: str, count: int, bulk: int = 1000) -> tuple[float, float]:
    """(``Queries.enqueue`` with scalars, with lists of ``bulk``) jobs/s."""
    _pgq_clear(dsn)

    async def go() -> tuple[float, float]:
        conn, queries = await _pgq_queries(dsn)
        enqueue = queries.enqueue
        await enqueue("noop", b"-1")
        started = time.perf_counter()
        for i in range(count):
            await enqueue("noop", str(i).encode())
        single = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for first in range(0, count * 5, bulk):
            await enqueue(
                ["noop"] * bulk, [str(i).encode() for i in range(first, first + bulk)], [0] * bulk
            )
        many = count * 5 / (time.perf_counter() - started)
        await conn.close()
        return single, many

    return asyncio.run(go())


def _pgq_fill(dsn: str, count: int, payload: bytes = b"job") -> None:
    async def go() -> None:
        conn, queries = await _pgq_queries(dsn)
        for first in range(0, count, 1000):
            size = min(1000, count - first)
            await queries.enqueue(["noop"] * size, [payload] * size, [0] * size)
        await conn.close()

    asyncio.run(go())


def pgqueuer_throughput(dsn: str, *, processes: int, batch: int, count: int) -> PeerRun:
    _pgq_clear(dsn)
    _pgq_fill(dsn, count)
    with tempfile.TemporaryDirectory(prefix="rqbench-pgq-") as tmp:
        outs = [str(Path(tmp) / f"out-{i}.json") for i in range(processes)]
        argvs = [
            [*PEER_WORKERS, "pgqueuer", "--dsn", dsn, "--batch", str(batch), "--out", out]
            for out in outs
        ]
        wall = _run_all(argvs, child_env(dsn))
        stats = [json.loads(Path(out).read_text()) for out in outs]
    done = sum(s["count"] for s in stats)
    if done != count:
        raise RuntimeError(f"pgqueuer ran {done} of {count} jobs")
    first = min(s["first"] for s in stats if s["first"])
    last = max(s["last"] for s in stats if s["last"])
    return PeerRun(count, wall, last - first)


@dataclass
class PeerLatency:
    p50: float
    p95: float
    p99: float
    count: int
    achieved_rate: float


def pgqueuer_latency(dsn: str, *, rate: float, seconds: float) -> PeerLatency:
    """Default worker (batch 10, LISTEN/NOTIFY); a producer enqueues one job per call."""
    _pgq_clear(dsn)
    count = int(rate * seconds)
    warm = 10
    with tempfile.TemporaryDirectory(prefix="rqbench-pgq-") as tmp:
        out = str(Path(tmp) / "out.json")
        argv = [*PEER_WORKERS, "pgqueuer", "--dsn", dsn, "--batch", "10"]
        argv += ["--expect", str(count + warm), "--out", out]
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(dsn), stdout=subprocess.DEVNULL)
        try:
            _pgq_fill(dsn, warm, payload=b"warm-up")
            wait_until(lambda: _pgq_queued(dsn) == 0, 60, "pgqueuer warm-up")
            time.sleep(3.0)

            async def produce() -> float:
                conn, queries = await _pgq_queries(dsn)
                loop = asyncio.get_running_loop()
                started = loop.time()
                for i in range(count):
                    delay = started + i / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await queries.enqueue("noop", str(i).encode())
                achieved = count / (loop.time() - started)
                await conn.close()
                return achieved

            achieved = asyncio.run(produce())
            proc.wait(timeout=120)
        finally:
            stop_process(proc)
        stats = json.loads(Path(out).read_text())
    values = stats["latency_ms"]
    return PeerLatency(
        percentile(values, 50),
        percentile(values, 95),
        percentile(values, 99),
        len(values),
        achieved,
    )


def _pgq_queued(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
    return int(row[0]) if row else 0


# --- procrastinate --------------------------------------------------------------------------------


def _procrastinate(dsn: str) -> tuple[Any, Any]:
    """(app, noop task) of benchmarks.procrastinate_app, whose connector reads the DSN from
    the environment when first imported."""
    import os

    os.environ["REPROQ_BENCH_PEER_DSN"] = dsn
    from benchmarks.procrastinate_app import app, noop

    if app.connector._pool_args.get("conninfo") != dsn:  # imported earlier for another DSN
        raise RuntimeError("benchmarks.procrastinate_app was set up for another database")
    return app, noop


def procrastinate_setup(dsn: str) -> None:
    app, _noop = _procrastinate(dsn)
    with app.open():
        app.schema_manager.apply_schema()


def _proc_clear(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE")


def procrastinate_enqueue(dsn: str, count: int, bulk: int = 1000) -> tuple[float, float]:
    """(``noop.defer`` per job, ``noop.batch_defer`` of ``bulk``) jobs/s, synchronous API."""
    _proc_clear(dsn)
    app, noop = _procrastinate(dsn)
    with app.open():
        noop.defer(n=-1)
        started = time.perf_counter()
        for i in range(count):
            noop.defer(n=i)
        single = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for first in range(0, count * 5, bulk):
            noop.batch_defer(*({"n": i} for i in range(first, first + bulk)))
        many = count * 5 / (time.perf_counter() - started)
    return single, many


def _proc_fill(dsn: str, count: int) -> None:
    app, noop = _procrastinate(dsn)
    with app.open():
        for first in range(0, count, 1000):
            noop.batch_defer(*({"n": i} for i in range(first, min(first + 1000, count))))


def _proc_span(dsn: str, count: int, after: int = 0) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded') FROM procrastinate_jobs"
            " WHERE id > %s",
            (after,),
        ).fetchone()
        assert row is not None
        if int(row[0]) != count:
            raise RuntimeError(f"procrastinate: {row[0]} of {count} jobs succeeded")
        span = conn.execute(
            "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded')"
            " - min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events"
            " WHERE job_id > %s",
            (after,),
        ).fetchone()
    assert span is not None
    return float(span[0])


def procrastinate_throughput(dsn: str, *, processes: int, concurrency: int, count: int) -> PeerRun:
    _proc_clear(dsn)
    _proc_fill(dsn, count)
    argv = [*PEER_WORKERS, "procrastinate", "--concurrency", str(concurrency)]
    wall = _run_all([argv] * processes, child_env(dsn, REPROQ_BENCH_PEER_DSN=dsn))
    return PeerRun(count, wall, _proc_span(dsn, count))


def procrastinate_latency(dsn: str, *, rate: float, seconds: float) -> PeerLatency:
    """Default worker (concurrency 1, LISTEN/NOTIFY); a producer defers one job per call."""
    _proc_clear(dsn)
    app, noop = _procrastinate(dsn)
    count = int(rate * seconds)
    argv = [*PEER_WORKERS, "procrastinate", "--wait"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=child_env(dsn, REPROQ_BENCH_PEER_DSN=dsn), stdout=subprocess.DEVNULL
    )
    try:
        with app.open():
            for i in range(10):
                noop.defer(n=-1 - i)
            wait_until(lambda: _proc_done(dsn) >= 10, 60, "procrastinate warm-up")
            time.sleep(3.0)
            achieved = paced(rate, count, lambda i: noop.defer(n=i))
        wait_until(lambda: _proc_done(dsn) >= count + 10, 120, "procrastinate latency jobs")
    finally:
        stop_process(proc)
    with psycopg.connect(dsn, autocommit=True) as conn:
        values = [
            float(r[0])
            for r in conn.execute(
                "SELECT extract(epoch FROM s.at - d.at) * 1000 FROM procrastinate_events d"
                " JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started'"
                " WHERE d.type = 'deferred' AND d.job_id > 10"
            )
        ]
    return PeerLatency(
        percentile(values, 50),
        percentile(values, 95),
        percentile(values, 99),
        len(values),
        achieved,
    )


def _proc_done(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0
