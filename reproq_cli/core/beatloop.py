"""The beat process: lead (one beat per database runs passes), pass, sleep, repeat.

Leadership is a session advisory lock: a second beat waits and takes over when the leader's
connection goes away (go-worker.md §0.8 notes the Go beat has no such guarantee).
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
from typing import Any

from reproq_cli.core.beat import PassStopped, run_pass, summarize
from reproq_cli.core.logs import Logger
from reproq_cli.core.memory import start_memory_logger
from reproq_cli.errors import DatabaseError
from reproq_cli.process import wait_or_stop


class Beat:
    def __init__(self, session: Any, log: Logger, *, interval: float, once: bool) -> None:
        self.session = session
        self.log = log
        self.interval = interval
        self.once = once
        self._stop = threading.Event()

    def install_signal_handlers(self) -> None:
        def handler(_signum: int, _frame: Any) -> None:
            self._stop.set()
            # Off the handler's thread: a cancel request is a connection of its own.
            threading.Thread(
                target=self.session.interrupt, name="interrupt-pass", daemon=True
            ).start()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def one_pass(self) -> None:
        try:
            result = run_pass(self.session, dt.datetime.now(dt.UTC), self._stop.is_set)
        except (DatabaseError, PassStopped) as exc:
            if isinstance(exc, DatabaseError) and not self._stop.is_set():
                self.log.error("Failed to enqueue periodic tasks", error=str(exc), enqueued=0)
            else:  # stopping: a database error is then most likely interrupt()'s cancel
                self.log.warn(
                    "Beat pass rolled back: shutting down", hint="the next pass enqueues it"
                )
            return
        for message in result.errors:
            # The summary below keeps the Go worker's one line with the last error; each row's
            # own reason (it names the row) is only here.
            self.log.warn("Periodic task not enqueued", error=message)
        if result.errors:
            self.log.error(
                "Failed to enqueue periodic tasks",
                error=summarize(result.errors),
                enqueued=result.enqueued,
            )
        if result.enqueued:
            self.log.info("Enqueued periodic tasks", count=result.enqueued, new=result.inserted)

    def run(self) -> None:
        self.log.info(
            "Starting reproq beat", interval=dt.timedelta(seconds=self.interval), once=self.once
        )
        start_memory_logger(self.log, self._stop)
        if self.once:
            # A single pass is safe beside a leader: due rows are locked with SKIP LOCKED and
            # an active identical spec is never inserted twice.
            self.one_pass()
            self.log.info("Beat run complete", once=True)
            return
        leading = False
        announced_standby = False
        while not self._stop.is_set():
            if self.session.broken:
                # The lost session took the leader lock with it: reconnect, then lead again
                # only if no other beat took over meanwhile.
                leading = False
                try:
                    self.session.reconnect()
                    self.log.info("Reconnected to the database")
                except DatabaseError as exc:
                    self.log.error("Database unavailable; retrying", error=str(exc))
                    self._stop.wait(min(self.interval, 5.0))
                    continue
            if not leading:
                try:
                    leading = self.session.try_lead()
                except DatabaseError as exc:
                    self.log.error("Beat leadership check failed", error=str(exc))
                if leading:
                    self.log.info("Beat is the leader for this database")
                else:
                    if not announced_standby:
                        self.log.info("Another beat leads; waiting to take over")
                        announced_standby = True
                    self._stop.wait(min(self.interval, 5.0))
                    continue
            self.one_pass()
            wait_or_stop(self._stop, self.interval)
        self.log.info("Shutting down beat")
