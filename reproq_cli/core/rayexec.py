"""``--executor ray``: claimed tasks run as Ray remote tasks; Postgres stays the source of truth.

Two halves live here:

- ``RayRunner`` (in the worker process) has ``run_attempt`` with executor.run_attempt's
  contract. It never imports Ray: a Ray driver is terminated by Ray itself when it loses the
  cluster for a minute, and the worker must outlive that (go on heartbeating, reconnect).
- the *bridge* (``python -m reproq_cli.core.rayexec``), a child process that is the Ray
  driver. It speaks JSON lines with the runner:

  - bridge → runner on start: ``{"ready": true, "resources": {...}}`` or
    ``{"error": "...", "retry": bool}``;
  - runner → bridge: ``{"op": "submit", "id", "result_id", "attempt", "spec", "options"}``
    and ``{"op": "cancel", "id", "grace"}``;
  - bridge → runner: ``{"id", "ok", "envelope", "stderr"}`` (the task ran),
    ``{"id", "crashed", "exception_class", "message", "traceback"}`` (the Ray worker died or
    the entry point failed), ``{"id", "unschedulable": "<reason>"}`` or
    ``{"id", "cancelled": true}``.

  The remote function imports ``reproq_django.raytask`` by name on the Ray worker (reproq_cli
  never imports Django) and returns the same envelope ``python -m reproq_django.executor``
  prints. When its stdin closes (the worker exited or was killed) the bridge force-cancels
  what it still runs and leaves; the rows are recovered by lease expiry and reclaim.

If the bridge dies (cluster gone, driver terminated), in-flight attempts end with
``stopped_for="executor_lost"`` and are left RUNNING for lease expiry and reclaim, because a
task on a cluster we can no longer see may still be running; a background thread starts a
new bridge with exponential backoff.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import queue
import random
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from reproq_cli.core.executor import (
    KILL_GRACE_SECONDS,
    TICK_SECONDS,
    BoundedBuffer,
    Envelope,
    ExecResult,
    InfraError,
    checked_payload,
    parse_envelope,
)
from reproq_cli.core.logs import Logger
from reproq_cli.gojson import GoSyntaxError, raw_top_level

ENTRY_MODULE = "reproq_django.raytask"
INSTALL_HINT = "pip install 'reproq[ray]'"
CONNECT_TIMEOUT = 120.0
# The cooperative cancel (KeyboardInterrupt in the task) gets this long before the Ray
# worker process is killed.
CANCEL_GRACE_SECONDS = KILL_GRACE_SECONDS
# After a cancel, how long to wait for the bridge to confirm before giving up on it.
CANCEL_CONFIRM_SECONDS = CANCEL_GRACE_SECONDS + 10.0
RECONNECT_BACKOFF = (1.0, 60.0)  # first and longest delay between reconnect attempts
# Connecting at start-up, when the cluster answered but failed to set up this driver.
START_ATTEMPTS = 3
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")
# Cluster resource names for the task options that have one.
_CLUSTER_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
LOST = "executor_lost"


def parse_runtime_env(text: str) -> dict[str, Any]:
    """worker.ray_runtime_env: a JSON object ({} when empty)."""
    try:
        runtime_env = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ValueError(f"worker.ray_runtime_env is not valid JSON: {exc}") from None
    if not isinstance(runtime_env, dict):
        raise ValueError("worker.ray_runtime_env must be a JSON object")
    return runtime_env


def ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken install, or a stub blocking it
        return False


def _deep_spec_options(spec_text: str) -> dict[str, Any]:
    """{"ray": …} from a spec nested past Python's decoder (an argument, most likely): the
    ray object decoded on its own. A spec Go would refuse gets no options, as in
    task_options."""
    try:
        members = raw_top_level(spec_text)
    except GoSyntaxError:
        return {}
    raw = members.get("ray") if isinstance(members, dict) else None
    if raw is None:
        return {}
    try:
        return {"ray": json.loads(raw)}
    except RecursionError:
        raise InfraError("spec field 'ray' is nested too deeply", retryable=False) from None


def task_options(spec_text: str) -> dict[str, Any]:
    """The spec's ``ray`` object (num_cpus, num_gpus, memory, resources), validated.

    A spec that is not JSON gets no options: the entry point reports the payload error.
    Raises InfraError (not retryable) for options that can never be scheduled.
    """
    try:
        spec = json.loads(spec_text)
    except ValueError:
        return {}
    except RecursionError:
        spec = _deep_spec_options(spec_text)
    raw = spec.get("ray") if isinstance(spec, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InfraError("spec field 'ray' must be an object", retryable=False)
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in RESOURCE_KEYS:
            raise InfraError(
                f"unknown Ray option {key!r} in the spec (allowed: {', '.join(RESOURCE_KEYS)})",
                retryable=False,
            )
        if key == "resources":
            if not isinstance(value, dict) or not all(
                _non_negative(amount) for amount in value.values()
            ):
                raise InfraError(
                    "Ray option 'resources' must map names to non-negative numbers",
                    retryable=False,
                )
            options[key] = {str(name): float(amount) for name, amount in value.items()}
        elif value is not None:
            if not _non_negative(value):
                raise InfraError(
                    f"Ray option {key!r} must be a non-negative number, not {value!r}",
                    retryable=False,
                )
            options[key] = int(value) if key == "memory" else value
    return options


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def unschedulable(options: dict[str, Any], cluster: dict[str, float]) -> str | None:
    """Why a task with these options can never run on a cluster of these totals, or None."""
    wanted = {_CLUSTER_NAMES[k]: float(v) for k, v in options.items() if k in _CLUSTER_NAMES}
    wanted.setdefault("CPU", 1.0)  # a Ray task needs one CPU unless it says otherwise
    wanted.update(options.get("resources") or {})
    short = [
        f"{name}={amount:g} (cluster has {cluster.get(name, 0.0):g})"
        for name, amount in wanted.items()
        if amount > cluster.get(name, 0.0)
    ]
    if not short:
        return None
    return "task asks for more than the Ray cluster has: " + ", ".join(short)


# --- the worker side ------------------------------------------------------------------------------


class _Bridge:
    """One bridge child process and the reader that routes its answers to waiting attempts."""

    def __init__(self, argv: list[str], env: dict[str, str], max_stderr_bytes: int) -> None:
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                # Its own session: Ctrl+C at the worker's terminal is the worker's to handle.
                start_new_session=True,
            )
        except OSError as exc:
            raise InfraError(f"cannot start the Ray bridge: {exc.strerror or exc}") from None
        self.ready: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.waiting: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        self.lock = threading.Lock()
        self.gone = threading.Event()
        self.err = BoundedBuffer(max_stderr_bytes)
        self.resources: dict[str, float] = {}
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read_err, args=(self.proc.stderr,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        announced = False
        with contextlib.suppress(OSError, ValueError):
            for line in iter(stream.readline, b""):
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # not ours (a library printing); the protocol lines are JSON
                if not isinstance(message, dict):
                    continue
                if not announced:
                    announced = True
                    self.ready.put(message)
                    continue
                with self.lock:
                    target = self.waiting.get(message.get("id", -1))
                if target is not None:
                    target.put(message)
        with self.lock:
            self.gone.set()
            targets = list(self.waiting.values())
        if not announced:
            self.ready.put(None)
        for target in targets:
            target.put(None)

    def _read_err(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for chunk in iter(lambda: stream.read1(65536), b""):
                with self.lock:
                    self.err.write(chunk)

    def last_words(self) -> str:
        with self.lock:
            lines = [ln for ln in self.err.text(with_marker=False).splitlines() if ln.strip()]
        return lines[-1][:500] if lines else ""

    def register(self, key: int) -> queue.Queue[dict[str, Any] | None] | None:
        inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self.lock:
            if self.gone.is_set():
                return None
            self.waiting[key] = inbox
        return inbox

    def unregister(self, key: int) -> None:
        with self.lock:
            self.waiting.pop(key, None)

    def send(self, message: dict[str, Any]) -> bool:
        data = json.dumps(message).encode("utf-8") + b"\n"
        with self.lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (OSError, ValueError):
                return False
        return True

    def stop(self, wait: float) -> None:
        """Close its input (it cancels what it runs and disconnects), then insist."""
        with self.lock, contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class RefusedByRay(InfraError):
    """Ray was reached but failed to set this driver up; asking again may work."""


class RayRunner:
    """Runs attempts on Ray through a bridge process; reconnects when the bridge is lost."""

    def __init__(
        self,
        address: str,
        *,
        max_payload_bytes: int,
        max_stderr_bytes: int,
        log: Logger,
        local_cpus: int = 2,
        runtime_env: dict[str, Any] | None = None,
        settings_module: str | None = None,
        python_bin: str = sys.executable,
        env: dict[str, str] | None = None,
        cancel_grace: float = CANCEL_GRACE_SECONDS,
    ) -> None:
        self.address = address
        self.max_payload_bytes = max_payload_bytes
        self.max_stderr_bytes = max_stderr_bytes
        self.log = log
        self.local_cpus = local_cpus
        self.runtime_env = runtime_env or {}
        self.settings_module = settings_module
        self.python_bin = python_bin
        self.env = env
        self.cancel_grace = cancel_grace
        self._bridge: _Bridge | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._ids = itertools.count(1)
        self._reconnector: threading.Thread | None = None

    # --- connection -----------------------------------------------------------------------

    def _argv(self) -> list[str]:
        return [
            self.python_bin,
            "-m",
            "reproq_cli.core.rayexec",
            "--address",
            self.address,
            "--local-cpus",
            str(self.local_cpus),
            "--runtime-env",
            json.dumps(self.runtime_env),
            "--settings",
            self.settings_module or "",
        ]

    def _child_env(self) -> dict[str, str]:
        env = dict(self.env if self.env is not None else os.environ)
        # The bridge imports reproq_cli; from a zipapp that is the extracted site directory.
        here = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
        return env

    def _connect(self) -> _Bridge:
        bridge = _Bridge(self._argv(), self._child_env(), self.max_stderr_bytes)
        try:
            hello = bridge.ready.get(timeout=CONNECT_TIMEOUT)
        except queue.Empty:
            bridge.stop(0)
            raise InfraError(
                f"no answer from Ray at {self.address!r} within {CONNECT_TIMEOUT:g}s"
            ) from None
        if hello is None or not hello.get("ready"):
            bridge.stop(KILL_GRACE_SECONDS)
            reason = (hello or {}).get("error") or bridge.last_words() or "the bridge exited"
            failure = RefusedByRay if (hello or {}).get("retry") is True else InfraError
            raise failure(f"cannot connect to Ray at {self.address!r}: {reason}")
        resources = hello.get("resources")
        bridge.resources = dict(resources) if isinstance(resources, dict) else {}
        return bridge

    def start(self) -> None:
        """Connect now; a cluster that cannot be reached at start-up is an error. One that
        answers but fails to set this driver up is asked again, a few times."""
        delay = RECONNECT_BACKOFF[0]
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._bridge = self._connect()
                break
            except RefusedByRay as exc:
                if attempt == START_ATTEMPTS:
                    raise
                self.log.warn(
                    "Ray refused this driver; trying again",
                    error=str(exc),
                    attempt=attempt,
                    retry_in=delay,
                )
                time.sleep(delay)
                delay *= 2
        self._connected.set()
        self.log.info(
            "Connected to Ray", address=self.address, resources=_summary(self._bridge.resources)
        )
        self._reconnector = threading.Thread(target=self._watch, daemon=True)
        self._reconnector.start()

    def _watch(self) -> None:
        """Notice a lost bridge and start a new one, backing off between failed attempts."""
        while not self._closed.is_set():
            bridge = self._bridge
            if bridge is not None and not bridge.gone.wait(timeout=0.5):
                continue
            if self._closed.is_set():
                return
            if bridge is not None:
                self._connected.clear()
                self._bridge = None
                bridge.stop(KILL_GRACE_SECONDS)
                self.log.error(
                    "Lost the Ray connection; running tasks are left for lease expiry and reclaim",
                    address=self.address,
                    reason=_exit_reason(bridge),
                )
            delay, longest = RECONNECT_BACKOFF
            while not self._closed.is_set():
                try:
                    fresh = self._connect()
                except InfraError as exc:
                    wait = delay * random.uniform(0.8, 1.2)
                    self.log.warn("Ray reconnect failed", error=str(exc), retry_in=round(wait, 1))
                    self._closed.wait(wait)
                    delay = min(delay * 2, longest)
                    continue
                if self._closed.is_set():
                    fresh.stop(KILL_GRACE_SECONDS)
                    return
                self._bridge = fresh
                self._connected.set()
                self.log.info("Reconnected to Ray", address=self.address)
                break

    # --- one attempt ----------------------------------------------------------------------

    def run_attempt(
        self,
        *,
        result_id: int,
        attempt: int,
        payload: str,
        timeout: float,
        tick: Callable[[], str | None] | None = None,
    ) -> ExecResult:
        checked_payload(payload, self.max_payload_bytes)
        options = task_options(payload)
        started = time.monotonic()
        deadline = started + timeout
        # Wait (heartbeating) while a lost connection is being re-established.
        while not self._connected.wait(timeout=TICK_SECONDS):
            if time.monotonic() >= deadline or self._closed.is_set():
                raise InfraError(f"Ray at {self.address!r} is not connected")
            reason = tick() if tick is not None else None
            if reason:
                return ExecResult("", "", None, time.monotonic() - started, stopped_for=reason)
        bridge = self._bridge
        key = next(self._ids)
        inbox = bridge.register(key) if bridge is not None else None
        if bridge is None or inbox is None:
            return self._lost(started, bridge)
        try:
            if reason := unschedulable(options, bridge.resources):
                raise InfraError(reason, retryable=False)
            request = {
                "op": "submit",
                "id": key,
                "result_id": result_id,
                "attempt": attempt,
                "spec": payload,
                "options": options,
            }
            if not bridge.send(request):
                return self._lost(started, bridge)
            return self._await(bridge, inbox, key, started, deadline, tick)
        finally:
            bridge.unregister(key)

    def _await(
        self,
        bridge: _Bridge,
        inbox: queue.Queue[dict[str, Any] | None],
        key: int,
        started: float,
        deadline: float,
        tick: Callable[[], str | None] | None,
    ) -> ExecResult:
        while True:
            try:
                message = inbox.get(timeout=TICK_SECONDS)
            except queue.Empty:
                timed_out = time.monotonic() >= deadline
                reason = None if timed_out or tick is None else tick()
                if timed_out or reason:
                    return self._stop(bridge, inbox, key, started, timed_out, reason)
                continue
            if message is None:
                return self._lost(started, bridge)
            return self._outcome(message, started)

    def _stop(
        self,
        bridge: _Bridge,
        inbox: queue.Queue[dict[str, Any] | None],
        key: int,
        started: float,
        timed_out: bool,
        reason: str | None,
    ) -> ExecResult:
        """Cancel the Ray task (cooperatively, then by force) and wait for the bridge to say
        it is gone, so a stopped attempt never overlaps the next one of the same row."""
        stderr = ""
        if bridge.send({"op": "cancel", "id": key, "grace": self.cancel_grace}):
            with contextlib.suppress(queue.Empty):
                message = inbox.get(timeout=self.cancel_grace + CANCEL_CONFIRM_SECONDS)
                if message is not None:
                    stderr = str(message.get("stderr") or "")
        err = BoundedBuffer(self.max_stderr_bytes)
        err.write(stderr.encode("utf-8"))
        return ExecResult(
            stdout="",
            stderr=err.text(),
            returncode=None,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            stopped_for=reason,
        )

    def _lost(self, started: float, bridge: _Bridge | None) -> ExecResult:
        why = bridge.last_words() if bridge is not None else ""
        return ExecResult(
            stdout="",
            stderr=f"Ray connection lost: {why}" if why else "Ray connection lost",
            returncode=None,
            duration=time.monotonic() - started,
            stopped_for=LOST,
        )

    def _outcome(self, message: dict[str, Any], started: float) -> ExecResult:
        duration = time.monotonic() - started
        if "unschedulable" in message:
            raise InfraError(str(message["unschedulable"]), retryable=False)
        if "submit_error" in message:
            raise InfraError(f"Ray refused the task: {message['submit_error']}")
        err = BoundedBuffer(self.max_stderr_bytes)
        err.write(str(message.get("stderr") or "").encode("utf-8"))
        if "crashed" in message:
            # Like a child that died: no envelope from the task, the reason from Ray.
            envelope = Envelope(
                ok=False,
                exception_class=str(message.get("exception_class") or ""),
                message=str(message.get("message") or "the Ray task failed"),
                traceback=str(message.get("traceback") or ""),
            )
            result = ExecResult("", err.text(), 1, duration)
            result.envelope = envelope
            return result
        text = str(message.get("envelope") or "")
        envelope = parse_envelope(text)
        result = ExecResult(text, err.text(), 0 if envelope.ok else 1, duration)
        result.envelope = envelope
        return result

    def close(self) -> None:
        self._closed.set()
        self._connected.clear()
        bridge = self._bridge
        if bridge is not None:
            bridge.stop(self.cancel_grace + 10.0)
        if self._reconnector is not None:
            self._reconnector.join(timeout=5.0)


def _exit_reason(bridge: _Bridge) -> str:
    code = bridge.proc.returncode
    status = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
    last = bridge.last_words()
    return f"Ray bridge {status}" + (f"; last output: {last}" if last else "")


def _summary(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")}
    if "memory" in shown:
        shown["memory"] = round(shown["memory"] / 2**30, 1)  # GiB reads better in a log line
    return ", ".join(f"{k}={v:g}" for k, v in shown.items())


# --- the bridge (the Ray driver process) ----------------------------------------------------------
#
# Everything below runs in the child; it is the only code in reproq that imports ray.


def _remote_entry(
    entry: str, spec: str, result_id: str, attempt: int, settings_module: str
) -> dict[str, Any]:
    """Runs on a Ray worker: the task through reproq_django's entry point, by name."""
    module = importlib.import_module(entry)
    return module.run(
        spec, result_id=result_id, attempt=attempt, settings_module=settings_module or None
    )


