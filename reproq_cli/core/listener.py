"""Wake the worker's claim loop when a task becomes READY in one of its queues.

A background thread LISTENs on its own connection and calls ``wake`` for each notification
about one of the worker's queues. Polling remains the fallback, so the listener may fail
without harm: when its connection drops it warns once, reconnects with backoff and never
stops the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from reproq_cli.core.logs import Logger
from reproq_cli.db.notify import ANY_QUEUE, CHANNEL, ReadyListener
from reproq_cli.errors import ReproqError

# How long one wait blocks: the longest a stop request waits for the thread to notice.
WAIT_SLICE = 0.5
RECONNECT_BACKOFF = (0.5, 30.0)  # first and longest delay between reconnect attempts


class NotificationSource(Protocol):
    def wait(self, timeout: float) -> list[str]: ...

    def close(self) -> None: ...


class Listener:
    def __init__(
        self,
        connect: Callable[[], NotificationSource],
        queues: Iterable[str],
        wake: Callable[[], None],
        log: Logger,
    ) -> None:
        self._connect = connect
        self._queues = frozenset(queues)
        self._wake = wake
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reproq-listener", daemon=True)
        self.connected = threading.Event()  # set while LISTEN is active (tests, health)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2 * WAIT_SLICE) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = RECONNECT_BACKOFF[0]
        lost = False  # warned about a lost connection and not yet reconnected
        while not self._stop.is_set():
            try:
                source = self._connect()
            except Exception as exc:  # anything: the worker must outlive its listener
                if not lost:
                    self._warn("LISTEN connection failed; polling until it connects", exc)
                    lost = True
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_BACKOFF[1])
                continue
            self.connected.set()
            if lost:
                self._log.info("LISTEN connection restored", channel=CHANNEL)
                lost = False
                # Tasks made READY while nobody listened sent notifications nobody got: one
                # claim round now finds them instead of the next poll. (At start-up the claim
                # loop polls first anyway.)
                self._wake()
            connected_at = time.monotonic()
            try:
                self._listen(source)
            except Exception as exc:
                self._warn("LISTEN connection lost; polling until it reconnects", exc)
                lost = True
            finally:
                self.connected.clear()
                source.close()
            if lost:
                # A connection that keeps dropping right after it is made backs off too.
                if time.monotonic() - connected_at > RECONNECT_BACKOFF[1]:
                    delay = RECONNECT_BACKOFF[0]
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_BACKOFF[1])

    def _listen(self, source: NotificationSource) -> None:
        while not self._stop.is_set():
            payloads = source.wait(WAIT_SLICE)
            if any(p in self._queues or p == ANY_QUEUE for p in payloads):
                self._wake()

    def _warn(self, message: str, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, ReproqError) else repr(exc)
        self._log.warn(message, channel=CHANNEL, error=reason)


def start_listener(
    dsn: str, *, worker_id: str, queues: Iterable[str], wake: Callable[[], None], log: Logger
) -> Listener:
    """A started listener for ``queues`` on its own connection to ``dsn``."""

    def connect() -> NotificationSource:
        return ReadyListener.open(dsn, application_name=f"reproq listener {worker_id}")

    listener = Listener(connect, queues, wake, log)
    listener.start()
    return listener
