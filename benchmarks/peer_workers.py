"""Worker processes of the peer baselines, started by the harness (one process each):

    python -m benchmarks.peer_workers rawsql --dsn DSN --batch N
    python -m benchmarks.peer_workers pgqueuer --dsn DSN --batch N [--expect N] --out FILE
    python -m benchmarks.peer_workers procrastinate --concurrency N [--wait]

Each drives its system through its documented public API and exits once its queue is empty
(or, with --expect / --wait, once told to); timings live in the database or in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

# --- raw SQL: the smallest possible claim loop ----------------------------------------------------

RAW_SCHEMA = """
CREATE TABLE bench_jobs (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'ready',
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX bench_jobs_ready ON bench_jobs (id) WHERE status = 'ready';
"""

RAW_CLAIM_ONE = """
UPDATE bench_jobs SET status = 'running', started_at = now()
WHERE id = (SELECT id FROM bench_jobs WHERE status = 'ready'
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, payload
"""
RAW_DONE_ONE = "UPDATE bench_jobs SET status = 'done', finished_at = now() WHERE id = %s"
RAW_CLAIM_MANY = """
UPDATE bench_jobs SET status = 'running', started_at = now()
WHERE id = ANY(ARRAY(SELECT id FROM bench_jobs WHERE status = 'ready'
                     ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING id, payload
"""
RAW_DONE_MANY = "UPDATE bench_jobs SET status = 'done', finished_at = now() WHERE id = ANY(%s)"


def rawsql(dsn: str, batch: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if batch <= 1:
            while (row := conn.execute(RAW_CLAIM_ONE).fetchone()) is not None:
                conn.execute(RAW_DONE_ONE, (row[0],))
        else:
            while rows := conn.execute(RAW_CLAIM_MANY, (batch,)).fetchall():
                conn.execute(RAW_DONE_MANY, ([r[0] for r in rows],))


# --- pgqueuer -------------------------------------------------------------------------------------


async def pgqueuer_worker(dsn: str, batch: int, expect: int, out: str) -> None:
    import psycopg
    from pgqueuer import Job, QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    qm = QueueManager(Queries(PsycopgDriver(conn)))
    stats: dict[str, Any] = {"first": None, "last": None, "count": 0, "latency_ms": []}

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        now = time.time()
        if stats["first"] is None:
            stats["first"] = now
        if job.payload != b"warm-up":
            stats["latency_ms"].append((now - job.created.timestamp()) * 1000)
        stats["count"] += 1
        stats["last"] = time.time()
        if expect and stats["count"] >= expect:
            qm.shutdown.set()

    mode = QueueExecutionMode.continuous if expect else QueueExecutionMode.drain
    await qm.run(batch_size=batch, mode=mode)
    await conn.close()
    with open(out, "w") as handle:
        json.dump(stats, handle)


# --- procrastinate --------------------------------------------------------------------------------


def procrastinate_worker(concurrency: int, wait: bool) -> None:
    from benchmarks.procrastinate_app import app

    app.run_worker(queues=["default"], concurrency=concurrency, wait=wait)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_workers")
    parser.add_argument("system", choices=("rawsql", "pgqueuer", "procrastinate"))
    parser.add_argument("--dsn", default="")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.system == "rawsql":
        rawsql(args.dsn, args.batch)
    elif args.system == "pgqueuer":
        asyncio.run(pgqueuer_worker(args.dsn, args.batch, args.expect, args.out))
    else:
        procrastinate_worker(args.concurrency, args.wait)


if __name__ == "__main__":
    main()
