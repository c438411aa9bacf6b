"""Prometheus metrics (go-worker.md §8.2): names, types, labels and buckets of the Go worker.

The only module that imports prometheus_client. Everything lives in a registry of our own,
with the client's process, platform and GC collectors in place of Go's ``go_*`` series.
Runner metrics are recorded whether or not the HTTP server runs; the database collector
(``Collector``) runs only with the server, every five seconds.

Beyond the Go worker: ``reproq_task_latency_seconds`` (enqueue to finish, by queue and task
path) and a CPU gauge that is actually set (the Go worker declares it and never writes it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    exposition,
    gc_collector,
    platform_collector,
    process_collector,
)
from prometheus_client.openmetrics import exposition as openmetrics

from reproq_cli.core.logs import Logger
from reproq_cli.db.tasks import METRIC_GROUPS, TaskStore
from reproq_cli.errors import DatabaseError
from reproq_cli.process import rss_bytes

COLLECT_INTERVAL = 5.0
COLLECT_TIMEOUT = 10.0

# The Go client's default buckets (prometheus_client's add .075, .75 and 7.5).
GO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
QUEUE_WAIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

SUCCESS = "success"
FAILURE = "failure"


class Metrics:
    def __init__(self) -> None:
        # The Go client exports no *_created series; an exporter's scrape shows the same set.
        disable_created_metrics()
        r = self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)

        self.processed = Counter(
            "reproq_tasks_processed_total",
            "Tasks processed, by outcome.",
            ["status", "queue"],
            registry=r,
        )
        self.claimed = Counter(
            "reproq_tasks_claimed_total", "Tasks claimed.", ["queue"], registry=r
        )
        self.completed = Counter(
            "reproq_tasks_completed_total",
            "Task attempts completed, by outcome.",
            ["queue", "status"],
            registry=r,
        )
        self.claim_duration = Histogram(
            "reproq_claim_duration_seconds",
            "Time spent in claim attempts.",
            ["queue"],
            buckets=GO_BUCKETS,
            registry=r,
        )
        self.exec_duration = Histogram(
            "reproq_exec_duration_seconds",
            "Time spent executing tasks.",
            ["queue"],
            buckets=GO_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "reproq_queue_wait_duration_seconds",
            "Time from enqueue to claim.",
            ["queue"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.db_operation = Histogram(
            "reproq_db_operation_duration_seconds",
            "Database operation latency.",
            ["operation"],
            buckets=GO_BUCKETS,
            registry=r,
        )
        self.task_latency = Histogram(
            "reproq_task_latency_seconds",
            "Time from enqueue to the end of the attempt that finished the task.",
            ["queue", "task_path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cpu = Gauge(
            "reproq_worker_cpu_usage_percent",
            "Worker process CPU use over the last collection interval (100 = one core).",
            registry=r,
        )
        self.memory = Gauge(
            "reproq_worker_mem_usage_bytes", "Worker process resident set size.", registry=r
        )
        self.pool_in_use = Gauge(
            "reproq_db_pool_connections_in_use", "Database connections handed out.", registry=r
        )
        self.pool_waits = Counter(
            "reproq_db_pool_wait_count_total",
            "Connection requests that had to wait for a free connection.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "reproq_queue_depth", "Tasks READY or waiting (all queues).", registry=r
        )
        self.tasks_running = Gauge("reproq_tasks_running", "Tasks RUNNING.", registry=r)
        self.concurrency_in_use = Gauge(
            "reproq_concurrency_in_use", "Task slots in use across workers.", registry=r
        )
        self.workers = Gauge("reproq_workers", "Registered workers.", registry=r)
        self.concurrency_limit = Gauge(
            "reproq_concurrency_limit", "Sum of registered workers' concurrency.", registry=r
        )
        self.queues_paused = Gauge("reproq_queues_paused", "Paused queues.", registry=r)
        self.concurrency_blocked = Gauge(
            "reproq_concurrency_blocked_tasks",
            "READY tasks held back by a concurrency_key at its limit.",
            registry=r,
        )

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body and its content type; OpenMetrics when the client asks."""
        if "application/openmetrics-text" in accept:
            return openmetrics.generate_latest(self.registry), openmetrics.CONTENT_TYPE_LATEST
        return exposition.generate_latest(self.registry), exposition.CONTENT_TYPE_LATEST

    # --- runner side ---------------------------------------------------------------------------

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: labels() validates and locks on every call,
        and the worker records about eight samples per task."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_claim(self, queue: str, seconds: float) -> None:
        self._child(self.claim_duration, queue).observe(seconds)
        self._child(self.db_operation, "claim").observe(seconds)

    def task_claimed(self, queue: str, waited: float) -> None:
        self._child(self.claimed, queue).inc()
        self._child(self.queue_wait, queue).observe(max(waited, 0.0))

    def observe_db(self, operation: str, seconds: float) -> None:
        self._child(self.db_operation, operation).observe(seconds)

    def observe_exec(self, queue: str, seconds: float) -> None:
        self._child(self.exec_duration, queue).observe(seconds)

    def attempt_finished(self, queue: str, status: str, *, processed: bool = True) -> None:
        """Infrastructure errors count as completed but not processed, as in the Go worker."""
        self._child(self.completed, queue, status).inc()
        if processed:
            self._child(self.processed, status, queue).inc()

    def task_finished(self, queue: str, task_path: str, latency: float) -> None:
        self._child(self.task_latency, queue, task_path or "unknown").observe(max(latency, 0.0))


