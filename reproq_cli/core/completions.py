"""Group commit for successes: task threads hand their result to one writer, which marks
every success that has arrived meanwhile in one transaction.

Nothing waits on purpose: while one batch is being written, the next one gathers, so a busy
worker commits (and its server flushes the WAL) once per batch rather than once per task,
and an idle one writes each success at once. Each success still learns its own outcome
(written, lease lost, or the error that stopped the batch), so retries and logging work
exactly as with single writes. The worker is told through a callback, on the writer's thread:
no task thread waits for a commit.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable

from reproq_cli.db.tasks import SuccessConnection, TaskStore
from reproq_cli.models import ClaimedTask

MAX_BATCH = 100

# True: committed; False: the lease was lost; an exception: what stopped the batch.
type Outcome = bool | Exception
_Item = tuple[ClaimedTask, str | None, str | None, Callable[[Outcome], None]]


class SuccessWriter:
    def __init__(
        self, store: TaskStore, max_batch: int = MAX_BATCH, *, own_connection: bool = True
    ) -> None:
        """``own_connection``: write through a connection of the writer's own, its timeout
        set once for the session (SuccessConnection), rather than through the shared pool."""
        self.store = store
        # Used by the writer thread alone.
        self.connection: TaskStore | SuccessConnection = (
            SuccessConnection(store) if own_connection else store
        )
        self.max_batch = max_batch
        self.batches = 0
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="reproq-successes", daemon=True)
        self._thread.start()

    def submit(
        self,
        task: ClaimedTask,
        return_json: str | None,
        logs_uri: str | None,
        done: Callable[[Outcome], None],
    ) -> None:
        """Queue a success; ``done`` gets its outcome on the writer's thread, after the
        commit, and must not block: the next batch waits for it."""
        self._queue.put((task, return_json, logs_uri, done))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        if not self._thread.is_alive() and isinstance(self.connection, SuccessConnection):
            self.connection.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._write(batch)
                    return
                batch.append(more)
            self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        self.batches += 1
        try:
            written = self.connection.complete_successes([(t, r, u) for t, r, u, _ in batch])
        except Exception as exc:  # every waiter sees it and retries on its own
            if len(batch) > 1 and getattr(exc, "refused_data", False):
                # One task's value (a return value jsonb refuses) fails the whole batch,
                # and its retries would batch with others again: each alone, so only that
                # task sees the error.
                for item in batch:
                    self._write([item])
                return
            for *_, done in batch:
                _tell(done, exc)
            return
        for (*_, done), ok in zip(batch, written, strict=True):
            _tell(done, ok)


def _tell(done: Callable[[Outcome], None], outcome: Outcome) -> None:
    try:
        done(outcome)
    except Exception:  # a bug in a callback must not stop every later success being written
        traceback.print_exc()
