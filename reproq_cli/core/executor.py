"""Running one task attempt in a child process (go-worker.md §5.3-5.7).

The child is ``<python_bin> -m <executor_module> --result-id N --attempt A`` plus the payload
flag, in a new session (so its own process group), with the worker's environment. Its stdout
and stderr are captured up to a cap each; the last stdout JSON value is the result envelope.

Unlike the Go worker, stopping a child (timeout, cancellation, shutdown) signals the whole
process group: SIGTERM, then SIGKILL after a short grace, so grandchildren die too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from reproq_cli.gojson import go_kind, raw_members, syntax_error, top_level
from reproq_cli.process import pidfd

TRUNCATION_MARKER = "\n[TRUNCATED due to size limit]"
KILL_GRACE_SECONDS = 2.0
PIPE_DRAIN_SECONDS = 2.0
TICK_SECONDS = 0.1


class InfraError(Exception):
    """The attempt could not be run at all (spawn failure, payload problems).

    ``retryable`` is False when running it again cannot help (the payload is too large).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class BoundedBuffer:
    """Keeps the first ``limit`` bytes written and remembers whether more arrived."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def write(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > max(room, 0):
            self.truncated = True

    def text(self, *, with_marker: bool = True) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text + TRUNCATION_MARKER if (self.truncated and with_marker) else text


@dataclass
class Envelope:
    ok: bool
    return_raw: str | None = None  # the "return" value as JSON text; None when absent
    exception_class: str = ""
    message: str = ""
    traceback: str = ""


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    returncode: int | None
    duration: float
    timed_out: bool = False
    stopped_for: str | None = None  # why the worker stopped it: cancelled, shutdown, lease_lost
    cpu_seconds: float = 0.0  # the child's CPU time when last sampled (only with a CPU cap)
    envelope: Envelope = field(default_factory=lambda: Envelope(ok=False))

    @property
    def signal_number(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None


@dataclass(frozen=True)
class ExecSpec:
    python_bin: str
    executor_module: str
    payload_mode: str
    max_payload_bytes: int
    max_stdout_bytes: int
    max_stderr_bytes: int
    # Per-task caps set in the child before it runs anything (0: none).
    task_memory_limit_mb: int = 0
    task_cpu_limit: float = 0.0


# --- per-task resource caps (RLIMIT_AS, RLIMIT_CPU) -------------------------------------------

# Past the soft CPU limit the kernel sends SIGXCPU; a child that ignores it is killed at the
# hard limit this many CPU seconds later.
CPU_HARD_GRACE = 1
# ExecResult.stopped_for when the pool stopped a task that ignored SIGXCPU.
CPU_LIMIT = "cpu_limit"
MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory")


def cpu_rlimit(used_seconds: float, limit: float) -> tuple[int, int]:
    """(soft, hard) RLIMIT_CPU granting ``limit`` more CPU seconds to a process that has used
    ``used_seconds`` (whole seconds only: the kernel counts in seconds)."""
    soft = math.ceil(used_seconds) + max(math.ceil(limit), 1)
    return soft, soft + CPU_HARD_GRACE


def limits_preexec(spec: ExecSpec) -> Callable[[], None] | None:
    """The function subprocess runs in the child between fork and exec, or None without caps.

    It only calls setrlimit (no allocation, no locks), which is what makes preexec_fn safe in
    a threaded worker; the limits then hold for the child and everything it starts.
    """
    memory = spec.task_memory_limit_mb * 1024 * 1024
    cpu = cpu_rlimit(0, spec.task_cpu_limit) if spec.task_cpu_limit > 0 else None
    if not memory and cpu is None:
        return None

    def apply() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if cpu is not None:
            resource.setrlimit(resource.RLIMIT_CPU, cpu)

    return apply


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def resource_limit_hit(spec: ExecSpec, result: ExecResult) -> str | None:
    """Which cap ended the attempt: "cpu", "memory" or None.

    CPU: the child died of SIGXCPU (the soft limit), or of SIGKILL after its last sampled CPU
    time had reached the soft limit (it ignored SIGXCPU). Memory: with RLIMIT_AS an allocation
    fails instead of the OOM killer striking, so Python raises MemoryError (reported in the
    envelope) or a dying interpreter or C library says so on stderr.
    """
    if spec.task_cpu_limit > 0:
        if result.stopped_for == CPU_LIMIT:
            return "cpu"
        signum = result.signal_number
        if signum == signal.SIGXCPU:
            return "cpu"
        if signum == signal.SIGKILL and result.cpu_seconds >= spec.task_cpu_limit:
            return "cpu"
    if spec.task_memory_limit_mb > 0:
        if result.envelope.exception_class.endswith("MemoryError"):
            return "memory"
        if result.returncode not in (0, None) and any(
            marker in result.stderr for marker in MEMORY_MARKERS
        ):
            return "memory"
    return None


def build_argv(spec: ExecSpec, result_id: int, attempt: int) -> list[str]:
    return [
        spec.python_bin,
        "-m",
        spec.executor_module,
        "--result-id",
        str(result_id),
        "--attempt",
        str(attempt),
    ]


# --- envelope parsing (Go encoding/json semantics, messages included) --------------------------

# The Python type each typed field must have, and its Go type, as Go's error texts name it.
_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "ok": (bool, "bool"),
    "exception_class": (str, "string"),
    "message": (str, "string"),
    "traceback": (str, "string"),
}
_ENVELOPE_FIELDS = ("return", *_FIELD_TYPES)  # "return" is kept raw, of any type


# What Go's strings.TrimSpace trims (unicode.IsSpace). Python's str.strip() takes the
# separators \x1c-\x1f too, which Go leaves in place for its decoder to refuse.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def parse_envelope(stdout: str) -> Envelope:
    """Decode the executor's stdout as Go's worker does; a decode error is a failed envelope."""
    text = stdout.strip(GO_SPACE)
    try:
        return _decode_envelope(text)
    except ValueError as exc:
        return Envelope(ok=False, message=f"Invalid JSON on stdout: {exc}")


def _refuse_constant(name: str) -> Any:
    # Python's decoder takes NaN and the infinities; Go's and jsonb do not. The caller words
    # the error as Go does (syntax_error).
    raise ValueError(f"{name} is not JSON")


# Go's decoder, as far as the envelope needs it: NaN and the infinities are refused.
STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def _decode_envelope(text: str) -> Envelope:
    try:
        value, end = STRICT_JSON.raw_decode(text)
    except (ValueError, RecursionError):
        # Go's words for what Python's decoder refused (NaN included; GoSyntaxError is a
        # ValueError), or a value nested deeper than Python's decoder goes, which Go's takes.
        return envelope_of(top_level(text), text)
    if text[end:].strip(" \t\n\r"):
        # Python's decoder stops after a value that Go's scanner is still reading ("12." is
        # a number cut short to Go, a 12 with a "." after it to Python): Go's text says.
        raise ValueError(syntax_error(text) or "invalid character after top-level value")
    return envelope_of(value, text)


def envelope_of(value: Any, text: str) -> Envelope:
    """The envelope from ``value``, already decoded (refusing NaN and the infinities) from
    exactly ``text``, which gives the return value's raw text; a ValueError says what Go's
    decoder would have refused."""
    if value is None:
        return Envelope(ok=False)
    if not isinstance(value, dict):
        raise ValueError(
            f"json: cannot unmarshal {go_kind(value)} into Go value of type executor.ResultEnvelope"
        )
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = key.lower()  # like Go: case-insensitive, the last match wins
        if name not in _ENVELOPE_FIELDS:
            continue
        wanted = _FIELD_TYPES.get(name)
        if item is not None and wanted is not None and not isinstance(item, wanted[0]):
            # Go reports the first field of the wrong type, in the order the members came.
            raise ValueError(
                f"json: cannot unmarshal {go_kind(item)} into Go struct field"
                f" ResultEnvelope.{name} of type {wanted[1]}"
            )
        fields[name] = item
    ok = fields.get("ok")
    texts = {name: fields.get(name) or "" for name in ("exception_class", "message", "traceback")}
    # Kept as written, like Go's json.RawMessage: re-encoding it turned 1E2 into 100.0,
    # dropped the scale of 2.50 and made 1e400 an Infinity that jsonb refuses.
    return_raw = raw_members(text)["return"] if "return" in fields else None
    return Envelope(ok=bool(ok), return_raw=return_raw, **texts)


# --- running --------------------------------------------------------------------------------------


def _drain(stream: IO[bytes], buffer: BoundedBuffer) -> None:
    # os.read on the raw descriptor: a grandchild that keeps the pipe open must not block
    # the worker, which abandons this (daemon) thread after PIPE_DRAIN_SECONDS.
    fd = stream.fileno()
    try:
        while chunk := os.read(fd, 65536):
            buffer.write(chunk)
    except OSError:
        return
    stream.close()


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def checked_payload(payload: str, limit: int) -> bytes:
    """The spec as sent to an executor; a spec over ``limit`` bytes can never run, so it is
    a non-retryable infra error (every executor applies the same rule)."""
    data = payload.encode("utf-8")
    if len(data) > limit:
        raise InfraError(f"payload size {len(data)} exceeds limit {limit}", retryable=False)
    return data


def run_attempt(
    spec: ExecSpec,
    *,
    result_id: int,
    attempt: int,
    payload: str,
    timeout: float,
    tick: Callable[[], str | None] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> ExecResult:
    """Run one attempt to completion.

    ``tick`` is called about every 100 ms while the child runs; a non-None return (the
    reason) stops the child's process group. Raises InfraError when nothing could be run.
    """
    data = checked_payload(payload, spec.max_payload_bytes)
    argv = build_argv(spec, result_id, attempt)
    payload_file: str | None = None
    stdin_data: bytes | None = None
    if spec.payload_mode == "stdin":
        argv.append("--payload-stdin")
        stdin_data = data
    elif spec.payload_mode == "file":
        payload_file = _write_payload_file(result_id, data)
        argv += ["--payload-file", payload_file]
    elif spec.payload_mode == "inline":
        argv += ["--payload-json", payload]
    else:
        raise InfraError(f"invalid payload mode: {spec.payload_mode}")

    started = time.monotonic()
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group, so the whole tree can be signalled
                env=env,
                cwd=cwd,
                preexec_fn=limits_preexec(spec),
            )
        except OSError as exc:
            raise InfraError(spawn_error(spec.python_bin, exc)) from None
        except subprocess.SubprocessError as exc:  # preexec_fn failed (a limit above the hard one)
            raise InfraError(f"cannot apply task resource limits: {exc}") from None
        return _supervise(proc, spec, stdin_data, started, timeout, tick)
    finally:
        if payload_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(payload_file)


def executor_problem(python_bin: str, module: str) -> tuple[str, str] | None:
    """Why ``python_bin`` cannot run ``module`` as the executor, and the fix; None when it
    can. Only whether the module is found: importing it would set Django up."""
    probe = (
        f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    )
    try:
        done = subprocess.run(
            [python_bin, "-c", probe], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {python_bin}: {exc}", "set worker.python_bin to an existing interpreter"
    if done.returncode != 0:
        return (
            f"{python_bin} cannot import {module}",
            "install reproq[django] for that interpreter or set worker.python_bin",
        )
    return None


def spawn_error(program: str, exc: OSError) -> str:
    """Go's os/exec text for a child that could not be started: a bare name is looked up
    in PATH first (only executable files count), a path is started as it is."""
    if os.sep not in program:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            name = json.dumps(program, ensure_ascii=False)
            return f"exec: {name}: executable file not found in $PATH"
        program = shutil.which(program) or program
    reason = exc.strerror or str(exc)
    return f"fork/exec {program}: {reason[:1].lower()}{reason[1:]}"


def _write_payload_file(result_id: int, data: bytes) -> str:
    try:
        fd, path = tempfile.mkstemp(prefix=f"reproq-payload-{result_id}-", suffix=".json")
    except OSError as exc:
        raise InfraError(f"failed to create temp file: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp already made it 0600
            handle.write(data)
    except OSError as exc:
        os.unlink(path)
        raise InfraError(f"failed to write payload to file: {exc}") from None
    return path


def _feed_stdin(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass  # the child did not read its payload; its envelope will say why
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def _supervise(
    proc: subprocess.Popen[bytes],
    spec: ExecSpec,
    stdin_data: bytes | None,
    started: float,
    timeout: float,
    tick: Callable[[], str | None] | None,
) -> ExecResult:
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = BoundedBuffer(spec.max_stdout_bytes)
    err = BoundedBuffer(spec.max_stderr_bytes)
    threads = [
        threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True),
    ]
    if stdin_data is not None:
        assert proc.stdin is not None
        threads.append(
            threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin_data), daemon=True)
        )
    for thread in threads:
        thread.start()

    deadline = started + timeout
    timed_out = False
    stopped_for: str | None = None
    used_cpu = 0.0
    exit_fd = pidfd(proc.pid)
    try:
        while not _exited(proc, exit_fd, TICK_SECONDS):
            if spec.task_cpu_limit > 0:
                used_cpu = cpu_seconds(proc.pid) or used_cpu
            if time.monotonic() >= deadline:
                timed_out = True
            elif tick is not None:
                stopped_for = tick()
            if timed_out or stopped_for:
                _stop_group(proc)
                break
    finally:
        if exit_fd is not None:
            os.close(exit_fd)
    duration = time.monotonic() - started
    # What the task left running in its process group (a child it started and did not wait
    # for) would run on with no lease, and hold the pipes open: the attempt is over.
    kill_group(proc.pid, signal.SIGKILL)
    drained = time.monotonic() + PIPE_DRAIN_SECONDS  # one wait for all the pipes, not each
    for thread in threads:
        thread.join(timeout=max(drained - time.monotonic(), 0))
    returncode = proc.returncode
    if returncode not in (0, None) and not timed_out:
        # Go appends the wait error to stderr: "exit status 1" / "signal: killed".
        err.write(wait_error(returncode).encode())
    # On a timeout Go keeps stdout as captured (marker included) for the log file; otherwise
    # the trimmed text it parses.
    stdout_text = out.text() if timed_out else out.text(with_marker=False).strip(GO_SPACE)
    result = ExecResult(
        stdout=stdout_text,
        stderr=err.text(),
        returncode=returncode,
        duration=duration,
        timed_out=timed_out,
        stopped_for=stopped_for,
        cpu_seconds=used_cpu,
    )
    if not timed_out and stopped_for is None:
        result.envelope = parse_envelope(stdout_text)
        if out.truncated and not result.envelope.ok:
            # The envelope is the last thing written: past the cap it is cut, and the task
            # (which did run) fails with a JSON error that does not say why.
            result.envelope.message += (
                f" (stdout passed max_stdout_bytes, {spec.max_stdout_bytes} bytes, and was cut:"
                " a large return value or print output)"
            )
    return result


def _exited(proc: subprocess.Popen[bytes], exit_fd: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` for the child to exit. With a pidfd the wait ends the moment
    it does; Popen.wait(timeout) sleeps in growing steps and noticed a short task's exit
    ~14 ms late on average."""
    if exit_fd is None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    poller = select.poll()  # not select.select: a busy worker's descriptors pass 1024
    poller.register(exit_fd, select.POLLIN)
    if not poller.poll(timeout * 1000):
        return False
    proc.wait()
    return True


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_SECONDS)
    kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


