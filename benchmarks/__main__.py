"""python -m benchmarks [--quick] [--only SECTIONS] [--output PATH | --no-write]

Starts an embedded PostgreSQL in a temporary directory (or uses REPROQ_BENCH_ADMIN_DSN, a
role that may CREATE DATABASE), measures reproq and its peers side by side, prints the tables
and writes them into BENCHMARKS.md (the full run; --quick only prints unless --output says
where). Progress goes to stderr. Sections: enqueue, throughput, latency, memory, claim,
startup (default: all).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import peers, report, reproq_side, startup
from benchmarks.harness import ROOT, Server, apply_reproq_schema, log, machine_facts
from benchmarks.report import Results, Target

SECTIONS = ("enqueue", "throughput", "latency", "memory", "claim", "startup")
S_ENQ, S_RUN, S_LAT, S_MEM, S_CLAIM, S_START = report.SECTION_ORDER


@dataclass(frozen=True)
class Plan:
    repeats: int  # rounds of the fast measurements (enqueue, throughput)
    spawn_repeats: int
    enqueue_single: int
    enqueue_bulk: int
    pool_tasks: int
    spawn_tasks: dict[int, int]  # concurrency -> tasks
    raw_tasks: int
    pgqueuer_tasks: int
    procrastinate_tasks: int
    latency_seconds: float
    latency_rate: float
    claim_rows: tuple[int, int]
    claims: int
    startup_runs: int
    startup_cold_runs: int


FULL = Plan(
    repeats=3,
    spawn_repeats=2,
    enqueue_single=2000,
    enqueue_bulk=10_000,
    pool_tasks=3000,
    spawn_tasks={1: 10, 4: 24, 16: 24},
    raw_tasks=5000,
    pgqueuer_tasks=10_000,
    procrastinate_tasks=1000,
    latency_seconds=20,
    latency_rate=50,
    claim_rows=(10_000, 1_000_000),
    claims=2000,
    startup_runs=30,
    startup_cold_runs=5,
)
QUICK = Plan(
    repeats=1,
    spawn_repeats=1,
    enqueue_single=500,
    enqueue_bulk=2000,
    pool_tasks=300,
    spawn_tasks={1: 6, 4: 12, 16: 12},
    raw_tasks=3000,
    pgqueuer_tasks=3000,
    procrastinate_tasks=500,
    latency_seconds=5,
    latency_rate=50,
    claim_rows=(10_000, 100_000),
    claims=500,
    startup_runs=5,
    startup_cold_runs=1,
)


def guarded(results: Results, key: str, what: str, action: Callable[[], None]) -> None:
    """Run one measurement; a failure is recorded (and shown in the report), not fatal."""
    try:
        action()
    except Exception as exc:
        log(f"  FAILED {what}: {exc}")
        traceback.print_exc(file=sys.stderr)
        results.errors.setdefault(key, f"{what} failed: {str(exc).splitlines()[0][:300]}")


# --- sections -------------------------------------------------------------------------------------


def run_enqueue(plan: Plan, results: Results, dbs: dict[str, str]) -> None:
    n, bulk = plan.enqueue_single, plan.enqueue_bulk
    rate = "tasks/s"
    for round_ in range(plan.repeats):
        log(f"enqueue, round {round_ + 1}/{plan.repeats}")

        def ours() -> None:
            value = reproq_side.enqueue_single(dbs["reproq"], n)
            fig = results.add("enq-single", S_ENQ, "reproq", "`task.enqueue()`", rate, value)
            fig.refs = ["pgq-enq-single", "proc-enq-single", "raw-enq-single"]
            fig.note(f"{n:,} calls, each its own transaction; default options (DEDUP_ACTIVE on)")
            # The other task backends of benchmarks.settings, one option changed each.
            for backend, option, note in (
                ("nodedup", "DEDUP_ACTIVE off", ""),
                (
                    "prepared",
                    "PREPARE_ENQUEUE on",
                    "the INSERT prepared from its second call (off by default: PgBouncer < 1.21)",
                ),
            ):
                value = reproq_side.enqueue_single(dbs["reproq"], n, backend=backend)
                fig = results.add(
                    f"enq-single-{backend}",
                    S_ENQ,
                    "reproq",
                    f"`task.enqueue()`, {option}",
                    rate,
                    value,
                )
                fig.refs = ["pgq-enq-single", "raw-enq-single"]
                if note:
                    fig.note(note)
            value = reproq_side.enqueue_bulk(dbs["reproq"], bulk)
            fig = results.add("enq-bulk", S_ENQ, "reproq", "`bulk_enqueue` ×1,000", rate, value)
            fig.refs = ["pgq-enq-bulk", "proc-enq-bulk", "raw-enq-bulk"]
            fig.note(f"{bulk:,} tasks in lists of 1,000; default options")

        guarded(results, "enq-single", "reproq enqueue", ours)

        def table() -> None:
            single, many = reproq_side.task_runs_inserts(dbs["reproq"], n)
            fig = results.add(
                "diag-enq-single",
                S_ENQ,
                "reproq (diagnostic)",
                "the same row into task_runs by psycopg, one `INSERT` per transaction",
                rate,
                single,
            )
            fig.note("no Django, no spec building: the table's indexes and triggers")
            fig.refs = ["pgq-enq-single", "raw-enq-single"]
            fig = results.add(
                "diag-enq-bulk",
                S_ENQ,
                "reproq (diagnostic)",
                "the same rows into task_runs by psycopg, `INSERT … SELECT` ×1,000",
                rate,
                many,
            )
            fig.refs = ["pgq-enq-bulk", "raw-enq-bulk"]

        guarded(results, "diag-enq-single", "task_runs inserts", table)

        def raw() -> None:
            single, many = peers.raw_enqueue(dbs["raw"], n)
            results.add("raw-enq-single", S_ENQ, "raw SQL", "`INSERT` per job", rate, single)
            results.add(
                "raw-enq-bulk", S_ENQ, "raw SQL", "`INSERT … SELECT unnest()` ×1,000", rate, many
            )

        guarded(results, "raw-enq-single", "raw SQL enqueue", raw)

        def pgq() -> None:
            single, many = peers.pgqueuer_enqueue(dbs["pgqueuer"], n)
            results.add(
                "pgq-enq-single", S_ENQ, "pgqueuer", "`Queries.enqueue` scalar", rate, single
            )
            results.add(
                "pgq-enq-bulk", S_ENQ, "pgqueuer", "`Queries.enqueue` lists of 1,000", rate, many
            )

        guarded(results, "pgq-enq-single", "pgqueuer enqueue", pgq)

        def proc() -> None:
            single, many = peers.procrastinate_enqueue(dbs["procrastinate"], n)
            results.add("proc-enq-single", S_ENQ, "procrastinate", "`defer` (sync)", rate, single)
            results.add("proc-enq-bulk", S_ENQ, "procrastinate", "`batch_defer` ×1,000", rate, many)

        guarded(results, "proc-enq-single", "procrastinate enqueue", proc)


def run_throughput(plan: Plan, results: Results, dbs: dict[str, str]) -> None:
    rate = "tasks/s"
    per_job = ["run-raw-job-4", "run-pgq-best"]
    for round_ in range(plan.repeats):
        log(f"throughput, round {round_ + 1}/{plan.repeats}")
        for conns, batch in ((1, 1), (2, 1), (4, 1), (1, 100), (2, 100)):
            key = f"run-raw-{'job' if batch == 1 else 'b100'}-{conns}"

            def raw(key: str = key, conns: int = conns, batch: int = batch) -> None:
                run = peers.raw_throughput(
                    dbs["raw"], connections=conns, batch=batch, count=plan.raw_tasks
                )
                config = f"{'1 job' if batch == 1 else f'{batch} jobs'} per claim, {conns} conn"
                fig = results.add(key, S_RUN, "raw SQL", config, rate, run.rate)
                fig.note(f"N={plan.raw_tasks:,}")
                fig.refs = ["run-raw-job-4"]

            guarded(results, key, "raw SQL loop", raw)
        for procs, batch in ((1, 10), (2, 10), (2, 100)):
            key = f"run-pgq-{procs}x{batch}"

            def pgq(key: str = key, procs: int = procs, batch: int = batch) -> None:
                run = peers.pgqueuer_throughput(
                    dbs["pgqueuer"], processes=procs, batch=batch, count=plan.pgqueuer_tasks
                )
                config = f"{procs} proc × batch {batch}" + (
                    " (default)" if key == "run-pgq-1x10" else ""
                )
                fig = results.add(key, S_RUN, "pgqueuer", config, rate, run.rate)
                fig.note(f"N={plan.pgqueuer_tasks:,}; async handler")
                fig.extra("processes start → exit", run.wall_rate, "/s")
                fig.refs = ["run-raw-job-4"]

            guarded(results, key, "pgqueuer worker", pgq)
        for procs, conc in ((1, 1), (2, 4)):
            key = f"run-proc-{procs}x{conc}"

            def prc(key: str = key, procs: int = procs, conc: int = conc) -> None:
                run = peers.procrastinate_throughput(
                    dbs["procrastinate"],
                    processes=procs,
                    concurrency=conc,
                    count=plan.procrastinate_tasks,
                )
                config = f"{procs} worker × concurrency {conc}" + (
                    " (default)" if conc == 1 else ""
                )
                fig = results.add(key, S_RUN, "procrastinate", config, rate, run.rate)
                fig.note(f"N={plan.procrastinate_tasks:,}; async task")
                fig.extra("processes start → exit", run.wall_rate, "/s")
                fig.refs = ["run-raw-job-4"]

            guarded(results, key, "procrastinate worker", prc)
        # 1, 4 and 16 as issue #8 asks; 64 because throughput still rises past 16 here (each
        # claim takes more tasks), and the targets take the best pool row as pgqueuer's best.
        for conc in (1, 4, 16, 64):
            key = f"run-pool-{conc}"

            def pool(key: str = key, conc: int = conc) -> None:
                run = reproq_side.burst(
                    dbs["reproq"], executor="pool", concurrency=conc, count=plan.pool_tasks
                )
                fig = results.add(
                    key,
                    S_RUN,
                    "reproq",
                    f"`--executor pool --concurrency {conc}`",
                    rate,
                    run.db_rate,
                )
                fig.note(f"N={plan.pool_tasks:,}")
                fig.extra("worker start → exit (includes starting the pool)", run.wall_rate, "/s")
                fig.refs = per_job
                results.add(
                    f"mem-pool-{conc}",
                    S_MEM,
                    "reproq",
                    f"worker process, pool c={conc}, under load (max)",
                    "MB",
                    run.peak.own / 2**20,
                )
                results.add(
                    f"mem-pool-{conc}-children",
                    S_MEM,
                    "reproq",
                    f"pool processes' RSS sum, c={conc}, under load (max)",
                    "MB",
                    run.peak.children / 2**20,
                ).note("RSS counts shared pages in each process")

            guarded(results, key, "reproq pool worker", pool)

        def null_pool() -> None:
            run = reproq_side.burst(
                dbs["reproq"],
                executor="pool",
                concurrency=4,
                count=plan.pool_tasks,
                executor_module="benchmarks.null_executor",
            )
            fig = results.add(
                "diag-null-4",
                S_RUN,
                "reproq (diagnostic)",
                "pool c=4 with `benchmarks.null_executor` (no Django, no task code)",
                rate,
                run.db_rate,
            )
            fig.note("the worker's own ceiling: claim, dispatch over the pipe, complete")
            fig.refs = per_job

        guarded(results, "diag-null-4", "null executor worker", null_pool)

        def executor_alone() -> None:
            rates = reproq_side.executor_per_task(dbs["reproq"], min(plan.pool_tasks, 500))
            fig = results.add(
                "diag-exec-id",
                S_RUN,
                "reproq (diagnostic)",
                "one `reproq_django.executor --serve`, no worker, specs with a result_id",
                rate,
                rates["with_result_id"],
            )
            fig.note("the metadata is read only if the task asks for it (a no-op does not)")
            fig = results.add(
                "diag-exec-noid",
                S_RUN,
                "reproq (diagnostic)",
                "one `reproq_django.executor --serve`, no worker, specs without a result_id",
                rate,
                rates["without_result_id"],
            )
            fig.note("no database access; the task and the protocol alone")

        guarded(results, "diag-exec-id", "executor alone", executor_alone)

        def batched() -> None:
            run = reproq_side.batched_dispatch(dbs["reproq"], plan.pgqueuer_tasks)
            fig = results.add(
                "diag-batched",
                S_RUN,
                "reproq (diagnostic)",
                "batched dispatch, no worker: claims of 100, 2 `executor --serve` processes, "
                "one success statement a batch",
                rate,
                run.rate,
            )
            fig.note(
                f"N={plan.pgqueuer_tasks:,}; no per-task log line, metric, heartbeat or thread: "
                "the floor under a worker that keeps process isolation"
            )
            fig.extra("claiming process's CPU a task", run.parent_cpu * 1e6, " µs")
            fig.extra("pool processes' CPU a task", run.executor_cpu * 1e6, " µs")
            fig.extra("PostgreSQL's CPU a task", run.server_cpu * 1e6, " µs")
            fig.refs = per_job

        guarded(results, "diag-batched", "batched dispatch", batched)

    def children() -> None:
        log("spawn: the child processes alone")
        costs = reproq_side.spawn_child_costs(dbs["reproq"], plan.spawn_tasks[1])
        labels = {
            "bare": "child alone: `python -c 'django.setup(); noop'` (the bare loop's)",
            "executor": "child alone: `python -m reproq_django.executor --payload-json … "
            "--result-id N` (the spawn executor's)",
            "executor_no_id": "child alone: the same without `--result-id`",
        }
        for name, samples in costs.items():
            fig = results.figure(
                f"diag-child-{name}", S_RUN, "reproq (diagnostic)", labels[name], "ms"
            )
            for value in samples:
                fig.sample.add(value)
            fig.note("run one after another, alternating the three")
            if name != "bare":
                fig.refs = ["diag-child-bare"]

    guarded(results, "diag-child-bare", "spawn children", children)
    for round_ in range(plan.spawn_repeats):
        log(f"throughput (spawn), round {round_ + 1}/{plan.spawn_repeats}")
        for conc, count in plan.spawn_tasks.items():
            key = f"run-spawn-{conc}"

            def spawn(key: str = key, conc: int = conc, count: int = count) -> None:
                run = reproq_side.burst(
                    dbs["reproq"], executor="spawn", concurrency=conc, count=count
                )
                fig = results.add(
                    key,
                    S_RUN,
                    "reproq",
                    f"`--executor spawn --concurrency {conc}`",
                    rate,
                    run.db_rate,
                )
                fig.note(f"N={count}")
                fig.extra("worker start → exit", run.wall_rate, "/s")
                fig.refs = [f"run-bare-{min(conc, 4)}"]

            guarded(results, key, "reproq spawn worker", spawn)
            if conc > 4:
                continue
            bkey = f"run-bare-{conc}"

            def bare(key: str = bkey, conc: int = conc, count: int = count) -> None:
                run = peers.bare_spawn(dbs["raw"], dbs["reproq"], concurrency=conc, count=count)
                fig = results.add(
                    key,
                    S_RUN,
                    "bare spawn",
                    f"`python -c 'django.setup(); noop'` per task, c={conc}",
                    rate,
                    run.rate,
                )
                fig.note(f"N={count}; claim/complete by raw SQL; same Django settings")

            guarded(results, bkey, "bare spawn loop", bare)
    # Best-of keys for the targets and ratio columns.
    for prefix, alias in (("run-pgq-", "run-pgq-best"), ("run-pool-", "run-pool-best")):
        best = results.best(prefix)
        if best is not None:
            results.aliases[alias] = best


def run_latency(plan: Plan, results: Results, dbs: dict[str, str]) -> None:
    seconds, rate = plan.latency_seconds, plan.latency_rate
    trickle = f"{rate:g}/s for {seconds:g} s"

    def record(key: str, system: str, config: str, lat: object, refs: list[str]) -> None:
        for pct in ("p50", "p95", "p99"):
            fig = results.add(
                f"{key}-{pct}", S_LAT, system, f"{config}: **{pct}**", "ms", getattr(lat, pct)
            )
            fig.refs = [f"{r}-{pct}" for r in refs]
            fig.note(f"{trickle}, n={lat.count}")  # type: ignore[attr-defined]
            fig.extra("producer achieved", lat.achieved_rate, "/s")  # type: ignore[attr-defined]

    for listen in (True, False):
        key = "lat-listen" if listen else "lat-poll"

        def ours(key: str = key, listen: bool = listen) -> None:
            log(f"latency: reproq pool, {'LISTEN' if listen else '--no-listen'}")
            lat = reproq_side.latency(dbs["reproq"], rate=rate, seconds=seconds, listen=listen)
            config = "pool c=4, " + ("LISTEN (default)" if listen else "`--no-listen` (polling)")
            record(key, "reproq", config, lat, ["lat-pgq", "lat-proc"])
            if listen:
                idle = lat.idle_memory
                results.add(
                    "rss-idle-pool",
                    S_MEM,
                    "reproq",
                    "worker process, pool c=4, idle",
                    "MB",
                    idle["own_rss"],
                ).note(f"PSS {idle['own_pss']:.1f} MB; after warm-up tasks")
                results.add(
                    "rss-idle-pool-children",
                    S_MEM,
                    "reproq",
                    f"pool processes' RSS sum, c=4, idle ({idle['children']:.0f} processes)",
                    "MB",
                    idle["children_rss"],
                ).note(f"PSS sum {idle['children_pss']:.1f} MB")

        guarded(results, f"{key}-p50", "reproq latency", ours)

    def pgq() -> None:
        log("latency: pgqueuer")
        lat = peers.pgqueuer_latency(dbs["pgqueuer"], rate=rate, seconds=seconds)
        record("lat-pgq", "pgqueuer", "default (1 proc, batch 10, LISTEN/NOTIFY)", lat, [])

    guarded(results, "lat-pgq-p50", "pgqueuer latency", pgq)

    def prc() -> None:
        log("latency: procrastinate")
        lat = peers.procrastinate_latency(dbs["procrastinate"], rate=rate, seconds=seconds)
        record("lat-proc", "procrastinate", "default (concurrency 1, LISTEN/NOTIFY)", lat, [])

    guarded(results, "lat-proc-p50", "procrastinate latency", prc)


def run_memory(plan: Plan, results: Results, dbs: dict[str, str]) -> None:
    def spawn_idle() -> None:
        log("memory: idle spawn worker")
        idle = reproq_side.idle_memory(dbs["reproq"], executor="spawn", concurrency=10)
        results.add(
            "rss-idle-spawn",
            S_MEM,
            "reproq",
            "worker process, spawn (default), idle",
            "MB",
            idle["own_rss"],
        ).note(f"PSS {idle['own_pss']:.1f} MB; no task run yet")

    guarded(results, "rss-idle-spawn", "idle memory", spawn_idle)


def run_claim(plan: Plan, results: Results, server: Server) -> None:
    small = plan.claim_rows[0]

    def measure() -> None:
        log(f"claim rate with {' vs '.join(f'{r:,}' for r in plan.claim_rows)} READY rows")
        names = {rows: f"rqbench_claim_{rows}" for rows in plan.claim_rows}
        try:
            dsns = {rows: server.create_db(name) for rows, name in names.items()}
            for dsn in dsns.values():
                apply_reproq_schema(dsn)
            runs = reproq_side.claim_rates(dsns, plan.claims)
        finally:
            for name in names.values():
                server.drop_db(name)
        for rows, run in runs.items():
            key = f"claim-{'small' if rows == small else 'large'}"
            fig = results.add(key, S_CLAIM, "reproq", f"{rows:,} READY rows", "claims/s", run.rate)
            fig.note(
                f"{run.claims:,} × `TaskStore.claim` + `complete_success`, one connection,"
                " in 4 chunks alternating with the other backlog"
            )
            fig.extra("claim alone", run.claim_ms, "ms")
            if key == "claim-large":
                fig.refs = ["claim-small"]

    guarded(results, "claim-large", "claim rate", measure)


def run_startup(plan: Plan, results: Results) -> str:
    """Start-up figures; returns a sentence on which zipapp was measured."""
    log("start-up: building the zipapp from the working tree")
    tmp = Path(tempfile.mkdtemp(prefix="rqbench-pyz-"))
    pyz: Path | None = None
    source = ""
    try:
        built = subprocess.run(
            ["bash", str(ROOT / "build" / "shiv.sh"), "--out-dir", str(tmp)],
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode == 0:
            pyz = Path(built.stdout.strip().splitlines()[-1])
            source = f"{pyz.name} built from this working tree by build/shiv.sh"
        elif startup.default_pyz().is_file():
            pyz = startup.default_pyz()
            source = f"dist/{pyz.name} (build/shiv.sh failed here: {built.stderr.strip()[-200:]})"
        else:
            source = f"no zipapp (build/shiv.sh failed: {built.stderr.strip()[-200:]})"
        if pyz is not None:
            source += f", {pyz.stat().st_size / 2**20:.1f} MB"
        log("start-up: timing")
        for name, samples in startup.measure(pyz, plan.startup_runs, plan.startup_cold_runs):
            key = "startup-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            for value in samples:
                results.add(
                    key,
                    S_START,
                    "reproq" if "pass" not in name else "python",
                    name,
                    "ms",
                    value * 1000,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return source


# --- targets --------------------------------------------------------------------------------------

TARGETS = [
    Target("pool no-op throughput ≥ pgqueuer's best", "run-pool-best", "run-pgq-best", 1.0),
    Target(
        "pool no-op throughput ≥ 0.5 × raw one-at-a-time SQL", "run-pool-best", "run-raw-job-4", 0.5
    ),
    Target("spawn ≥ 0.9 × bare spawn-with-Django, concurrency 1", "run-spawn-1", "run-bare-1", 0.9),
    Target("spawn ≥ 0.9 × bare spawn-with-Django, concurrency 4", "run-spawn-4", "run-bare-4", 0.9),
    Target("enqueue→start p50 ≤ pgqueuer's", "lat-listen-p50", "lat-pgq-p50", 1.0, True),
    Target("single enqueue through Django ≥ pgqueuer single", "enq-single", "pgq-enq-single", 1.0),
    Target(
        "single enqueue through Django, PREPARE_ENQUEUE on ≥ pgqueuer single",
        "enq-single-prepared",
        "pgq-enq-single",
        1.0,
    ),
    Target("bulk enqueue through Django ≥ pgqueuer bulk", "enq-bulk", "pgq-enq-bulk", 1.0),
    Target("claim rate at the large backlog ≥ 0.8 × at 10k", "claim-large", "claim-small", 0.8),
    Target("idle worker RSS ≤ 60 MB (spawn)", "rss-idle-spawn", None, 1.0, True, 60.0),
    Target(
        "idle worker RSS ≤ 60 MB (pool, the worker process)", "rss-idle-pool", None, 1.0, True, 60.0
    ),
    Target(
        "`reproq --help` ≤ 150 ms (zipapp, warm)", "startup-pyz-help-warm", None, 1.0, True, 150.0
    ),
    Target(
        "`reproq --help` ≤ 150 ms (installed package)",
        "startup-python-m-reproq-cli-help-installed-package",
        None,
        1.0,
        True,
        150.0,
    ),
]


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small N, one round (~3 min)")
    parser.add_argument("--only", default="", help=f"comma list of: {', '.join(SECTIONS)}")
    parser.add_argument("--output", type=Path, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else ROOT / "BENCHMARKS.md")
    if args.no_write:
        output = None

    started = time.perf_counter()
    results = Results()
    log("starting the embedded PostgreSQL")
    server = Server.start()
    try:
        facts = machine_facts(server)
        dbs: dict[str, str] = {}
        if {"enqueue", "throughput", "latency", "memory"} & set(only):
            dbs["reproq"] = server.create_db("rqbench_reproq")
            apply_reproq_schema(dbs["reproq"])
            reproq_side.setup_django(dbs["reproq"])
            dbs["raw"] = server.create_db("rqbench_raw")
            peers.raw_setup(dbs["raw"])
            dbs["pgqueuer"] = server.create_db("rqbench_pgqueuer")
            guarded(
                results,
                "pgq-setup",
                "pgqueuer install",
                lambda: peers.pgqueuer_setup(dbs["pgqueuer"]),
            )
            dbs["procrastinate"] = server.create_db("rqbench_procrastinate")
            guarded(
                results,
                "proc-setup",
                "procrastinate schema",
                lambda: peers.procrastinate_setup(dbs["procrastinate"]),
            )
        if "enqueue" in only:
            run_enqueue(plan, results, dbs)
        if "throughput" in only:
            run_throughput(plan, results, dbs)
        if "latency" in only:
            run_latency(plan, results, dbs)
        if "memory" in only:
            run_memory(plan, results, dbs)
        if "claim" in only:
            run_claim(plan, results, server)
        pyz_source = run_startup(plan, results) if "startup" in only else ""
        load = os.getloadavg()
        facts["load at end"] = " / ".join(f"{v:.2f}" for v in load) + " (1/5/15 min)"
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    facts["run"] = (
        f"`python -m benchmarks{' --quick' if args.quick else ''}"
        f"{' --only ' + args.only if args.only else ''}`, {elapsed / 60:.1f} min; "
        f"{plan.repeats} round(s) of the fast measurements, {plan.spawn_repeats} of spawn"
    )

    summary = "\n\n".join(
        [
            "### Machine\n\n" + report.facts_list(facts),
            "### Targets (issue #8)\n\n" + report.targets_table(results, TARGETS),
            report.results_tables(_without(results, S_START)),
        ]
        + (
            ["### Not measured\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in results.errors.items())]
            if results.errors
            else []
        )
    )
    startup_block = ""
    if pyz_source:
        startup_block = (
            f"{pyz_source}; Python {facts['python']}, {facts['cpus']}, "
            f"{plan.startup_runs} runs (cold: {plan.startup_cold_runs}), measured by "
            "`python -m benchmarks` with `benchmarks/startup.py`:\n\n"
            + report.results_tables(_only(results, S_START)).split("\n", 2)[2]
        )
    print(summary)
    if startup_block:
        print("\n### Start-up\n\n" + startup_block)
    if output is not None:
        blocks = {"summary": summary}
        if startup_block:
            blocks["startup"] = startup_block
        report.write(output, blocks)
        log(f"wrote {output}")
    log(f"done in {elapsed / 60:.1f} min")


def _without(results: Results, section: str) -> Results:
    copy = Results()
    copy.figures = {k: f for k, f in results.figures.items() if f.section != section}
    copy.errors = results.errors
    copy.aliases = results.aliases
    return copy


def _only(results: Results, section: str) -> Results:
    copy = Results()
    copy.figures = {k: f for k, f in results.figures.items() if f.section == section}
    return copy


if __name__ == "__main__":
    main()
