"""Every configuration setting of worker and beat: key, type, default, env var and flag.

This table is the single description of the configuration surface (go-worker.md §1.1, §1.2,
§2.3). The loader in ``reproq_cli.config`` resolves it; the worker and beat commands build their
flags from it; ``reproq config --explain`` prints it with sources.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "int", "float", "duration", "list", "queues", "bool"]
Mode = Literal["worker", "beat"]

CONFIG_ENV = "REPROQ_CONFIG"
CONFIG_FILENAMES: tuple[str, ...] = (
    "reproq.yaml",
    "reproq.yml",
    "reproq.toml",
    ".reproq.yaml",
    ".reproq.yml",
    ".reproq.toml",
)
DSN_ENV = "DATABASE_URL"
EMBEDDED_ENV = "REPROQ_EMBEDDED"
DEFAULT_EXECUTOR_MODULE = "reproq_django.executor"
# Replaces the built-in python3 default only (a config file, env or flag still wins): set by
# `manage.py reproq worker` so tasks run in the interpreter that runs the project.
DEFAULT_PYTHON_BIN_ENV = "REPROQ_DEFAULT_PYTHON_BIN"
PAYLOAD_MODES: tuple[str, ...] = ("stdin", "file", "inline")
EXECUTOR_KINDS: tuple[str, ...] = ("spawn", "pool", "ray")
DEFAULT_ALLOWED_TASK_MODULES: tuple[str, ...] = ("myapp.tasks.", "tasks.")


# The most seconds a Go time.Duration holds (2562047h): the Go worker turns these settings
# into durations, and a lease past it is more than PostgreSQL's interval arithmetic takes.
MAX_SECONDS = (2**63 - 1) // 1_000_000_000


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Setting:
    """One configuration value.

    ``file_keys`` are read in order, later keys winning (``worker.dsn`` beats root ``dsn``).
    ``default`` may be a callable for values computed at resolve time.
    ``minimum`` is the smallest accepted value for numbers and durations (in seconds),
    ``maximum`` the largest.
    """

    key: str
    kind: Kind
    default: Any
    file_keys: tuple[str, ...]
    env: str | None = None
    flag: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    strictly_positive: bool = False
    choices: tuple[str, ...] | None = None
    secret: bool = False
    help: str = ""

    def default_value(self) -> Any:
        value = self.default() if callable(self.default) else self.default
        return list(value) if isinstance(value, list | tuple) else value


def _s(key: str, kind: Kind, default: Any | Callable[[], Any], **kw: Any) -> Setting:
    file_keys = kw.pop("file_keys", (key,))
    return Setting(key=key, kind=kind, default=default, file_keys=file_keys, **kw)


WORKER_SETTINGS: tuple[Setting, ...] = (
    _s(
        "dsn",
        "str",
        "",
        file_keys=("dsn", "worker.dsn"),
        env=DSN_ENV,
        flag="--dsn",
        secret=True,
        help="PostgreSQL DSN (URL or key=value)",
    ),
    _s(
        "worker.worker_id",
        "str",
        default_worker_id,
        env="WORKER_ID",
        flag="--worker-id",
        help="worker identity: lease owner and registry key",
    ),
    _s(
        "worker.process_role",
        "str",
        "worker",
        env="REPROQ_PROCESS_ROLE",
        flag="--process-role",
        help="role label added to event metadata",
    ),
    _s(
        "worker.queues",
        "queues",
        ["default"],
        env="QUEUE_NAMES",
        flag="--queues",
        help="queues to poll, round-robin (comma list)",
    ),
    _s(
        "worker.allowed_task_modules",
        "list",
        [],
        env="ALLOWED_TASK_MODULES",
        flag="--allowed-task-modules",
        help="task_path prefix allow-list (comma list; * allows all)",
    ),
    _s(
        "worker.concurrency",
        "int",
        10,
        flag="--concurrency",
        minimum=1,
        # Two runner threads per slot are started at once: an extra digit must not take the
        # host's memory (each task is a process; nobody runs thousands on one worker).
        maximum=1000,
        help="maximum tasks running at once (1 to 1000)",
    ),
    _s(
        "worker.lease_seconds",
        "int",
        300,
        flag="--lease-seconds",
        minimum=1,
        maximum=MAX_SECONDS,
        help="lease length in seconds",
    ),
    _s(
        "worker.heartbeat_seconds",
        "int",
        60,
        flag="--heartbeat-seconds",
        minimum=0,
        maximum=MAX_SECONDS,
        help="lease renewal interval in seconds (0 disables heartbeats and cancellation)",
    ),
    _s(
        "worker.reclaim_interval_seconds",
        "int",
        60,
        flag="--reclaim-interval-seconds",
        minimum=0,
        maximum=MAX_SECONDS,
        help="expired-lease reclaim interval in seconds (0 disables)",
    ),
    _s(
        "worker.poll_min_backoff",
        "duration",
        0.1,
        minimum=0,
        help="shortest sleep between empty polls",
    ),
    _s(
        "worker.poll_max_backoff",
        "duration",
        5.0,
        minimum=0,
        help="longest sleep between empty polls",
    ),
    _s(
        "worker.no_listen",
        "bool",
        False,
        env="REPROQ_NO_LISTEN",
        flag="--no-listen",
        help="poll only, without LISTEN for new tasks (for PgBouncer transaction pooling)",
    ),
    _s(
        "worker.python_bin",
        "str",
        lambda: os.environ.get(DEFAULT_PYTHON_BIN_ENV) or "python3",
        help="Python interpreter for the executor (manage.py reproq worker: its own Python)",
    ),
    _s(
        "worker.executor_module",
        "str",
        DEFAULT_EXECUTOR_MODULE,
        help="module run as `python -m <module>` for each task",
    ),
    _s(
        "worker.payload_mode",
        "str",
        "stdin",
        flag="--payload-mode",
        choices=PAYLOAD_MODES,
        help="how the spec reaches the executor: stdin, file or inline",
    ),
    _s(
        "worker.executor",
        "str",
        "spawn",
        env="REPROQ_EXECUTOR",
        flag="--executor",
        choices=EXECUTOR_KINDS,
        help="spawn: a new process per task (as Go); pool: warm processes, recycled; "
        "ray: Ray remote tasks on a cluster",
    ),
    _s(
        "worker.ray_address",
        "str",
        "auto",
        env="REPROQ_RAY_ADDRESS",
        flag="--ray-address",
        help="ray: the cluster (auto, host:port, ray://host:10001) or local (start one here)",
    ),
    _s(
        "worker.ray_runtime_env",
        "str",
        "",
        env="REPROQ_RAY_RUNTIME_ENV",
        help="ray: runtime_env JSON for the tasks (pip, working_dir, env_vars ...)",
    ),
    _s(
        "worker.pool_max_tasks",
        "int",
        1000,
        env="REPROQ_POOL_MAX_TASKS",
        flag="--pool-max-tasks",
        minimum=1,
        help="pool: tasks a process runs before it is replaced",
    ),
    _s(
        "worker.pool_max_memory_mb",
        "int",
        512,
        env="REPROQ_POOL_MAX_MEMORY_MB",
        flag="--pool-max-memory-mb",
        minimum=0,
        help="pool: replace a process whose RSS exceeds this after a task (0: no limit)",
    ),
    _s(
        "worker.pool_no_fork",
        "bool",
        False,
        env="REPROQ_POOL_NO_FORK",
        flag="--pool-no-fork",
        help="pool: start each process afresh instead of forking it from one set-up process",
    ),
    _s(
        "worker.task_memory_limit",
        "int",
        0,
        env="REPROQ_TASK_MEMORY_LIMIT",
        flag="--task-memory-limit",
        minimum=0,
        help="address-space cap per executor process in MiB (RLIMIT_AS; 0: none)",
    ),
    _s(
        "worker.task_cpu_limit",
        "int",
        0,
        env="REPROQ_TASK_CPU_LIMIT",
        flag="--task-cpu-limit",
        minimum=0,
        help="CPU seconds per task attempt (RLIMIT_CPU; 0: none)",
    ),
    _s("worker.max_payload_bytes", "int", 1048576, minimum=1, help="largest spec sent to a task"),
    _s("worker.max_stdout_bytes", "int", 1048576, minimum=1, help="stdout kept per attempt"),
    _s("worker.max_stderr_bytes", "int", 1048576, minimum=1, help="stderr kept per attempt"),
    _s(
        "worker.logs_dir",
        "str",
        "",
        env="REPROQ_LOGS_DIR",
        flag="--logs-dir",
        help="directory for per-attempt stdout/stderr files (empty disables)",
    ),
    _s(
        "worker.exec_timeout",
        "duration",
        3600.0,
        strictly_positive=True,
        help="upper bound on any task's run time",
    ),
    _s(
        "worker.max_attempts_default",
        "int",
        3,
        minimum=1,
        help="attempts for rows without max_attempts",
    ),
    _s(
        "worker.shutdown_timeout",
        "duration",
        30.0,
        minimum=0,
        help="how long a warm shutdown waits for running tasks",
    ),
    _s(
        "worker.priority_aging_factor",
        "float",
        60.0,
        env="PRIORITY_AGING_FACTOR",
        flag="--priority-aging-factor",
        help="seconds of waiting per +1 priority (<= 0 disables aging)",
    ),
    _s(
        "metrics.addr",
        "str",
        "",
        env="METRICS_ADDR",
        flag="--metrics-addr",
        help="HTTP listen address for /metrics, /healthz, /events (overrides port)",
    ),
    _s(
        "metrics.port",
        "int",
        0,
        flag="--metrics-port",
        minimum=0,
        maximum=65535,
        help="serve HTTP on :<port> when > 0",
    ),
    _s(
        "metrics.auth_token",
        "str",
        "",
        env="METRICS_AUTH_TOKEN",
        flag="--metrics-auth-token",
        secret=True,
        help="bearer token (also the HS256 secret of TUI tokens)",
    ),
    _s(
        "metrics.allow_cidrs",
        "list",
        [],
        env="METRICS_ALLOW_CIDRS",
        flag="--metrics-allow-cidrs",
        help="IP/CIDR allow-list (comma list; localhost allowed)",
    ),
    _s(
        "metrics.auth_limit",
        "int",
        30,
        env="METRICS_AUTH_LIMIT",
        flag="--metrics-auth-limit",
        minimum=None,  # >= 1 is checked by config._check_limiter (when, as Go does)
        help="denied requests allowed per window per host",
    ),
    _s(
        "metrics.auth_window",
        "duration",
        60.0,
        env="METRICS_AUTH_WINDOW",
        flag="--metrics-auth-window",
        strictly_positive=True,
        help="rate-limiter window",
    ),
    _s(
        "metrics.auth_max_entries",
        "int",
        1000,
        env="METRICS_AUTH_MAX_ENTRIES",
        flag="--metrics-auth-max-entries",
        minimum=None,  # >= 1 is checked by config._check_limiter (when, as Go does)
        help="most hosts the limiter tracks",
    ),
    _s(
        "metrics.tls_cert",
        "str",
        "",
        env="METRICS_TLS_CERT",
        flag="--metrics-tls-cert",
        help="TLS certificate path",
    ),
    _s(
        "metrics.tls_key",
        "str",
        "",
        env="METRICS_TLS_KEY",
        flag="--metrics-tls-key",
        help="TLS private key path",
    ),
    _s(
        "metrics.tls_client_ca",
        "str",
        "",
        env="METRICS_TLS_CLIENT_CA",
        flag="--metrics-tls-client-ca",
        help="CA bundle; when set, clients need a certificate",
    ),
)

BEAT_SETTINGS: tuple[Setting, ...] = (
    _s(
        "dsn",
        "str",
        "",
        file_keys=("dsn", "beat.dsn"),
        env=DSN_ENV,
        flag="--dsn",
        secret=True,
        help="PostgreSQL DSN (URL or key=value)",
    ),
    _s(
        "beat.interval",
        "duration",
        30.0,
        flag="--interval",
        strictly_positive=True,
        help="time between scheduling passes",
    ),
)

SETTINGS_BY_MODE: dict[Mode, tuple[Setting, ...]] = {
    "worker": WORKER_SETTINGS,
    "beat": BEAT_SETTINGS,
}

# Keys a config file may hold, for the unknown-key warning (beat and worker share one file).
KNOWN_FILE_KEYS: frozenset[str] = frozenset(
    key for settings in SETTINGS_BY_MODE.values() for s in settings for key in s.file_keys
)
