"""The periodic ``reproq memory usage`` log line of worker and beat (go-worker.md §13.3)."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

from reproq_cli.core.logs import Logger
from reproq_cli.process import memory_log_interval, rss_bytes, wait_or_stop

ENV = "REPROQ_MEMORY_LOG_INTERVAL"


def start_memory_logger(
    log: Logger, stop: threading.Event, extra: Callable[[], dict[str, Any]] | None = None
) -> None:
    """Log memory use now and every REPROQ_MEMORY_LOG_INTERVAL until ``stop`` is set.

    Python stand-ins for Go's heap fields: ``rss_bytes`` (as Go on Linux), gc generation
    counts and the thread count.
    """
    raw = os.environ.get(ENV, "")
    interval, error = memory_log_interval(raw)
    if interval < 0:
        log.warn(
            "Invalid REPROQ_MEMORY_LOG_INTERVAL; skipping memory logger", value=raw, error=error
        )
        return
    if interval == 0:
        return

    def loop() -> None:
        while True:
            counts = gc.get_count()
            log.info(
                "reproq memory usage",
                rss_bytes=rss_bytes(),
                gc_gen0=counts[0],
                gc_gen1=counts[1],
                gc_gen2=counts[2],
                threads=threading.active_count(),
                **(extra() if extra else {}),
            )
            if wait_or_stop(stop, interval):
                return

    threading.Thread(target=loop, name="reproq-memory-logger", daemon=True).start()
