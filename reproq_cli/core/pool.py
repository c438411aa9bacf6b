"""Warm executor processes (``--executor pool``): Django starts once, tasks stay isolated.

Each pool process is ``<python_bin> -m <executor_module> --serve`` in its own session. It
speaks JSON lines:

- it announces itself with ``{"ready": true, "pid": N}`` once set up;
- the worker sends one request per task, ``{"result_id": N, "attempt": A, "spec": "<text>"}``;
- it answers ``{"result": <envelope>, "stderr": "<what the task wrote>"}``.

The processes are forked from a fork server (ForkServer); with ``pool_no_fork``, or an
executor module without one, each is started afresh. A process runs one task at a time. The
isolation rules: a process is replaced after ``pool_max_tasks`` tasks or when its RSS passes
``pool_max_memory_mb`` after a task; a task that times out, is cancelled or is stopped by
shutdown has its process group killed and the process replaced; a process that dies fails
only the task it was running, with the signal or exit status as the reason. Results, errors,
retries and leases are the worker's business and behave exactly as with a fresh process per
task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

from reproq_cli.core.executor import (
    CPU_HARD_GRACE,
    CPU_LIMIT,
    KILL_GRACE_SECONDS,
    PIPE_DRAIN_SECONDS,
    STRICT_JSON,
    TICK_SECONDS,
    BoundedBuffer,
    Envelope,
    ExecResult,
    ExecSpec,
    InfraError,
    checked_payload,
    cpu_rlimit,
    cpu_seconds,
    envelope_of,
    kill_group,
    limits_preexec,
    parse_envelope,
    wait_error,
)
from reproq_cli.gojson import GoSyntaxError, raw_members, top_level
from reproq_cli.process import FORK_SERVER_ENV, pidfd

# Django set-up in a fresh process; a process that is not ready by then is considered broken.
STARTUP_TIMEOUT = 120.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
RETIRE_GRACE = 5.0
# A fork server answers a fork request in milliseconds; past this it is considered gone.
FORK_TIMEOUT = 10.0


class _ChildState:
    """How a forked process ended, as its fork server reports it (None while it runs)."""

    def __init__(self) -> None:
        self.returncode: int | None = None


class ForkServer:
    """One executor process set up once (``--serve`` with FORK_SERVER_ENV=1) that forks the
    pool's processes: a replacement then costs a fork instead of a Python and Django start-up
    (~0.45 s of CPU for a small project).

    It is the parent of what it forks, so it reaps them and reports each exit status; an
    executor module that does not know the variable answers like any pool process, without
    ``fork_server``, and the pool then starts every process itself (``usable`` stays False).
    """

    def __init__(self, spec: ExecSpec, env: dict[str, str] | None, cwd: str | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Started like a pool process, address-space cap included: what it forks inherits
            # the cap, as a spawned process gets it.
            self.proc = _spawn(
                spec,
                {**(os.environ if env is None else env), FORK_SERVER_ENV: "1"},
                cwd,
                stdin=theirs,
                stderr=subprocess.DEVNULL,  # its tasks' processes have stderr pipes of their own
            )
        except InfraError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours
        self._requests = threading.Lock()  # one fork request in flight at a time
        self._changed = threading.Condition()
        self._announced = False
        self._forks = False
        self._gone = False
        self.threads = 1  # what the server had running when it announced itself
        self._forked: queue.Queue[tuple[int, _ChildState] | None] = queue.Queue()
        self._children: dict[int, _ChildState] = {}
        threading.Thread(target=self._read_answers, name="reproq-fork-server", daemon=True).start()

    @property
    def usable(self) -> bool:
        return self._forks and not self._gone

    @property
    def gone(self) -> bool:
        return self._gone

    def wait_announced(self, deadline: float) -> bool:
        """Wait for its first line; True when it is a fork server that is ready."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._announced or self._gone, max(deadline - time.monotonic(), 0)
            )
        if self._announced and not self._forks:
            self.close()  # a plain pool process: it is not used as one, the pool starts its own
        return self.usable

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if not isinstance(answer, dict):
                continue
            if "ready" in answer:
                threads = answer.get("threads")
                with self._changed:
                    self._announced = True
                    self._forks = answer.get("fork_server") is True
                    self.threads = threads if isinstance(threads, int) else 1
                    self._changed.notify_all()
            elif "forked" in answer:
                pid = answer["forked"]
                if isinstance(pid, int):
                    state = _ChildState()
                    with self._changed:
                        self._children[pid] = state
                    self._forked.put((pid, state))
                else:
                    self._forked.put(None)
            elif "exited" in answer:
                with self._changed:
                    ended = self._children.pop(answer["exited"], None)
                    if ended is not None:
                        ended.returncode = int(answer.get("returncode", 1))
                    self._changed.notify_all()
        with self._changed:
            self._gone = True
            self._changed.notify_all()
        self._forked.put(None)
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        self.proc.wait()

    def fork(self) -> ForkedProcess | None:
        """A new pool process, or None when the server cannot make one (it is then gone)."""
        with self._requests:
            if not self.usable:
                return None
            pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr
            theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
            try:
                socket.send_fds(self._control, [b'{"fork": true}\n'], theirs)
                forked = self._forked.get(timeout=FORK_TIMEOUT)
            except (OSError, queue.Empty):
                forked = None
            finally:
                for fd in theirs:
                    os.close(fd)
            if forked is None:
                for fd in (pipes[0][1], pipes[1][0], pipes[2][0]):
                    os.close(fd)
                self._abandon()
                return None
            pid, state = forked
            return ForkedProcess(
                self,
                pid,
                state,
                stdin=os.fdopen(pipes[0][1], "wb"),
                stdout=os.fdopen(pipes[1][0], "rb"),
                stderr=os.fdopen(pipes[2][0], "rb"),
            )

    def _abandon(self) -> None:
        """It did not answer: stop it (its children see it go and stop too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with self._changed:
            self._gone = True
            self._changed.notify_all()

    def wait_exit(self, state: _ChildState, timeout: float | None) -> tuple[int | None, bool]:
        """(the reported exit status or None, whether the server is gone), waiting up to
        ``timeout`` for either."""
        with self._changed:
            self._changed.wait_for(lambda: state.returncode is not None or self._gone, timeout)
            return state.returncode, self._gone

    def close(self) -> None:
        """No more forks. The server stays until the processes it made have exited, still
        reporting how each ended, then leaves."""
        with self._requests, contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_WR)


class ForkedProcess:
    """The part of Popen a PoolProcess uses, for a process its fork server made."""

    def __init__(
        self,
        server: ForkServer,
        pid: int,
        state: _ChildState,
        *,
        stdin: IO[bytes],
        stdout: IO[bytes],
        stderr: IO[bytes],
    ) -> None:
        self._server = server
        self.pid = pid
        self._state = state
        self.stdin: IO[bytes] | None = stdin
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self._exit_fd = pidfd(pid)  # None: already gone, or a kernel before 5.3

    @property
    def orphaned(self) -> bool:
        """Its fork server is gone, so it is about to stop itself (die_with_parent) if it
        has not yet: its watcher thread may not have run, and until then it looks alive."""
        # poll() sees the server's exit before its reader thread has read the end of its
        # output.
        return self._server.gone or self._server.proc.poll() is not None

    def poll(self) -> int | None:
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> int:
        returncode = self._wait(timeout)
        if returncode is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return returncode

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        started = time.monotonic()
        returncode, server_gone = self._server.wait_exit(self._state, timeout)
        if returncode is None and server_gone:
            # Nobody will report it: a process left running stops itself with SIGKILL when
            # its server goes (reproq_cli.process.die_with_parent); its pidfd tells when.
            left = None if timeout is None else max(timeout - (time.monotonic() - started), 0)
            if self._exit_fd is not None:
                poller = select.poll()
                poller.register(self._exit_fd, select.POLLIN)
                if not poller.poll(None if left is None else left * 1000):
                    return None
            returncode = -signal.SIGKILL
        if returncode is not None:
            self.returncode = returncode
            if self._exit_fd is not None:
                os.close(self._exit_fd)
                self._exit_fd = None
        return returncode


def _spawn(
    spec: ExecSpec,
    env: dict[str, str] | None,
    cwd: str | None,
    *,
    stdin: int | socket.socket = subprocess.PIPE,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """``<python_bin> -m <executor_module> --serve``: a pool process, or the fork server."""
    try:
        return subprocess.Popen(
            [spec.python_bin, "-m", spec.executor_module, "--serve"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # its own process group: a kill reaches grandchildren
            env=env,
            cwd=cwd,
            # The address-space cap holds for the process's life; CPU time accumulates
            # over its tasks, so that cap is granted afresh before each one (limit_cpu).
            preexec_fn=limits_preexec(dataclasses.replace(spec, task_cpu_limit=0.0)),
        )
    except OSError as exc:
        raise InfraError(f"cannot start {spec.python_bin!r}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:
        raise InfraError(f"cannot apply task resource limits: {exc}") from None


class PoolProcess:
    def __init__(
        self,
        spec: ExecSpec,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        *,
        forked: ForkedProcess | None = None,
    ) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | ForkedProcess = (
            forked if forked is not None else _spawn(spec, env, cwd)
        )
        self.tasks = 0
        self.cpu_at_start = 0.0  # CPU seconds used before the current task
        self.cpu_sample = 0.0  # CPU seconds last seen while the current task ran
        self.cpu_limited = False  # a task runs under --task-cpu-limit (set by limit_cpu)
        self.ready = False
        self._err = BoundedBuffer(spec.max_stderr_bytes)
        self._err_lock = threading.Lock()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        # Answers are read by the task's own thread (poll + os.read) rather than by a reader
        # thread handing lines over a queue: one thread hand-off less per task.
        self._out_fd = self.proc.stdout.fileno()
        self._out_poll = select.poll()
        self._out_poll.register(self._out_fd, select.POLLIN)
        self._pending = bytearray()
        self._eof = False
        self._statm: int | None = None
        # stderr is read by a thread of its own (a task may fill the pipe while it runs) and
        # drained again by take_stderr under the same lock: what the process wrote before its
        # answer is then in the buffer, even when the answer is read first.
        self._err_fd = self.proc.stderr.fileno()
        os.set_blocking(self._err_fd, False)
        self._err_open = True
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def orphaned(self) -> bool:
        return isinstance(self.proc, ForkedProcess) and self.proc.orphaned

    def _read_stderr(self) -> None:
        poller = select.poll()
        poller.register(self._err_fd, select.POLLIN)
        while True:
            # The end of the stream wakes it; the timeout only bounds how long a reader
            # outlives a retire whose pipe a stray grandchild still holds open.
            events = poller.poll(1000)
            with self._err_lock:
                if not self._err_open:
                    return
                if events and not self._drain_stderr():
                    return

    def _drain_stderr(self) -> bool:
        """Move what the pipe holds into the buffer (``_err_lock`` held); False once the
        stream has ended, after which the descriptor is not read again."""
        while True:
            try:
                chunk = os.read(self._err_fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                chunk = b""
            if not chunk:
                self._err_open = False
                return False
            self._err.write(chunk)

    def announced(self) -> None:
        """Its first line arrived: that is the ready announcement. What it wrote to stderr
        while setting up belongs to no task."""
        self.ready = True
        self.take_stderr()

    def take_stderr(self, *, until_closed: bool = False) -> BoundedBuffer:
        """What the process wrote to stderr since the last call (its task's stray output).

        ``until_closed``: the process has ended; wait (briefly) for its last words first.
        """
        if until_closed:
            self._stderr_reader.join(timeout=PIPE_DRAIN_SECONDS)
        with self._err_lock:
            if self._err_open:
                self._drain_stderr()
            taken, self._err = self._err, BoundedBuffer(self.spec.max_stderr_bytes)
        return taken

    def next_line(
        self, deadline: float, tick: Callable[[], str | None] | None
    ) -> tuple[bytes | None, bool, str | None]:
        """(line or None at end of stream, timed out, stopped_for) — whichever comes first."""
        while True:
            end = self._pending.find(b"\n")
            if end >= 0:
                line = bytes(self._pending[: end + 1])
                del self._pending[: end + 1]
                return line, False, None
            if self._eof:
                if self._pending:  # a last line without its newline
                    line, self._pending = bytes(self._pending), bytearray()
                    return line, False, None
                return None, False, None
            if self._out_poll.poll(TICK_SECONDS * 1000):
                try:
                    chunk = os.read(self._out_fd, 65536)
                except OSError:
                    chunk = b""
                if chunk:
                    self._pending += chunk
                else:
                    self._eof = True  # end of stream: the process is gone or going
                if time.monotonic() < deadline:
                    continue
            if self.cpu_limited:
                self.cpu_sample = cpu_seconds(self.pid) or self.cpu_sample
                if self.task_cpu() >= self.spec.task_cpu_limit + CPU_HARD_GRACE:
                    return None, False, CPU_LIMIT  # it ignored SIGXCPU
            if time.monotonic() >= deadline:
                return None, True, None
            reason = tick() if tick is not None else None
            if reason:
                return None, False, reason

    def send(self, request: dict[str, object]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def limit_cpu(self) -> None:
        """Give the next task ``task_cpu_limit`` CPU seconds on top of what the process has
        used so far: the kernel sends SIGXCPU past that.

        Only the soft limit moves: an unprivileged process may lower a hard limit but never
        raise it again, so instead of a hard limit the pool stops a task that ignores SIGXCPU
        itself (next_line), CPU_HARD_GRACE seconds later, as the kernel would.
        """
        if self.spec.task_cpu_limit <= 0:
            return
        used = cpu_seconds(self.pid) or 0.0
        self.cpu_at_start = self.cpu_sample = used
        self.cpu_limited = True
        soft, _ = cpu_rlimit(used, self.spec.task_cpu_limit)
        with contextlib.suppress(OSError, ValueError):  # the process is gone: it fails anyway
            resource.prlimit(self.pid, resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))

    def task_cpu(self) -> float:
        return max(self.cpu_sample - self.cpu_at_start, 0.0)

    def rss_bytes(self) -> int:
        """Resident set size, from /proc/<pid>/statm kept open (one pread after each task)."""
        try:
            if self._statm is None:
                self._statm = os.open(f"/proc/{self.pid}/statm", os.O_RDONLY)
            return int(os.pread(self._statm, 256, 0).split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return 0

    def _close_statm(self) -> None:
        if self._statm is not None:
            with contextlib.suppress(OSError):
                os.close(self._statm)
            self._statm = None

    def kill(self) -> int:
        """SIGTERM the process group, SIGKILL after the grace; returns the exit status."""
        kill_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=KILL_GRACE_SECONDS)
        kill_group(self.pid, signal.SIGKILL)
        self._close_statm()
        return self.proc.wait()

    def retire(self) -> None:
        """Ask politely (end of input ends the serve loop), then insist."""
        self._close_statm()
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=RETIRE_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
        with self._err_lock:  # not while a drain reads it, and never read again after
            self._err_open = False
            for stream in (self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()


class _IdleProcesses(queue.LifoQueue[PoolProcess | None]):
    """Idle processes, the one used last on top.

    A replacement goes to the bottom: it is still setting Django up, and a task handed to it
    would wait for that while a process that is ready sits idle.
    """

    def put_under(self, item: PoolProcess | None) -> None:
        with self.not_empty:
            self.queue.insert(0, item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


class ExecutorPool:
    """``size`` warm processes; ``run_attempt`` matches executor.run_attempt's contract."""

    def __init__(
        self,
        spec: ExecSpec,
        *,
        size: int,
        max_tasks: int,
        max_memory_mb: int,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        on_replace: Callable[[int, str], None] | None = None,
        fork: bool = True,
    ) -> None:
        self.spec = spec
        self.size = size
        self.max_tasks = max_tasks
        self.max_memory = max_memory_mb * 1024 * 1024
        self.env = env
        self.cwd = cwd
        self.on_replace = on_replace
        self.replaced = 0
        self._idle = _IdleProcesses()
        self._closed = False
        self._fork = fork
        self._server: ForkServer | None = None
        self._server_worked = False
        self._restarting = threading.Lock()

    def start(self) -> None:
        """Start the fork server, or every process, now (see ``wait_ready``).

        A process that cannot even be started (no such interpreter) is reported here, once,
        rather than on every task.
        """
        if self._fork:
            self._server = ForkServer(self.spec, self.env, self.cwd)
            for _ in range(self.size):
                self._idle.put(None)  # made by wait_ready, or at the first checkout
            return
        for _ in range(self.size):
            self._idle.put(PoolProcess(self.spec, self.env, self.cwd))

    @property
    def forking(self) -> bool:
        """Whether new processes are forked from the fork server (for the start-up log)."""
        return self._server is not None and self._server.usable

    @property
    def fork_server_threads(self) -> int:
        """Threads the fork server runs (1 when it is not forking)."""
        return self._server.threads if self._server is not None and self.forking else 1

    def _new_process(self) -> PoolProcess:
        """A fork of the fork server when it can make one; otherwise a fresh start."""
        server = self._server
        if server is not None and server.usable:
            self._server_worked = True
            forked = server.fork()
            if forked is not None:
                return PoolProcess(self.spec, forked=forked)
        if server is not None and server.gone and self._server_worked and not self._closed:
            with self._restarting:  # task threads replace processes concurrently: one successor
                if self._server is server and self._server_worked:
                    # It was killed: this process starts fresh, later ones fork from its
                    # successor once that is set up.
                    self._server_worked = False
                    if self.on_replace is not None:
                        self.on_replace(server.proc.pid, "fork server gone; starting another")
                    with contextlib.suppress(InfraError):
                        self._server = ForkServer(self.spec, self.env, self.cwd)
        return PoolProcess(self.spec, self.env, self.cwd)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """Wait for the processes' ready announcements; returns how many are ready.

        The worker waits before its first claim: a task claimed while Django is still being
        set up holds its lease with nothing running it, when another worker with a warm pool
        could have run it. A process that dies or stays silent is left to ``run_attempt``,
        which replaces it or fails the attempt with the reason, as it would later on.
        """
        deadline = time.monotonic() + timeout
        if self._server is not None:
            self._server.wait_announced(deadline)
        processes = [self._idle.get() for _ in range(self._idle.qsize())]
        for i, process in enumerate(processes):
            if process is None:
                with contextlib.suppress(InfraError):
                    processes[i] = self._new_process()
        for process in processes:
            if process is None or process.ready:
                continue
            line, timed_out, _ = process.next_line(deadline, None)
            if line is not None and not timed_out:
                process.announced()
        for process in reversed(processes):  # the LIFO queue keeps its order
            self._idle.put(process)
        return sum(1 for process in processes if process is not None and process.ready)

    def _checkout(self) -> PoolProcess:
        while True:
            process = self._idle.get()
            if process is None:  # a slot whose process is yet to be made, or failed to start
                return self._new_process()
            if process.orphaned:
                # A task handed to it would be lost with it, and charged an attempt.
                self._replace(process, "its fork server is gone", kill=False)
            elif process.proc.poll() is None:
                return process
            else:
                self._replace(process, "exited while idle", kill=False)

    def _checkin(self, process: PoolProcess) -> None:
        if self._closed:
            process.retire()
            return
        self._idle.put(process)

    def _replace(self, process: PoolProcess, reason: str, *, kill: bool) -> None:
        """Put a fresh process in this one's place; the old one is stopped in the background."""
        self.replaced += 1
        if self.on_replace is not None:
            self.on_replace(process.pid, reason)
        if kill:
            process.kill()
        else:
            threading.Thread(target=process.retire, daemon=True).start()
        if self._closed:
            return
        try:
            self._idle.put_under(self._new_process())
        except InfraError:
            self._idle.put_under(None)  # try again at the next checkout

    def run_attempt(
        self,
        *,
        result_id: int,
        attempt: int,
        payload: str,
        timeout: float,
        tick: Callable[[], str | None] | None = None,
    ) -> ExecResult:
        checked_payload(payload, self.spec.max_payload_bytes)
        process = self._checkout()
        started = time.monotonic()
        deadline = started + timeout
        if not process.ready:
            line, timed_out, stopped_for = process.next_line(
                min(deadline, started + STARTUP_TIMEOUT), tick
            )
            if timed_out and time.monotonic() < deadline:
                process.kill()
                self._replace(process, "not ready in time", kill=False)
                raise InfraError(f"executor pool process was not ready within {STARTUP_TIMEOUT:g}s")
            if line is None or timed_out or stopped_for:
                return self._lost(process, started, timed_out, stopped_for, during_startup=True)
            process.announced()
        process.limit_cpu()
        if not process.send({"result_id": result_id, "attempt": attempt, "spec": payload}):
            return self._lost(process, started, False, None, during_startup=False)
        line, timed_out, stopped_for = process.next_line(deadline, tick)
        if line is None:
            return self._lost(process, started, timed_out, stopped_for, during_startup=False)
        duration = time.monotonic() - started
        process.cpu_limited = False
        err = process.take_stderr()
        result_text, task_stderr, envelope = read_answer(line)
        err.write(task_stderr.encode("utf-8"))
        process.tasks += 1
        if self.spec.task_memory_limit_mb and envelope.exception_class.endswith("MemoryError"):
            # The task hit the address-space cap; a heap left fragmented by it is not handed
            # to the next task.
            self._replace(process, "task hit the memory limit", kill=False)
        else:
            self._recycle_or_keep(process)
        result = ExecResult(
            stdout=result_text,
            stderr=err.text(),
            returncode=0 if envelope.ok else 1,
            duration=duration,
        )
        result.envelope = envelope
        return result

    def _recycle_or_keep(self, process: PoolProcess) -> None:
        if process.tasks >= self.max_tasks:
            self._replace(process, f"ran {process.tasks} tasks", kill=False)
        elif self.max_memory and (rss := process.rss_bytes()) > self.max_memory:
            self._replace(process, f"RSS {rss // (1024 * 1024)} MB over the limit", kill=False)
        else:
            self._checkin(process)

    def _lost(
        self,
        process: PoolProcess,
        started: float,
        timed_out: bool,
        stopped_for: str | None,
        *,
        during_startup: bool,
    ) -> ExecResult:
        """The process cannot go on: stopped by us (timeout, cancel, shutdown) or died."""
        if timed_out or stopped_for:
            returncode = process.kill()
            reason = "timed out" if timed_out else stopped_for or "stopped"
        else:
            try:
                returncode = process.proc.wait(timeout=KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:  # stdout closed but still alive: make sure
                returncode = process.kill()
            reason = "died during start-up" if during_startup else "died"
        err = process.take_stderr(until_closed=True)
        last_words = _last_line(err.text(with_marker=False))
        self._replace(process, reason, kill=False)
        if not (timed_out or stopped_for) and returncode != 0:
            err.write(wait_error(returncode).encode())
        result = ExecResult(
            stdout="",
            stderr=err.text(),
            returncode=returncode,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            stopped_for=stopped_for,
            cpu_seconds=process.task_cpu(),
        )
        if not timed_out and stopped_for is None:
            if during_startup:
                raise InfraError(
                    "executor pool process exited before it was ready: "
                    + (last_words or wait_error(returncode))
                )
            result.envelope = parse_envelope("")
        return result

    def close(self) -> None:
        """Retire idle processes; busy ones are finished by their task threads."""
        self._closed = True
        retiring = []
        while True:
            try:
                process = self._idle.get_nowait()
            except queue.Empty:
                break
            if process is not None:
                thread = threading.Thread(target=process.retire, daemon=True)
                thread.start()
                retiring.append(thread)
        for thread in retiring:
            thread.join(timeout=RETIRE_GRACE + KILL_GRACE_SECONDS + 1)
        if self._server is not None:
            self._server.close()


# How reproq_django.executor writes an answer: {"result": <envelope>, "stderr": "<text>"}.
_ANSWER_HEAD = '{"result": '
_ANSWER_STDERR = ', "stderr": "'


def read_answer(line: bytes) -> tuple[str, str, Envelope]:
    """(the envelope as written, the task's stderr, the envelope) from one answer line.

    An answer laid out as reproq_django.executor writes it is decoded once: its envelope's
    extent and value come from one pass. Anything else, or anything that pass refuses, goes
    the general way (_decode_response, then parse_envelope), which decodes it three times
    but words every error as Go's decoder would."""
    try:
        text = line.decode("utf-8")
        if text.startswith(_ANSWER_HEAD):
            start = len(_ANSWER_HEAD)
            value, end = STRICT_JSON.raw_decode(text, start)
            if text.startswith(_ANSWER_STDERR, end):
                stderr, after = json.decoder.scanstring(text, end + len(_ANSWER_STDERR))
                if text[after:].strip() == "}":
                    raw = text[start:end]
                    return raw, stderr, envelope_of(value, raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        pass
    raw, stderr = _decode_response(line)
    return raw, stderr, parse_envelope(raw)


def _decode_response(line: bytes) -> tuple[str, str]:
    """(the envelope as the process wrote it, the task's stderr); a garbled line fails the
    envelope. The envelope is passed on as written, not decoded and encoded again: as with
    spawn mode's stdout, a return value keeps its text (2.50 its scale, 1E2 its form, and
    1e400 stays a number, where re-encoding made it an Infinity that jsonb refuses)."""
    try:
        text = line.decode("utf-8")
        response = json.loads(text)
    except ValueError:  # UnicodeDecodeError included
        return line.decode("utf-8", errors="replace"), ""
    except RecursionError:  # nested past Python's decoder, which Go's would take
        try:
            response = top_level(text)
        except GoSyntaxError:
            return text, ""
    if not isinstance(response, dict) or "result" not in response:
        return text, ""
    stderr = response.get("stderr")
    return raw_members(text, fold_case=False)["result"], stderr if isinstance(stderr, str) else ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""
