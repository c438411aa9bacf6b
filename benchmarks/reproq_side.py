"""reproq's own figures: enqueue through Django, the worker's throughput, latency and memory,
and the claim statement's cost as the READY backlog grows."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import (
    MemoryPeak,
    child_env,
    log,
    memory_now,
    paced,
    percentile,
    sample_memory,
    stop_process,
    wait_until,
)

TASK_PREFIX = "benchmarks."


# --- Django in this process -----------------------------------------------------------------------


def setup_django(dsn: str) -> None:
    """Point benchmarks.settings at ``dsn`` and set Django up in the harness process."""
    os.environ["REPROQ_BENCH_DSN"] = dsn
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django

    django.setup()


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE task_runs RESTART IDENTITY CASCADE")
        conn.execute("TRUNCATE reproq_workers")
        conn.execute("VACUUM ANALYZE task_runs")


def _close_django_connections() -> None:
    from django.db import connections

    connections.close_all()


def enqueue_single(dsn: str, count: int, backend: str = "default") -> float:
    """Tasks/s of ``count`` calls of ``noop.enqueue(i)`` (each its own transaction)."""
    from benchmarks.noop_tasks import noop

    reset(dsn)
    task = noop.using(backend=backend) if backend != "default" else noop
    task.enqueue(-1)  # connection set-up outside the timing
    started = time.perf_counter()
    for i in range(count):
        task.enqueue(i)
    return count / (time.perf_counter() - started)


def enqueue_bulk(dsn: str, count: int, chunk: int = 1000, backend: str = "default") -> float:
    """Tasks/s of ``bulk_enqueue`` in lists of ``chunk``."""
    from django.tasks import task_backends

    from benchmarks.noop_tasks import noop

    reset(dsn)
    target = task_backends[backend]
    target.bulk_enqueue([(noop, (-1,), {})])
    started = time.perf_counter()
    for first in range(0, count, chunk):
        target.bulk_enqueue([(noop, (i,), {}) for i in range(first, min(first + chunk, count))])
    return count / (time.perf_counter() - started)


def prefill(dsn: str, count: int) -> None:
    """``count`` READY no-op tasks, enqueued through the backend's bulk path."""
    from django.tasks import task_backends

    from benchmarks.noop_tasks import noop

    reset(dsn)
    for first in range(0, count, 1000):
        task_backends["default"].bulk_enqueue(
            [(noop, (i,), {}) for i in range(first, min(first + 1000, count))]
        )
    _close_django_connections()