class Collector:
    """Database gauges, pool figures, RSS and CPU, refreshed every COLLECT_INTERVAL."""

    def __init__(self, metrics: Metrics, store: TaskStore, log: Logger) -> None:
        self.metrics = metrics
        self.store = store
        self.log = log
        self._last_queued = 0
        self._last_cpu: tuple[float, float] | None = None

    def collect(self) -> None:
        m = self.metrics
        values: dict[str, dict[str, int]] = {}
        for name, warning in METRIC_GROUPS:
            try:
                values[name] = self.store.metric_group(name, COLLECT_TIMEOUT)
            except DatabaseError as exc:
                self.log.warn(warning, error=str(exc))
        if "metrics_queue" in values:
            m.queue_depth.set(values["metrics_queue"].get("depth", 0))
            running = values["metrics_queue"].get("running", 0)
            m.tasks_running.set(running)
            m.concurrency_in_use.set(running)
        if "metrics_workers" in values:
            m.workers.set(values["metrics_workers"].get("workers", 0))
            m.concurrency_limit.set(values["metrics_workers"].get("concurrency", 0))
        if "metrics_queue_controls" in values:
            m.queues_paused.set(values["metrics_queue_controls"].get("paused", 0))
        if "metrics_concurrency_blocked" in values:
            m.concurrency_blocked.set(values["metrics_concurrency_blocked"].get("blocked", 0))
        self.sample_process()

    def sample_process(self) -> None:
        m = self.metrics
        in_use, queued = self.store.pool_usage()
        m.pool_in_use.set(in_use)
        # The pool's figure is cumulative; adding only the growth keeps the counter honest.
        if queued > self._last_queued:
            m.pool_waits.inc(queued - self._last_queued)
        self._last_queued = queued
        rss = rss_bytes()
        if rss:
            m.memory.set(rss)
        times = os.times()
        now = (time.monotonic(), times.user + times.system)
        if self._last_cpu is not None:
            wall = now[0] - self._last_cpu[0]
            if wall > 0:
                m.cpu.set(round(100.0 * (now[1] - self._last_cpu[1]) / wall, 2))
        self._last_cpu = now

    def start(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while True:
                started = time.monotonic()
                self.collect()
                if stop.wait(max(COLLECT_INTERVAL - (time.monotonic() - started), 0.0)):
                    return

        thread = threading.Thread(target=loop, name="reproq-metrics", daemon=True)
        thread.start()
        return thread


def timed[R](observe: Callable[[float], None], action: Callable[[], R]) -> R:
    """Run ``action`` and report its duration, also when it raises."""
    started = time.perf_counter()
    try:
        return action()
    finally:
        observe(time.perf_counter() - started)
