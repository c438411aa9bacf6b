"""Periodic memory logging for Django processes (reproq-django.md §7).

With REPROQ_MEMORY_LOG_INTERVAL set (a duration such as ``1m``, or seconds), one daemon thread
per process logs ``reproq_memory_usage`` to the ``reproq_django.memlog`` logger.
"""

from __future__ import annotations

import logging
import os
import resource
import threading

from reproq_cli.process import (
    fork_server_requested,
    memory_log_interval,
    rss_bytes,
    wait_or_stop,
)

logger = logging.getLogger("reproq_django.memlog")
_started = threading.Event()


def log_once(interval: float) -> None:
    logger.info(
        "reproq_memory_usage role=%s pid=%s rss_bytes=%s ru_maxrss_bytes=%s threads=%s "
        "interval_s=%s",
        os.environ.get("REPROQ_PROCESS_ROLE", "unknown"),
        os.getpid(),
        rss_bytes(),
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threading.active_count(),
        interval,
    )


def start_memory_logger() -> bool:
    """Start the logger thread once per process; False when disabled or already running."""
    interval, _ = memory_log_interval(os.environ.get("REPROQ_MEMORY_LOG_INTERVAL", ""))
    if interval <= 0 or _started.is_set():
        return False
    _started.set()
    # A fork keeps only the thread that forked: the pool's fork server sets Django up once and
    # forks the pool processes, and each of those logs its own memory. The server itself runs
    # no thread of ours, so that no fork copies a lock one of them held (its memory, which
    # nothing changes, goes unlogged).
    os.register_at_fork(after_in_child=lambda: _start_thread(interval))
    if not fork_server_requested():
        _start_thread(interval)
    return True


def _start_thread(interval: float) -> None:
    def loop() -> None:
        stop = threading.Event()
        while True:
            log_once(interval)
            wait_or_stop(stop, interval)

    threading.Thread(target=loop, name="reproq-memory-logger", daemon=True).start()