# Go's syscall.Signal strings (Linux), which its "signal: ..." wait errors are made of.
_GO_SIGNAL_TEXT = {
    "SIGHUP": "hangup",
    "SIGINT": "interrupt",
    "SIGQUIT": "quit",
    "SIGILL": "illegal instruction",
    "SIGTRAP": "trace/breakpoint trap",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "floating point exception",
    "SIGKILL": "killed",
    "SIGUSR1": "user defined signal 1",
    "SIGSEGV": "segmentation fault",
    "SIGUSR2": "user defined signal 2",
    "SIGPIPE": "broken pipe",
    "SIGALRM": "alarm clock",
    "SIGTERM": "terminated",
    "SIGSTKFLT": "stack fault",
    "SIGCHLD": "child exited",
    "SIGCONT": "continued",
    "SIGSTOP": "stopped (signal)",
    "SIGTSTP": "stopped",
    "SIGTTIN": "stopped (tty input)",
    "SIGTTOU": "stopped (tty output)",
    "SIGURG": "urgent I/O condition",
    "SIGXCPU": "CPU time limit exceeded",
    "SIGXFSZ": "file size limit exceeded",
    "SIGVTALRM": "virtual timer expired",
    "SIGPROF": "profiling timer expired",
    "SIGWINCH": "window changed",
    "SIGIO": "I/O possible",
    "SIGPWR": "power failure",
    "SIGSYS": "bad system call",
}


def wait_error(returncode: int) -> str:
    """Go's text for a child that failed: "exit status N" or "signal: <Go's signal name>"."""
    if returncode < 0:
        try:
            text = _GO_SIGNAL_TEXT.get(signal.Signals(-returncode).name)
        except ValueError:
            text = None
        return f"signal: {text or f'signal {-returncode}'}"
    return f"exit status {returncode}"


def signal_description(number: int) -> str:
    try:
        return f"terminated by signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"terminated by signal {number}"
