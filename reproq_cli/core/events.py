"""Task events for ``/events`` (go-worker.md §8.4): a replay ring and live subscribers.

The worker publishes one event per task transition. The broker keeps the last
``REPLAY_SIZE`` events for clients that connect later and hands each new event to every
subscriber's bounded queue; a subscriber that does not keep up loses events rather than
slowing the worker down.
"""

from __future__ import annotations

import collections
import datetime as dt
import queue
import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

from reproq_cli.spec import go_json_string, go_time

REPLAY_SIZE = 200
SUBSCRIBER_CAPACITY = 50

Level = Literal["info", "warn", "error"]


@dataclass(frozen=True)
class Event:
    level: Level
    type: str
    msg: str
    queue: str = ""
    task_id: int = 0
    worker_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    ts: str = field(default_factory=lambda: go_time(dt.datetime.now(), digits=None))

    def to_json(self) -> str:
        """The line the Go worker's json.Marshal writes: its field order and omissions, the
        metadata map's keys sorted, strings escaped as Go escapes them (``<``, ``>``, ``&``,
        U+2028/U+2029), so a client comparing bytes sees the same event."""
        fields = [("ts", go_json_string(self.ts)), ("level", go_json_string(self.level))]
        fields += [("type", go_json_string(self.type)), ("msg", go_json_string(self.msg))]
        if self.queue:
            fields.append(("queue", go_json_string(self.queue)))
        if self.task_id:
            fields.append(("task_id", str(self.task_id)))
        if self.worker_id:
            fields.append(("worker_id", go_json_string(self.worker_id)))
        if self.metadata:
            # str(): a stray non-string value must not stop the worker from publishing.
            pairs = (
                f"{go_json_string(str(key))}:{go_json_string(str(value))}"
                for key, value in sorted(self.metadata.items())
            )
            fields.append(("metadata", "{" + ",".join(pairs) + "}"))
        return "{" + ",".join(f'"{name}":{value}' for name, value in fields) + "}"


@dataclass(frozen=True)
class EventFilter:
    queue: str = ""
    worker_id: str = ""
    # None: no task_id filter. A given task_id, 0 included, must match, as in the Go worker
    # (?task_id=0 names a task that does not exist: no events, not every event).
    task_id: int | None = None

    def matches(self, event: Event) -> bool:
        return (
            (not self.queue or event.queue == self.queue)
            and (not self.worker_id or event.worker_id == self.worker_id)
            and (self.task_id is None or event.task_id == self.task_id)
        )


class EventSink(Protocol):
    def publish(self, event: Event) -> None: ...


class DiscardEvents:
    """Low-memory mode and workers without an HTTP server: events go nowhere."""

    def publish(self, event: Event) -> None:
        return None


class Subscription:
    def __init__(self, broker: EventBroker, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self.queue: queue.Queue[Event] = queue.Queue(maxsize=SUBSCRIBER_CAPACITY)
        self.dropped = 0
        self._broker = broker

    def offer(self, event: Event) -> None:
        if not self.filter.matches(event):
            return
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def next(self, timeout: float) -> Event | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._broker.unsubscribe(self)


class EventBroker:
    def __init__(self, replay_size: int = REPLAY_SIZE) -> None:
        self._ring: collections.deque[Event] = collections.deque(maxlen=replay_size)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()

    def publish(self, event: Event) -> None:
        with self._lock:
            self._ring.append(event)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def subscribe(self, event_filter: EventFilter) -> tuple[Subscription, list[Event]]:
        """A live subscription plus the buffered events it matches, oldest first.

        Taken under one lock so no event falls between the replay and the live stream.
        """
        subscription = Subscription(self, event_filter)
        with self._lock:
            replay = [event for event in self._ring if event_filter.matches(event)]
            self._subscribers.add(subscription)
        return subscription, replay

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)