class _Driver:
    def __init__(
        self, ray: Any, runtime_env: dict[str, Any], settings_module: str, out: IO[str]
    ) -> None:
        self.ray = ray
        self.runtime_env = runtime_env
        # Passed with each task rather than through runtime_env: a runtime_env gives the
        # tasks their own Ray worker processes, which start cold.
        self.settings_module = settings_module
        self.out = out
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.pending: dict[Any, int] = {}  # ObjectRef -> id
        self.refs: dict[int, Any] = {}
        self.force_at: dict[int, float] = {}
        self.cancelled: set[int] = set()
        self.cluster_now: dict[str, float] = {}
        self.resources_at = 0.0
        self.remote = ray.remote(max_retries=0, retry_exceptions=False)(_remote_entry)

    def write(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def cluster(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.ray.cluster_resources().items()}

    def read_commands(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                command = json.loads(line)
                if isinstance(command, dict):
                    self.commands.put(command)
        self.commands.put(None)

    def run(self) -> None:
        closing = False
        while not closing or self.pending:
            wait = 0.0 if self.pending else 0.5
            while True:
                try:
                    command = self.commands.get(timeout=wait)
                except queue.Empty:
                    break
                wait = 0.0
                if command is None:
                    closing = True
                    for key in list(self.refs):  # the worker is gone: so are its tasks
                        self.cancel(key, 0.0)
                    break
                self.handle(command)
            if self.pending:
                ready, _ = self.ray.wait(
                    list(self.pending), num_returns=len(self.pending), timeout=0.05
                )
                for ref in ready:
                    self.deliver(ref)
            now = time.monotonic()
            for key, when in list(self.force_at.items()):
                if now >= when:
                    del self.force_at[key]
                    if key in self.refs:
                        with contextlib.suppress(Exception):
                            self.ray.cancel(self.refs[key], force=True)

    def handle(self, command: dict[str, Any]) -> None:
        key = int(command.get("id") or 0)
        if command.get("op") == "cancel":
            self.cancel(key, float(command.get("grace") or 0.0))
            return
        options = dict(command.get("options") or {})
        if time.monotonic() - self.resources_at > 5.0:
            # Refreshed now and then: nodes join and leave.
            with contextlib.suppress(Exception):
                self.cluster_now = self.cluster()
                self.resources_at = time.monotonic()
        reason = unschedulable(options, self.cluster_now)
        if reason is not None:
            self.write({"id": key, "unschedulable": reason})
            return
        spec = str(command.get("spec") or "")
        try:
            task_path = str(json.loads(spec).get("task_path") or "task")
        except (ValueError, AttributeError, RecursionError):  # the task reports its spec
            task_path = "task"
        ray_options: dict[str, Any] = {
            k: v for k, v in options.items() if k in RESOURCE_KEYS and v is not None
        }
        ray_options["name"] = f"reproq:{task_path}"
        if self.runtime_env:
            ray_options["runtime_env"] = self.runtime_env
        try:
            ref = self.remote.options(**ray_options).remote(
                ENTRY_MODULE,
                spec,
                str(command.get("result_id") or ""),
                int(command["attempt"]),
                self.settings_module,
            )
        except Exception as exc:
            self.write({"id": key, "submit_error": f"{type(exc).__name__}: {exc}"})
            return
        self.pending[ref] = key
        self.refs[key] = ref

    def cancel(self, key: int, grace: float) -> None:
        ref = self.refs.get(key)
        if ref is None or key in self.cancelled:
            return
        self.cancelled.add(key)
        with contextlib.suppress(Exception):
            self.ray.cancel(ref, force=grace <= 0, recursive=True)
        if grace > 0:
            self.force_at[key] = time.monotonic() + grace

    def deliver(self, ref: Any) -> None:
        key = self.pending.pop(ref)
        self.refs.pop(key, None)
        self.force_at.pop(key, None)
        exceptions = self.ray.exceptions
        try:
            value = self.ray.get(ref, timeout=30)
        except exceptions.TaskCancelledError:
            self.write({"id": key, "cancelled": True})
            return
        except exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            self.write(
                {
                    "id": key,
                    "crashed": True,
                    "exception_class": _class_path(cause),
                    "message": f"the Ray task failed: {cause}",
                    "traceback": str(exc),
                }
            )
            return
        except Exception as exc:  # WorkerCrashedError, OutOfMemoryError, object lost ...
            self.write(
                {
                    "id": key,
                    "crashed": True,
                    "exception_class": _class_path(exc),
                    "message": f"the Ray task was lost: {_first_line(exc)}",
                    "traceback": str(exc),
                }
            )
            return
        if key in self.cancelled:
            self.write({"id": key, "cancelled": True, "stderr": value.get("stderr", "")})
            return
        self.write({"id": key, **value})


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _first_and_last_line(exc: BaseException) -> str:
    """The headline and, for a message that carries a traceback, the error it ends with."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return _first_line(exc)
    return f"{lines[0]} {lines[-1]}"


def _class_path(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def bridge_main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reproq_cli.core.rayexec")
    parser.add_argument("--address", default="auto")
    parser.add_argument("--local-cpus", type=int, default=2)
    parser.add_argument("--runtime-env", default="{}")
    parser.add_argument("--settings", default="", help="the worker's DJANGO_SETTINGS_MODULE")
    args = parser.parse_args(argv)
    # The protocol owns file descriptor 1; anything else that writes there (Ray's own
    # messages, a library) goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def fail(message: str, *, retry: bool = False) -> int:
        out.write(json.dumps({"error": message, "retry": retry}) + "\n")
        out.flush()
        return 2

    private = args.address == "local"
    if private and "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        # Recent Rays protect a new local cluster with a token saved in ~/.ray/auth_token,
        # after which every `ray start` of the user turns token auth on. A token of its own,
        # passed to Ray's processes through the environment, keeps the protection and leaves
        # the home directory alone. Set before the import: Ray reads its mode then.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        import ray
    except ImportError:
        return fail(f"Ray is not installed; {INSTALL_HINT}")
    try:
        if private:
            # A private single-node Ray for development; it ends with this process.
            ray.init(
                address="local",
                num_cpus=args.local_cpus,
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            ray.init(address=args.address, log_to_driver=False)
        driver = _Driver(ray, json.loads(args.runtime_env), args.settings, out)
        driver.cluster_now = driver.cluster()
        driver.resources_at = time.monotonic()
    except ConnectionAbortedError as exc:
        # Ray Client's "Initialization failure from server": the proxy was reached but could
        # not start the server process it keeps for this driver. Seen under load as a gRPC
        # check failure in that freshly forked process; the next attempt starts another.
        return fail(f"{type(exc).__name__}: {_first_and_last_line(exc)}", retry=True)
    except Exception as exc:
        return fail(f"{type(exc).__name__}: {_first_line(exc)}")
    driver.write({"ready": True, "resources": driver.cluster_now})
    threading.Thread(target=driver.read_commands, args=(sys.stdin,), daemon=True).start()
    try:
        driver.run()
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(bridge_main())