# --- worker processes -----------------------------------------------------------------------------


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def start_worker(
    dsn: str,
    workdir: Path,
    *,
    executor: str,
    concurrency: int,
    flags: tuple[str, ...] = (),
    executor_module: str = "reproq_django.executor",
) -> Worker:
    config = workdir / "reproq.yaml"
    # python_bin and executor_module have no flags; they come from the config file.
    config.write_text(
        f"dsn: '{dsn}'\n"
        "worker:\n"
        f"  python_bin: '{sys.executable}'\n"
        f"  executor_module: {executor_module}\n"
    )
    number = len(list(workdir.glob("worker-*.out")))
    out, err = workdir / f"worker-{number}.out", workdir / f"worker-{number}.err"
    argv = [
        sys.executable,
        "-m",
        "reproq_cli",
        "worker",
        "--config",
        str(config),
        "--executor",
        executor,
        "--concurrency",
        str(concurrency),
        "--allowed-task-modules",
        TASK_PREFIX,
        *flags,
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(argv, cwd=workdir, env=child_env(dsn), stdout=stdout, stderr=stderr)
    return Worker(proc, out, err)


@dataclass
class Throughput:
    tasks: int
    wall_seconds: float  # worker process start -> exit
    db_seconds: float  # first started_at -> last finished_at
    peak: MemoryPeak = field(default_factory=MemoryPeak)

    @property
    def wall_rate(self) -> float:
        return self.tasks / self.wall_seconds

    @property
    def db_rate(self) -> float:
        return self.tasks / self.db_seconds if self.db_seconds > 0 else float("nan")


def burst(
    dsn: str,
    *,
    executor: str,
    concurrency: int,
    count: int,
    executor_module: str = "reproq_django.executor",
) -> Throughput:
    """Pre-enqueue ``count`` no-ops, run `reproq worker --burst` until it exits."""
    prefill(dsn, count)
    with tempfile.TemporaryDirectory(prefix="rqbench-w-") as tmp:
        started = time.perf_counter()
        worker = start_worker(
            dsn,
            Path(tmp),
            executor=executor,
            concurrency=concurrency,
            flags=("--burst",),
            executor_module=executor_module,
        )
        with sample_memory(worker.proc.pid) as peak:
            try:
                worker.proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                stop_process(worker.proc)
                raise RuntimeError("worker --burst did not finish within 600 s") from None
        wall = time.perf_counter() - started
        if worker.proc.returncode != 0:
            raise RuntimeError(f"worker exited {worker.proc.returncode}: {worker.output()[-2000:]}")
        done, total, span = _successful_span(dsn)
        if done != count:
            raise RuntimeError(
                f"{done} of {total} tasks SUCCESSFUL after --burst: {worker.output()[-2000:]}"
            )
    return Throughput(count, wall, span, peak)


def _successful_span(dsn: str) -> tuple[int, int, float]:
    """(tasks SUCCESSFUL, tasks, seconds from the first start to the last finish), leaving
    out the warm-up task of an enqueue figure (args [-1])."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL'), count(*),"
            " extract(epoch FROM max(finished_at) - min(started_at))"
            " FROM task_runs WHERE spec_json->'args' <> '[-1]'::jsonb"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), float(row[2] or 0)


@dataclass
class Latency:
    p50: float
    p95: float
    p99: float
    count: int
    achieved_rate: float
    idle_memory: dict[str, float]


def latency(
    dsn: str,
    *,
    rate: float,
    seconds: float,
    executor: str = "pool",
    concurrency: int = 4,
    listen: bool = True,
) -> Latency:
    """A worker running; a producer thread enqueues through Django at ``rate`` per second.
    Latency = started_at - enqueued_at of each task, from the database."""
    from benchmarks.noop_tasks import noop

    reset(dsn)
    with tempfile.TemporaryDirectory(prefix="rqbench-w-") as tmp:
        flags = () if listen else ("--no-listen",)
        worker = start_worker(
            dsn, Path(tmp), executor=executor, concurrency=concurrency, flags=flags
        )
        try:
            # Warm-up: every pool process has set Django up and run a task.
            for i in range(concurrency * 2):
                noop.enqueue(-100 - i)
            wait_until(lambda: _finished(dsn) >= concurrency * 2, 120, "warm-up tasks")
            time.sleep(3.0)  # idle: nothing READY, the worker waits for work
            idle = memory_now(worker.proc.pid)
            with psycopg.connect(dsn, autocommit=True) as conn:
                mark = int(conn.execute("SELECT max(result_id) FROM task_runs").fetchone()[0])  # type: ignore[index]
            count = int(rate * seconds)
            achieved = paced(rate, count, lambda i: noop.enqueue(i))
            wait_until(lambda: _finished(dsn, after=mark) >= count, 120, "latency tasks")
            with psycopg.connect(dsn, autocommit=True) as conn:
                values = [
                    float(r[0])
                    for r in conn.execute(
                        "SELECT extract(epoch FROM started_at - enqueued_at) * 1000"
                        " FROM task_runs WHERE result_id > %s",
                        (mark,),
                    )
                ]
        finally:
            stop_process(worker.proc)
            _close_django_connections()
    return Latency(
        percentile(values, 50),
        percentile(values, 95),
        percentile(values, 99),
        len(values),
        achieved,
        idle,
    )


def _finished(dsn: str, after: int = 0) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM task_runs WHERE status = 'SUCCESSFUL' AND result_id > %s",
            (after,),
        ).fetchone()
    return int(row[0]) if row else 0


def idle_memory(dsn: str, *, executor: str, concurrency: int) -> dict[str, float]:
    """Memory of a worker that started and found nothing to do (no task has run)."""
    reset(dsn)
    with tempfile.TemporaryDirectory(prefix="rqbench-w-") as tmp:
        worker = start_worker(dsn, Path(tmp), executor=executor, concurrency=concurrency)
        try:
            wait_until(
                lambda: "Starting reproq worker" in worker.output(), 60, "the worker to start"
            )
            time.sleep(3.0)
            return memory_now(worker.proc.pid)
        finally:
            stop_process(worker.proc)


# --- the claim statement alone --------------------------------------------------------------------


FILL_SQL = """
INSERT INTO task_runs (spec_json, spec_hash, task_path, status, queue_name)
SELECT jsonb_build_object(
           'v', 1, 'task_path', 'benchmarks.noop_tasks.noop', 'args', jsonb_build_array(i),
           'kwargs', '{}'::jsonb, 'takes_context', false, 'queue_name', 'default',
           'priority', 0, 'lock_key', null, 'concurrency_key', null, 'concurrency_limit', 0,
           'run_after', null, 'exec', '{"timeout_seconds": 900, "max_attempts": 3}'::jsonb,
           'provenance', '{"code_ref": null, "pip_lock_hash": null}'::jsonb),
       encode(sha256(convert_to('bench-' || i, 'UTF8')), 'hex'),
       'benchmarks.noop_tasks.noop', 'READY', 'default'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
"""


@dataclass
class ClaimRate:
    rows: int
    claims: int
    rate: float  # claim + complete_success per second, one connection
    claim_ms: float  # mean time of the claim call alone
    fill_seconds: float


def claim_rates(dsns: dict[int, str], claims: int, chunks: int = 4) -> dict[int, ClaimRate]:
    """``claims`` x (TaskStore.claim + complete_success) per database, where ``dsns`` maps a
    READY row count to a migrated, empty database. The databases are filled first, then
    measured in alternating chunks, so a burst of load from elsewhere hits both alike."""
    from reproq_cli.db.connect import create_pool
    from reproq_cli.db.tasks import TaskStore

    fills: dict[int, float] = {}
    for rows, dsn in dsns.items():
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            step = 200_000
            for first in range(1, rows + 1, step):
                conn.execute(FILL_SQL, {"first": first, "last": min(first + step - 1, rows)})
            conn.execute("VACUUM ANALYZE task_runs")
        fills[rows] = time.perf_counter() - started
        log(f"  {rows:,} READY rows in {fills[rows]:.1f} s")
    pools = {rows: create_pool(dsn, min_size=1, max_size=2) for rows, dsn in dsns.items()}
    elapsed = dict.fromkeys(dsns, 0.0)
    claim_time = dict.fromkeys(dsns, 0.0)
    try:
        stores = {
            rows: TaskStore(pool, "bench-claimer", lease_seconds=300)
            for rows, pool in pools.items()
        }
        for store in stores.values():
            for _ in range(50):  # warm caches, plans and the pool's connection
                task = store.claim("default", aging_factor=60.0)
                assert task is not None
                store.complete_success(task, None, None)
        per_chunk = claims // chunks
        for _ in range(chunks):
            for rows, store in stores.items():
                started = time.perf_counter()
                for _ in range(per_chunk):
                    before = time.perf_counter()
                    task = store.claim("default", aging_factor=60.0)
                    claim_time[rows] += time.perf_counter() - before
                    assert task is not None, "ran out of READY rows"
                    store.complete_success(task, None, None)
                elapsed[rows] += time.perf_counter() - started
    finally:
        for pool in pools.values():
            pool.close()
    done = per_chunk * chunks
    return {
        rows: ClaimRate(
            rows, done, done / elapsed[rows], claim_time[rows] / done * 1000, fills[rows]
        )
        for rows in dsns
    }


def describe_latency(lat: Latency) -> str:
    return f"p50 {lat.p50:.1f} / p95 {lat.p95:.1f} / p99 {lat.p99:.1f} ms (n={lat.count})"


def as_dict(value: Any) -> dict[str, Any]:
    return dict(value.__dict__)


def serve_process(dsn: str) -> subprocess.Popen[bytes]:
    """One ``reproq_django.executor --serve`` pool process, its requests and answers piped;
    its first line is the ready announcement."""
    return subprocess.Popen(
        [sys.executable, "-m", "reproq_django.executor", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(dsn),
    )


def executor_per_task(dsn: str, count: int) -> dict[str, float]:
    """Tasks/s of one ``reproq_django.executor --serve`` process fed no-op specs over its pipe,
    with no worker: once with a result_id (the executor loads and saves the task's metadata)
    and once without (no database access)."""
    import json

    prefill(dsn, count + 20)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT result_id, spec_json::text FROM task_runs ORDER BY result_id LIMIT %s",
            (count + 20,),
        ).fetchall()
    rates: dict[str, float] = {}
    for label, with_id in (("with_result_id", True), ("without_result_id", False)):
        proc = serve_process(dsn)
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdout.readline()  # the ready line
            started = 0.0
            for i, (result_id, spec) in enumerate(rows):
                if i == 20:
                    started = time.perf_counter()
                request = {"result_id": result_id if with_id else "", "attempt": 1, "spec": spec}
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                answer = json.loads(proc.stdout.readline())
                if not answer["result"]["ok"]:
                    raise RuntimeError(f"executor failed: {answer}")
            rates[label] = count / (time.perf_counter() - started)
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
    return rates


@dataclass
class BatchedDispatch:
    rate: float  # tasks ÷ (first start → last finish), from the database, as for burst
    parent_cpu: float  # seconds of this process's CPU a task: claim, pipes, successes
    executor_cpu: float  # seconds of the pool processes' CPU a task
    server_cpu: float  # seconds of PostgreSQL's CPU a task (every server process)


def batched_dispatch(
    dsn: str, count: int, *, processes: int = 2, batch: int = 100
) -> BatchedDispatch:
    """The pool's work without the worker's per-task bookkeeping, to bound a redesign.

    One thread claims ``batch`` tasks in one statement (the worker's ``claim_batch``), writes
    their specs to ``processes`` ``reproq_django.executor --serve`` processes in one write
    each, claims the next batch while those run, reads the answers and records the successes
    in one statement (the worker's success writer). No log line, metric, event, heartbeat or
    thread hand-off per task: what is left is claim, isolation in other processes and
    completion, the floor under any worker that keeps them.
    """
    import json
    import resource
    import selectors

    import psutil

    from reproq_cli.core.pool import read_answer
    from reproq_cli.db.connect import create_pool
    from reproq_cli.db.tasks import SuccessConnection, TaskStore

    prefill(dsn, count)
    pool = create_pool(dsn, min_size=2, max_size=2, worker=True)
    store = TaskStore(pool, "bench-batched", lease_seconds=300)
    writer = SuccessConnection(store)
    selector = selectors.DefaultSelector()
    waiting: dict[int, list[Any]] = {}  # stdout fd -> the tasks sent to it, in order
    partial: dict[int, bytes] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            procs.append(serve_process(dsn))
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()  # the ready line
            fd = proc.stdout.fileno()
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
            waiting[fd], partial[fd] = [], b""
        children = [psutil.Process(proc.pid) for proc in procs]

        def children_cpu() -> float:
            return sum(sum(child.cpu_times()[:2]) for child in children)

        def own_cpu() -> float:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime

        def claim() -> list[Any]:
            return store.claim_batch("default", batch, aging_factor=0.0)[0]

        def dispatch(tasks: list[Any]) -> None:
            for n, proc in enumerate(procs):
                mine = tasks[n::processes]
                assert proc.stdin is not None
                assert proc.stdout is not None
                waiting[proc.stdout.fileno()] += mine
                lines = [
                    json.dumps(
                        {"result_id": t.result_id, "attempt": t.attempts, "spec": t.spec_text}
                    )
                    for t in mine
                ]
                proc.stdin.write(("\n".join(lines) + "\n").encode())
                proc.stdin.flush()

        def gather(expected: int) -> list[tuple[Any, str | None, str | None]]:
            done: list[tuple[Any, str | None, str | None]] = []
            while len(done) < expected:
                for key, _ in selector.select(timeout=60):
                    fd = int(key.fd)
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise RuntimeError("a pool process exited during the batched run")
                    *lines, partial[fd] = (partial[fd] + chunk).split(b"\n")
                    for line in lines:
                        text, _stderr, envelope = read_answer(line)
                        if not envelope.ok:
                            raise RuntimeError(f"a no-op failed in the batched run: {text}")
                        done.append((waiting[fd].pop(0), text, None))
            return done

        cpu_before, children_before, server_before = own_cpu(), children_cpu(), server_cpu(dsn)
        tasks = claim()
        while tasks:
            dispatch(tasks)
            following = claim()  # while the pool processes run this batch
            if not all(writer.complete_successes(gather(len(tasks)))):
                raise RuntimeError("a success lost its lease in the batched run")
            tasks = following
        own, executors = own_cpu() - cpu_before, children_cpu() - children_before
        server = server_cpu(dsn) - server_before
    finally:
        writer.close()
        pool.close()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()  # the end of input ends the serve loop
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(proc)
    done, total, span = _successful_span(dsn)
    if done != count:
        raise RuntimeError(f"{done} of {total} tasks SUCCESSFUL after the batched run")
    return BatchedDispatch(count / span, own / count, executors / count, server / count)


def server_cpu(dsn: str) -> float:
    """CPU seconds the PostgreSQL server has used so far: the postmaster, its processes
    alive now, and those that have exited (which the postmaster waited for)."""
    import psutil

    with psycopg.connect(dsn, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        postmaster = psutil.Process(int(backend[0])).parent()
        assert postmaster is not None
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            if child.pid != backend[0]:  # this probe's own backend is about to exit
                with contextlib.suppress(psutil.NoSuchProcess):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
    return total


def task_runs_inserts(dsn: str, count: int, bulk: int = 1000) -> tuple[float, float]:
    """Rows/s of the row the backend writes, inserted into task_runs by plain psycopg (no
    Django, no spec building): one INSERT per transaction, and INSERT … SELECT of ``bulk``.
    Shows what the table itself (its indexes and triggers) costs."""
    single_sql = FILL_SQL.replace(
        "FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i",
        "FROM (SELECT %(first)s::bigint AS i) AS s",
    )
    reset(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(single_sql, {"first": 0})
        started = time.perf_counter()
        for i in range(1, count + 1):
            conn.execute(single_sql, {"first": i})
        single = count / (time.perf_counter() - started)
        started = time.perf_counter()
        first = count + 1
        for _ in range(5 * count // bulk):
            conn.execute(FILL_SQL, {"first": first, "last": first + bulk - 1})
            first += bulk
        many = 5 * count / (time.perf_counter() - started)
    return single, many


def spawn_child_costs(dsn: str, runs: int) -> dict[str, list[float]]:
    """Milliseconds per run of the three child processes, alternated: the bare baseline's
    ``python -c "django.setup(); noop"``, and ``python -m reproq_django.executor`` with a spec
    (the spawn executor's child) with and without a result_id (metadata load and save)."""
    from benchmarks.peers import BARE_CHILD

    prefill(dsn, runs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT result_id, spec_json::text FROM task_runs ORDER BY result_id"
        ).fetchall()
    env = child_env(dsn)
    executor = [sys.executable, "-m", "reproq_django.executor", "--payload-json"]
    costs: dict[str, list[float]] = {"bare": [], "executor": [], "executor_no_id": []}
    for result_id, spec in rows[:runs]:
        argvs = {
            "bare": [sys.executable, "-c", BARE_CHILD],
            "executor": [*executor, spec, "--result-id", str(result_id)],
            "executor_no_id": [*executor, spec],
        }
        for name, argv in argvs.items():
            started = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, check=True)
            costs[name].append((time.perf_counter() - started) * 1000)
    return costs
