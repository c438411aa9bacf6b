"""The worker: claim → execute → complete, with leases, reclaim, registry and shutdown.

One thread per running task (bounded by ``concurrency``) supervises its child process; the
main thread claims. Behaviour follows go-worker.md §4-§6, §8.1, §13, with the fixes listed
in docs/compat.md: the row's timeout is honoured, stops signal the whole process group, no
failure retries forever, the first signal drains instead of killing.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from reproq_cli import __version__
from reproq_cli.config import Config, is_truthy
from reproq_cli.core import policy
from reproq_cli.core.completions import SuccessWriter
from reproq_cli.core.events import DiscardEvents, Event, EventBroker, EventSink, Level
from reproq_cli.core.executor import (
    ExecResult,
    ExecSpec,
    InfraError,
    executor_problem,
    resource_limit_hit,
    run_attempt,
    signal_description,
)
from reproq_cli.core.httpserver import HttpSettings, start_http
from reproq_cli.core.listener import start_listener
from reproq_cli.core.logfiles import make_private_dirs
from reproq_cli.core.logs import Logger
from reproq_cli.core.memory import start_memory_logger
from reproq_cli.core.metrics import FAILURE, SUCCESS, Collector, Metrics, timed
from reproq_cli.core.pool import ExecutorPool
from reproq_cli.core.rayexec import LOST, RayRunner, parse_runtime_env, ray_installed
from reproq_cli.db.tasks import FencingError, TaskStore
from reproq_cli.errors import ConfigError, DatabaseError
from reproq_cli.models import ClaimedTask, Failure
from reproq_cli.process import wait_or_stop
from reproq_cli.spec import go_time

REGISTRY_INTERVAL = 30.0
HEALTH_TIMEOUT = 5.0
# A --burst run gives up after this many polls in a row fail (scripts must not hang forever).
BURST_MAX_POLL_ERRORS = 5
COMPLETION_RETRIES = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: str
    process_role: str
    queues: list[str]
    allowed_task_modules: list[str]
    concurrency: int
    lease_seconds: int
    heartbeat_seconds: int
    reclaim_interval_seconds: int
    poll_min_backoff: float
    poll_max_backoff: float
    exec_spec: ExecSpec
    logs_dir: str
    exec_timeout: float
    max_attempts_default: int
    shutdown_timeout: float
    priority_aging_factor: float
    burst: bool = False
    max_tasks: int = 0
    low_memory: bool = False
    listen: bool = True  # LISTEN for NOTIFY wake-ups (off: --no-listen)
    executor: str = "spawn"
    pool_max_tasks: int = 1000
    pool_max_memory_mb: int = 512
    pool_fork: bool = True
    ray_address: str = "auto"
    ray_runtime_env: str = ""

    @classmethod
    def from_config(
        cls, config: Config, *, burst: bool, max_tasks: int, env: dict[str, str]
    ) -> WorkerSettings:
        w = config.section("worker")
        return cls(
            worker_id=w["worker_id"],
            process_role=w["process_role"],
            queues=list(w["queues"]),
            allowed_task_modules=list(w["allowed_task_modules"]),
            concurrency=w["concurrency"],
            lease_seconds=w["lease_seconds"],
            heartbeat_seconds=w["heartbeat_seconds"],
            reclaim_interval_seconds=w["reclaim_interval_seconds"],
            poll_min_backoff=w["poll_min_backoff"],
            poll_max_backoff=w["poll_max_backoff"],
            exec_spec=ExecSpec(
                python_bin=w["python_bin"],
                executor_module=w["executor_module"],
                payload_mode=w["payload_mode"],
                max_payload_bytes=w["max_payload_bytes"],
                max_stdout_bytes=w["max_stdout_bytes"],
                max_stderr_bytes=w["max_stderr_bytes"],
                task_memory_limit_mb=w["task_memory_limit"],
                task_cpu_limit=w["task_cpu_limit"],
            ),
            logs_dir=w["logs_dir"],
            exec_timeout=w["exec_timeout"],
            max_attempts_default=w["max_attempts_default"],
            shutdown_timeout=w["shutdown_timeout"],
            priority_aging_factor=w["priority_aging_factor"],
            burst=burst,
            max_tasks=max_tasks,
            low_memory=is_truthy(env.get("LOW_MEMORY_MODE")),
            listen=not w["no_listen"],
            executor=w["executor"],
            pool_max_tasks=w["pool_max_tasks"],
            pool_max_memory_mb=w["pool_max_memory_mb"],
            pool_fork=not w["pool_no_fork"],
            ray_address=w["ray_address"],
            ray_runtime_env=w["ray_runtime_env"],
        )


@dataclass(frozen=True)
class _Success:
    """A task whose executor succeeded, on its way through the success writer."""

    log: Logger
    task: ClaimedTask
    task_path: str
    result: ExecResult
    logs_uri: str | None
    retries: int = 0  # writes the database failed so far


def _start_ray(settings: WorkerSettings, log: Logger) -> RayRunner:
    if not ray_installed():
        raise ConfigError(
            "--executor ray needs Ray, which is not installed",
            hint="pip install 'reproq[ray]'",
        )
    caps = settings.exec_spec
    if caps.task_memory_limit_mb or caps.task_cpu_limit:
        # A Ray worker process runs many tasks, so an rlimit would cap all of them together
        # and kill the Ray worker rather than fail one attempt.
        log.warn(
            "--task-memory-limit and --task-cpu-limit do not apply to --executor ray; ignored",
            task_memory_limit_mb=caps.task_memory_limit_mb,
            task_cpu_limit=caps.task_cpu_limit,
            hint="ask Ray for memory and num_cpus per task (@ray_options); "
            "Ray's memory monitor enforces memory",
        )
    try:
        runner = RayRunner(
            settings.ray_address,
            max_payload_bytes=settings.exec_spec.max_payload_bytes,
            max_stderr_bytes=settings.exec_spec.max_stderr_bytes,
            log=log,
            local_cpus=min(settings.concurrency, os.cpu_count() or 1),
            runtime_env=parse_runtime_env(settings.ray_runtime_env),
            settings_module=os.environ.get("DJANGO_SETTINGS_MODULE"),
        )
        runner.start()
    except (InfraError, ValueError) as exc:
        raise ConfigError(
            str(exc),
            hint="check --ray-address (auto, host:port, ray://host:10001 or local) "
            "and worker.ray_runtime_env",
        ) from None
    return runner


def run_worker(
    settings: WorkerSettings, store: TaskStore, log: Logger, http: HttpSettings | None
) -> None:
    """Run a worker with its HTTP side (metrics, health, events) when ``http`` asks for one."""
    if settings.low_memory:
        log.warn("Low memory mode enabled; metrics/health/events disabled", env="LOW_MEMORY_MODE")
    metrics = Metrics()
    broker = EventBroker() if http is not None and not settings.low_memory else None
    pool: ExecutorPool | RayRunner | None = None
    if settings.executor == "pool":
        pool = ExecutorPool(
            settings.exec_spec,
            size=settings.concurrency,
            max_tasks=settings.pool_max_tasks,
            max_memory_mb=settings.pool_max_memory_mb,
            fork=settings.pool_fork,
            on_replace=lambda pid, why: log.info("Executor process replaced", pid=pid, reason=why),
        )
        began = time.monotonic()
        try:
            pool.start()
        except InfraError as exc:
            raise ConfigError(
                f"cannot start the executor pool: {exc}",
                hint="check worker.python_bin and worker.executor_module in the config file",
            ) from None
        ready = pool.wait_ready()
        log.info(
            "Executor pool ready",
            processes=ready,
            size=settings.concurrency,
            forked=pool.forking,
            seconds=round(time.monotonic() - began, 3),
        )
        if pool.fork_server_threads > 1:
            log.warn(
                "Executor fork server runs threads; forked processes keep only the one that "
                "forks, and a lock another one holds at a fork stays held there. Use "
                "--pool-no-fork if the settings' threads matter to tasks",
                threads=pool.fork_server_threads,
            )
    if settings.executor == "ray":
        pool = _start_ray(settings, log)
    worker = Worker(settings, store, log, metrics=metrics, events=broker, pool=pool)

    def healthy() -> bool:
        try:
            store.ping(HEALTH_TIMEOUT)
        except DatabaseError as exc:
            log.warn("Health check failed", error=str(exc))
            return False
        return True

    server = None
    if http is not None and broker is None:
        log.warn("Skipping metrics server due to low memory mode", addr=http.addr)
    elif http is not None and broker is not None:
        server = start_http(http, metrics=metrics, broker=broker, health=healthy, log=log)
    stop_collector = threading.Event()
    if server is not None:
        Collector(metrics, store, log).start(stop_collector)
    worker.install_signal_handlers()
    listener = None
    # A --burst run exits once idle; its own completions already cut its backoff short.
    if settings.listen and not settings.burst:
        listener = start_listener(
            store.pool.conninfo,
            worker_id=settings.worker_id,
            queues=settings.queues,
            wake=worker.wake,
            log=log,
        )
    try:
        worker.run()
    finally:
        if listener is not None:
            listener.stop()
        stop_collector.set()
        if server is not None:
            server.stop()
        if pool is not None:
            pool.close()


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        store: TaskStore,
        log: Logger,
        *,
        metrics: Metrics | None = None,
        events: EventSink | None = None,
        pool: ExecutorPool | RayRunner | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        # --no-listen is the setting for PgBouncer's transaction pooling, where a session
        # setting would not stay with the writer's statements: there successes go through
        # the shared pool with a timeout per transaction.
        self._successes = SuccessWriter(store, own_connection=settings.listen)
        self.store = store
        self.log = log
        # Runner metrics are kept even without an HTTP server, as in the Go worker.
        self.metrics = metrics or Metrics()
        self.events: EventSink = events or DiscardEvents()
        # Without a listener (no HTTP server, low-memory mode) an event is not even built:
        # two per task, each with its own timestamp.
        self._publishing = not isinstance(self.events, DiscardEvents)
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        self._running: set[int] = set()  # result_ids handed to a runner and not finished
        # Claimed tasks go to long-lived runner threads, one per slot: starting a thread per
        # task made the claim loop wait for each new thread to be scheduled (a third of its
        # time, with a busy GIL, in a profile of a no-op pool run).
        # Besides claimed tasks, the runners take the follow-ups of a success the writer could
        # not commit (a retry after a pause, or recording that its value was refused).
        self._queue: queue.SimpleQueue[ClaimedTask | Callable[[], None] | None] = (
            queue.SimpleQueue()
        )
        self._runners: list[threading.Thread] = []
        # Tasks whose executor is done and whose slot went back before their success committed.
        self._freed: set[int] = set()
        self._running_lock = threading.Lock()
        self._stop_claiming = threading.Event()
        store.stopping = self._stop_claiming.is_set
        self._hard_stop = threading.Event()
        self._wake = threading.Event()
        self._background_stop = threading.Event()
        self._signals = 0
        self._round_robin = 0
        self._poll_errors = 0
        self._finished = 0  # tasks whose thread ended; guarded by _running_lock
        self._executor_checked = False  # guarded by _running_lock
        self.claimed = 0
        self.fatal: DatabaseError | None = None

    # --- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop claiming and let running tasks finish. Second: stop them now."""
        self._signals += 1
        if self._signals == 1:
            self.log.info(
                "Shutdown requested, waiting for tasks...",
                running=self.running_count(),
                shutdown_timeout=f"{self.settings.shutdown_timeout:g}s",
                hint="press Ctrl+C again to stop now",
            )
            self._stop_claiming.set()
            # A claim waiting on a lock would hold the stop up until the lock is released.
            # Off the signal handler's thread: a cancel request is a connection of its own.
            threading.Thread(
                target=self.store.interrupt_claims, name="interrupt-claims", daemon=True
            ).start()
        else:
            self.log.warn("Second signal: stopping running tasks now", running=self.running_count())
            self._hard_stop.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def handler(_signum: int, _frame: Any) -> None:
            self.request_stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        # Operators can see where a stuck worker is: SIGUSR1 prints every thread's stack.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def running_count(self) -> int:
        with self._running_lock:
            return len(self._running)

    def wake(self) -> None:
        """Poll now instead of at the end of the current backoff (new work is READY)."""
        self._wake.set()

    # --- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        s = self.settings
        try:
            self.store.register(
                hostname=socket.gethostname(),
                concurrency=s.concurrency,
                queues=s.queues,
                version=__version__,
            )
        except DatabaseError as exc:
            self.log.warn("Failed to register worker", error=str(exc))
        if s.reclaim_interval_seconds > 0:
            self._reclaim()
        background = [threading.Thread(target=self._registry_loop, daemon=True)]
        if s.reclaim_interval_seconds > 0:
            background.append(threading.Thread(target=self._reclaim_loop, daemon=True))
        for thread in background:
            thread.start()
        start_memory_logger(
            self.log, self._background_stop, lambda: {"running_tasks": self.running_count()}
        )
        self.log.info(
            "Starting reproq worker",
            concurrency=s.concurrency,
            queues=s.queues,
            version=__version__,
            burst=s.burst,
        )
        # Twice as many runners as slots: a runner waiting for its task's success to commit
        # has already given its slot back, and the next claim needs a runner to go to.
        self._runners = [
            threading.Thread(target=self._runner, name=f"reproq-task-{n}", daemon=True)
            for n in range(2 * s.concurrency)
        ]
        for thread in self._runners:
            thread.start()
        try:
            self._claim_loop()
            self._drain()
        finally:
            for _ in self._runners:
                self._queue.put(None)
            self._successes.close()
        self._background_stop.set()
        try:
            self.store.unregister()
        except DatabaseError as exc:
            self.log.warn("Failed to unregister worker", error=str(exc))
        self.log.info("Worker stopped", claimed=self.claimed)
        if self.fatal is not None:
            raise DatabaseError(
                f"giving up after {BURST_MAX_POLL_ERRORS} failed polls: {self.fatal}",
                hint="check the database the worker points at; without --burst it keeps retrying",
            )

    def _claim_loop(self) -> None:
        s = self.settings
        while not self._stop_claiming.is_set():
            if s.max_tasks and self.claimed >= s.max_tasks:
                return
            if not self._slots.acquire(timeout=0.2):
                continue
            slots = 1 + self._reserve_free_slots()
            with self._running_lock:
                finished_before = self._finished
            try:
                tasks = self._poll(slots)
            except DatabaseError as exc:
                self._release_slots(slots)
                if self._stop_claiming.is_set():
                    return  # most likely the claim interrupt_claims cancelled: nothing taken
                self.log.error("Polling error", error=str(exc))
                self._poll_errors += 1
                if s.burst and self._poll_errors >= BURST_MAX_POLL_ERRORS:
                    self.fatal = exc
                    return
                self._sleep_backoff()
                continue
            self._poll_errors = 0
            self._release_slots(slots - len(tasks))
            for task in tasks:
                self._start(task)
            if tasks:
                continue
            if s.burst and self._idle_since(finished_before):
                return
            self._sleep_backoff()

    def _reserve_free_slots(self) -> int:
        """Take every other free slot too, so one statement can claim a task for each."""
        limit = self.settings.concurrency - 1
        if self.settings.max_tasks:
            limit = min(limit, self.settings.max_tasks - self.claimed - 1)
        taken = 0
        while taken < limit and self._slots.acquire(blocking=False):
            taken += 1
        return taken

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def _idle_since(self, finished_before: int) -> bool:
        """Nothing runs and no task finished since the empty poll began: a task finishing
        during the poll may have released work (a chain child) that poll could not see."""
        with self._running_lock:
            return not self._running and self._finished == finished_before

    def _poll(self, slots: int) -> list[ClaimedTask]:
        """Claim up to ``slots`` tasks the way the Go worker's one-task polls share them out:
        the queues take turns from where the last claim left off, and an empty queue's turns
        go to the other queues. Each queue is asked for its turns among the slots still free,
        so a busy queue fills them in one statement; slots left over once every queue has
        been asked go, in another pass, to the queues that gave every turn they were asked
        for (those may hold more), as Go's next polls would."""
        queues = self.settings.queues
        count = len(queues)
        start = self._round_robin % count
        claimed: list[ClaimedTask] = []
        taken = [0] * count  # tasks per queue, by its offset from start
        asking = list(range(count))
        while asking and len(claimed) < slots:
            gave_all: list[int] = []
            for position, offset in enumerate(asking):
                free = slots - len(claimed)
                turns = -(-free // (len(asking) - position))  # ceil: earlier queues first
                if turns == 0:
                    break
                queue = queues[(start + offset) % count]
                try:
                    tasks = timed(
                        lambda seconds, q=queue: self.metrics.observe_claim(q, seconds),
                        lambda q=queue, n=turns: self._claim_from(q, n),
                    )
                except DatabaseError as exc:
                    if not claimed:
                        raise
                    # What the earlier queues gave is leased to us and must run; the error
                    # ends the round, as a failed claim ends Go's.
                    if not self._stop_claiming.is_set():  # else likely interrupt_claims'
                        self.log.error("Polling error", error=str(exc))
                    gave_all = []
                    break
                for task in tasks:
                    self.metrics.task_claimed(queue, _age(task.enqueued_at))
                taken[offset] += len(tasks)
                if len(tasks) == turns:
                    gave_all.append(offset)
                claimed += tasks
            asking = gave_all
        # The next poll starts after the queue that took the very last turn, as Go's would:
        # a queue's last task is its taken-th turn, and the queues' turns alternate.
        last_turn = max(
            (offset + count * (n - 1) for offset, n in enumerate(taken) if n), default=-1
        )
        self._round_robin = start + (last_turn % count if claimed else 0) + 1
        return claimed

    def _claim_from(self, queue: str, slots: int) -> list[ClaimedTask]:
        """Plain tasks in one autocommit statement (as many as slots are free); only when the
        next task has a lock_key, a concurrency limit or a rate limit, one claim with its
        checks in a transaction — three round trips, so plain tasks go the batch way even one
        at a time, and an empty queue costs one statement."""
        aging = self.settings.priority_aging_factor
        batch, blocked = self.store.claim_batch(queue, slots, aging_factor=aging)
        if not blocked:
            return batch
        task = self.store.claim(queue, aging_factor=aging)
        return [task] if task is not None else []

    def _sleep_backoff(self) -> None:
        low, high = self.settings.poll_min_backoff, self.settings.poll_max_backoff
        delay = low if high - low <= 0 else random.uniform(low, high)
        self._wake.wait(timeout=delay)
        self._wake.clear()

    def _start(self, task: ClaimedTask) -> None:
        self.claimed += 1
        with self._running_lock:
            self._running.add(task.result_id)
        self._queue.put(task)

    def _runner(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, ClaimedTask):
                self._task_thread(item)
            else:
                item()

    def _drain(self) -> None:
        """Wait for running tasks; after shutdown_timeout (signal case) stop them."""
        if self._stop_claiming.is_set():
            deadline = time.monotonic() + self.settings.shutdown_timeout
            while self.running_count() and not self._hard_stop.is_set():
                if time.monotonic() >= deadline:
                    self.log.warn(
                        "Shutdown timeout reached; stopping running tasks",
                        running=self.running_count(),
                    )
                    self._hard_stop.set()
                    break
                self._wake.wait(timeout=0.2)
                self._wake.clear()
        while self.running_count():
            self._wake.wait(timeout=0.2)
            self._wake.clear()

    # --- one task -------------------------------------------------------------------------------

    def _task_thread(self, task: ClaimedTask) -> None:
        finished = True
        try:
            finished = self._process(task)
        except Exception as exc:  # keep the worker alive; the lease expiry recovers the row
            self._pipeline_error(task, exc)
        finally:
            if finished:
                self._task_done(task)

    def _pipeline_error(self, task: ClaimedTask, exc: Exception) -> None:
        self.log.error("Execution pipeline error", result_id=task.result_id, error=repr(exc))

    def _task_done(self, task: ClaimedTask) -> None:
        """Everything about ``task`` is written (or left for reclaim): it stops counting as
        running, and its slot goes back unless it already has."""
        with self._running_lock:
            self._running.discard(task.result_id)
            self._finished += 1
            freed = task.result_id in self._freed
            self._freed.discard(task.result_id)
        if not freed:
            self._slots.release()
        self._wake.set()

    def _free_slot(self, task: ClaimedTask) -> None:
        """The executor is done with ``task``: its slot can take the next claim while the
        success commits. The task stays in the running set until then, so shutdown and
        burst mode still wait for the commit (and for what it releases, a chain's next step);
        only the executor-side limit is handed back early.

        At most ``concurrency`` tasks wait for their commit with their slot given back. A
        success waiting for its commit holds no runner thread, but while the database fails
        its writes each one's retry takes a runner for the pause: with more tasks in flight
        than runners (two per slot), a new claim would wait for one without heartbeats, its
        lease running out. Past that, a slot goes back when its commit lands."""
        with self._running_lock:
            if len(self._freed) >= self.settings.concurrency:
                return
            self._freed.add(task.result_id)
        self._slots.release()
        self._wake.set()

    def _process(self, task: ClaimedTask) -> bool:
        """Run ``task`` and record its outcome. False when a success is left with the writer,
        which finishes the task once it is committed (_success_written)."""
        s = self.settings
        ids = {"result_id": task.result_id, "spec_hash": task.spec_hash}
        task_path, problem = policy.resolve_task_path(task)
        if task_path is None:
            log = self.log.bind(**ids)
            log.error("Invalid task spec", error=problem)
            self._fail(
                log,
                task,
                "",
                policy.invalid_spec(problem or "invalid spec"),
                None,
                event=("error", "task_invalid", "invalid task spec", "invalid_spec"),
            )
            return True
        if not policy.is_allowed(task_path, s.allowed_task_modules):
            failure = policy.security_violation(task_path)
            log = self.log.bind(**ids)
            log.warn("Task rejected by validator", task_path=task_path, error=failure.summary)
            self._fail(
                log,
                task,
                task_path,
                failure,
                None,
                event=("warn", "task_rejected", "task rejected by validator", "security_violation"),
            )
            return True
        # One bind for the lines of a task that runs: each bind encodes what it adds.
        log = self.log.bind(**ids, task_path=task_path, attempt=task.attempts)
        if self._stop_claiming.is_set():
            # Claimed as the stop came (a claim held up by a lock returns after the signal),
            # or waiting for a runner since: not started, so it goes back at once.
            log.warn("Task not started: worker shutting down; it will run again")
            self._fail(
                log,
                task,
                task_path,
                policy.worker_shutdown(task, s.worker_id, started=False),
                None,
                event=("warn", "task_retry", "task handed back at shutdown", "worker_shutdown"),
                processed=False,
            )
            return True
        log.info("Executing task")
        self._emit("info", "task_started", "task started", task, task_path)
        limit = policy.effective_timeout(task, s.exec_timeout)
        started = time.perf_counter()
        try:
            run = self.pool.run_attempt if self.pool else partial(run_attempt, s.exec_spec)
            result = run(
                result_id=task.result_id,
                attempt=task.attempts,
                payload=task.spec_text,
                timeout=limit,
                tick=self._ticker(task, log),
            )
        except InfraError as exc:
            self.metrics.observe_exec(task.queue_name, time.perf_counter() - started)
            log.error("Execution pipeline error", error=str(exc))  # the Go worker's words
            failure = policy.infra_error(task, str(exc), s.worker_id, retryable=exc.retryable)
            self._fail(
                log,
                task,
                task_path,
                failure,
                None,
                event=(
                    "error",
                    "task_infra_error",
                    "execution infrastructure error",
                    "infra_error",
                ),
                processed=False,
            )
            return True
        self.metrics.observe_exec(task.queue_name, result.duration)
        logs_uri = self._persist_logs(log, task, result)
        return self._finish(log, task, task_path, limit, result, logs_uri)

    def _ticker(self, task: ClaimedTask, log: Logger) -> Callable[[], str | None]:
        """Heartbeats the lease; says when to stop the child (cancel, lease lost, shutdown)."""
        interval = self.settings.heartbeat_seconds
        next_beat = time.monotonic() + interval
        lease_ends = time.monotonic() + self.settings.lease_seconds

        def tick() -> str | None:
            nonlocal next_beat, lease_ends
            if self._hard_stop.is_set():
                return "worker_shutdown"
            now = time.monotonic()
            if interval <= 0 or now < next_beat:
                return None
            next_beat = now + interval
            try:
                cancel = self._timed_db("heartbeat", lambda: self.store.heartbeat(task.result_id))
            except FencingError as exc:
                log.error("Heartbeat failed", error=str(exc))
                return "lease_lost"
            except DatabaseError as exc:
                # A database blip should not kill the task; once the lease has run out,
                # another worker may take the row, so stop then.
                log.error("Heartbeat failed", error=str(exc))
                return "lease_lost" if now >= lease_ends else None
            lease_ends = now + self.settings.lease_seconds
            if cancel:
                log.warn("Remote cancellation requested")
                return "cancelled"
            return None

        return tick

    def _finish(
        self,
        log: Logger,
        task: ClaimedTask,
        task_path: str,
        limit: float,
        result: ExecResult,
        logs_uri: str | None,
    ) -> bool:
        s = self.settings
        if result.stopped_for == "lease_lost":
            log.error("Task stopped: lease lost; the row is left for reclaim")
            return True
        if result.stopped_for == LOST:
            # The task may still be running on a cluster we cannot see: the lease, no
            # longer renewed, decides when another attempt may start.
            log.error("Task abandoned: executor connection lost; the row is left for reclaim")
            return True
        stopped_for = result.stopped_for
        if stopped_for == "worker_shutdown" and self._cancel_requested(task, log):
            # A cancel the heartbeat has not seen yet still wins: handed back, the task
            # would run again in full.
            stopped_for = "cancelled"
        if stopped_for == "cancelled":
            log.warn("Task cancelled by request")
            self._fail(
                log,
                task,
                task_path,
                policy.cancelled(task_path, s.worker_id),
                logs_uri,
                event=("warn", "task_cancelled", "task cancelled by request", "cancel_requested"),
            )
            return True
        if stopped_for == "worker_shutdown":
            log.warn("Task stopped by worker shutdown; it will run again")
            self._fail(
                log,
                task,
                task_path,
                policy.worker_shutdown(task, s.worker_id),
                logs_uri,
                event=("warn", "task_retry", "task stopped by worker shutdown", "worker_shutdown"),
                processed=False,
            )
            return True
        if result.timed_out:
            log.warn("Task timed out", timeout_seconds=limit)
            failure = policy.timeout(task, limit, s.worker_id)
            self._fail(log, task, task_path, failure, logs_uri, event=_failed_event(failure))
            return True
        which = resource_limit_hit(s.exec_spec, result)
        if which is not None:
            spec = s.exec_spec
            memory = f"{spec.task_memory_limit_mb} MiB"
            cap = memory if which == "memory" else f"{spec.task_cpu_limit:g}s"
            log.warn("Task exceeded a resource limit", limit=which, limit_value=cap)
            failure = policy.resource_limit(task, which, cap, s.worker_id)
            self._fail(log, task, task_path, failure, logs_uri, event=_failed_event(failure))
            return True
        envelope = result.envelope
        if envelope.ok:
            self._free_slot(task)
            self._write_success(_Success(log, task, task_path, result, logs_uri))
            return False
        message = envelope.message
        signum = result.signal_number
        if signum is not None and message.startswith("Invalid JSON on stdout"):
            message = signal_description(signum)
        failure = policy.app_error(
            task,
            message=message,
            exception_class=envelope.exception_class,
            traceback=envelope.traceback,
            worker_id=s.worker_id,
        )
        log.warn("Task failed", msg=message, retry=failure.retry)
        if not result.stdout and result.returncode and self.pool is None:
            self._check_executor_once()
        self._fail(
            log,
            task,
            task_path,
            failure,
            logs_uri,
            event=_failed_event(failure),
            exception_class=envelope.exception_class,
            error_message=message,
        )
        return True

    def _check_executor_once(self) -> None:
        """A spawned executor exited with an error and said nothing: its interpreter may not
        have the executor at all (python_bin defaults to python3 on PATH, often another
        environment), and then every task fails the same way with the Go worker's "Invalid JSON
        on stdout". Asked once a worker, the reason goes in the log with its fix."""
        with self._running_lock:
            if self._executor_checked:
                return
            self._executor_checked = True
        spec = self.settings.exec_spec
        problem = executor_problem(spec.python_bin, spec.executor_module)
        if problem is not None:
            self.log.error(
                "Executor cannot run; tasks fail until it can", error=problem[0], hint=problem[1]
            )

    def _write_success(self, success: _Success) -> None:
        """Hand the success to the writer; what follows its commit runs when it lands."""
        self._successes.submit(
            success.task,
            success.result.envelope.return_raw,
            success.logs_uri,
            partial(self._success_written, success, time.perf_counter()),
        )

    def _success_written(
        self, success: _Success, submitted: float, outcome: bool | Exception
    ) -> None:
        """The writer's answer for one success, on its thread. Anything slow (a pause before
        writing again, a failure to record) goes to a runner, and the task is done only
        after that."""
        log, task, task_path = success.log, success.task, success.task_path
        try:
            self.metrics.observe_db("complete_success", time.perf_counter() - submitted)
            if outcome is True:
                log.info("Task successful", duration=round(success.result.duration, 6))
                self.metrics.attempt_finished(task.queue_name, SUCCESS)
                self.metrics.task_finished(task.queue_name, task_path, _age(task.enqueued_at))
                self._emit("info", "task_success", "task completed", task, task_path)
            elif outcome is False:
                # The row is no longer ours (reclaimed, or finished by someone else).
                log.error("Failed to mark success", error="fencing failure or task not running")
            elif isinstance(outcome, DatabaseError) and outcome.refused_data:
                log.error("Failed to mark success", error=str(outcome))
                self._queue.put(partial(self._success_refused, success, outcome))
                return
            elif isinstance(outcome, DatabaseError) and success.retries < len(COMPLETION_RETRIES):
                delay = COMPLETION_RETRIES[success.retries]
                log.warn("Retrying: failed to mark success", error=str(outcome), retry_in=delay)
                again = replace(success, retries=success.retries + 1)
                self._queue.put(partial(self._after_pause, again, delay))
                return
            elif isinstance(outcome, DatabaseError):
                # The row stays RUNNING; its lease running out hands it on.
                log.error("Failed to mark success", error=str(outcome))
            else:
                self._pipeline_error(task, outcome)
        except Exception as exc:
            self._pipeline_error(task, exc)
        self._task_done(task)

    def _after_pause(self, success: _Success, delay: float) -> None:
        time.sleep(delay)
        try:
            self._write_success(success)
        except Exception as exc:
            self._pipeline_error(success.task, exc)
            self._task_done(success.task)

    def _success_refused(self, success: _Success, exc: DatabaseError) -> None:
        """The database refused the task's return value: the attempt fails with the reason."""
        task = success.task
        try:
            message = f"the task's return value cannot be stored: {exc}"
            failure = policy.app_error(
                task,
                message=message,
                exception_class="",
                traceback="",
                worker_id=self.settings.worker_id,
            )
            self._fail(
                success.log, task, success.task_path, failure, success.logs_uri,
                event=_failed_event(failure), error_message=message,
            )  # fmt: skip
        except Exception as error:
            self._pipeline_error(task, error)
        finally:
            self._task_done(task)

    def _fail(
        self,
        log: Logger,
        task: ClaimedTask,
        task_path: str,
        failure: Failure,
        logs_uri: str | None,
        *,
        event: tuple[Level, str, str, str],
        processed: bool = True,
        **metadata: str,
    ) -> None:
        """Record a failed attempt: the row (retry or FAILED), metrics and an event."""
        level, event_type, message, reason = event
        extra = dict(metadata)
        if failure.retry and failure.delay_seconds >= 0:
            extra["next_run"] = _next_run(failure.delay_seconds)
        # Go's words per outcome: "Failed to mark cancellation|infra error|failure".
        what = "mark " + _MARKED.get(str(failure.error.get("kind")), "failure")
        try:
            written = self._with_retries(
                log,
                what,
                lambda: self._timed_db(
                    "complete_failure",
                    lambda: self.store.complete_failure(task, failure, logs_uri),
                ),
            )
        except (FencingError, DatabaseError) as exc:
            log.error(f"Failed to {what}", error=str(exc))
            return
        if not written:
            return
        self.metrics.attempt_finished(task.queue_name, FAILURE, processed=processed)
        if not failure.retry:
            self.metrics.task_finished(task.queue_name, task_path, _age(task.enqueued_at))
        self._emit(level, event_type, message, task, task_path, reason=reason, **extra)

    def _emit(
        self,
        level: Level,
        event_type: str,
        message: str,
        task: ClaimedTask,
        task_path: str,
        **metadata: str,
    ) -> None:
        if not self._publishing:
            return
        meta: dict[str, str] = {}
        if task_path:
            meta["task_path"] = task_path
        if task.attempts > 0:
            meta["attempt"] = str(task.attempts)
        if task.max_attempts > 0:
            meta["max_attempts"] = str(task.max_attempts)
        # exception_class is sent even when empty (go-worker.md §6.3); the rest only when set.
        meta.update(
            {key: value for key, value in metadata.items() if value or key == "exception_class"}
        )
        if self.settings.process_role:
            meta.setdefault("role", self.settings.process_role)
        self.events.publish(
            Event(
                level=level,
                type=event_type,
                msg=message,
                queue=task.queue_name,
                task_id=task.result_id,
                worker_id=self.settings.worker_id,
                metadata=meta,
            )
        )

    def _cancel_requested(self, task: ClaimedTask, log: Logger) -> bool:
        """Whether the row asks for cancellation now (a heartbeat reads it). A lease already
        lost or a database error counts as no: the shutdown outcome's own write then decides."""
        try:
            return self._timed_db("heartbeat", lambda: self.store.heartbeat(task.result_id))
        except (FencingError, DatabaseError) as exc:
            log.warn("Could not check for a cancellation at shutdown", error=str(exc))
            return False

    def _timed_db[R](self, operation: str, action: Callable[[], R]) -> R:
        return timed(lambda seconds: self.metrics.observe_db(operation, seconds), action)

    def _with_retries(self, log: Logger, what: str, action: Callable[[], None]) -> bool:
        """Completion writes survive a short database outage; the lease covers longer ones.
        False when the write did not happen (logged here); a value the database refused is
        raised at once, since sending it again cannot help."""
        for delay in (*COMPLETION_RETRIES, None):
            try:
                action()
                return True
            except DatabaseError as exc:
                if exc.refused_data:
                    raise
                if delay is None:
                    log.error(f"Failed to {what}", error=str(exc))
                    return False
                log.warn(f"Retrying: failed to {what}", error=str(exc), retry_in=delay)
                time.sleep(delay)

    def _persist_logs(self, log: Logger, task: ClaimedTask, result: ExecResult) -> str | None:
        """Write stdout/stderr to <logs_dir>/task-<id>-attempt-<n>.log (go-worker.md §5.7)."""
        logs_dir = self.settings.logs_dir
        if not logs_dir or not (result.stdout or result.stderr):
            return None
        # Go's filepath.Join cleans the path it stores: "./logs/" gives "logs/task-…".
        path = os.path.normpath(
            os.path.join(logs_dir, f"task-{task.result_id}-attempt-{task.attempts}.log")
        )
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        try:
            make_private_dirs(logs_dir)
        except OSError as exc:
            log.warn("Failed to create logs dir", error=str(exc), logs_dir=logs_dir)
            return None
        content = (
            "STDOUT:\n"
            + result.stdout
            + ("" if result.stdout.endswith("\n") else "\n")
            + "STDERR:\n"
            + result.stderr
            + ("" if result.stderr.endswith("\n") else "\n")
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            log.warn("Failed to open logs file", error=str(exc), path=path)
            return None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
        except OSError as exc:
            log.warn("Failed to persist task logs", error=str(exc), path=path)
            return None
        return path

    # --- background loops -------------------------------------------------------------------------

    def _reclaim(self) -> None:
        try:
            reclaimed = self._timed_db(
                "reclaim", lambda: self.store.reclaim_expired(self.settings.max_attempts_default)
            )
        except DatabaseError as exc:
            self.log.warn("Failed to reclaim expired tasks", error=str(exc))
            return
        if reclaimed:
            self.log.info(
                "Reclaimed expired tasks",
                count=len(reclaimed),
                failed=sum(1 for r in reclaimed if r.failed),
            )

    def _reclaim_loop(self) -> None:
        while not wait_or_stop(self._background_stop, self.settings.reclaim_interval_seconds):
            self._reclaim()

    def _registry_loop(self) -> None:
        while not self._background_stop.wait(REGISTRY_INTERVAL):
            try:
                self.store.seen()
            except DatabaseError as exc:
                self.log.warn("Failed to update worker heartbeat", error=str(exc))


def _age(since: datetime) -> float:
    """Seconds from a database timestamp to now (clamped: clocks of two hosts can disagree)."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return max((datetime.now(UTC) - since).total_seconds(), 0.0)


def _next_run(delay: float) -> str:
    return go_time(datetime.now() + timedelta(seconds=delay), digits=None)


_MARKED = {"cancelled": "cancellation", "infra_error": "infra error"}


def _failed_event(failure: Failure) -> tuple[Level, str, str, str]:
    kind = str(failure.error.get("kind", "app_error"))
    if failure.retry:
        return ("warn", "task_retry", "task failed; retrying", kind)
    return ("error", "task_failed", "task failed", kind)
