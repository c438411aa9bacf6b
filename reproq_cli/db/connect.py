"""Connections and pools, and the one place connection failures become user errors.

A DSN may be a URL (``postgresql://…``) or libpq key=value text; libpq's ``PG*`` environment
variables fill in whatever it leaves out. A server that does not answer is reported as one line,
``cannot connect to <dsn with the password masked>: <reason>``, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from reproq_cli.config import mask_dsn, mask_secrets
from reproq_cli.db.queries import query
from reproq_cli.errors import ConfigError, DatabaseError, SchemaError

DEFAULT_CONNECT_TIMEOUT = 10
# libpq variables that on their own say where the database is.
LIBPQ_LOCATION_ENV = ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGDATABASE")

DSN_REQUIRED = "DSN required (use --dsn, DATABASE_URL, or config file)"

# The pool logs its reconnection attempts through the "psycopg" logger; reproq reports
# database trouble itself, so keep Python's last-resort handler from printing them raw.
logging.getLogger("psycopg").addHandler(logging.NullHandler())


def describe_target(dsn: str) -> str:
    return mask_dsn(dsn) if dsn else "(libpq defaults from PG* environment variables)"


def one_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # libpq messages run over several lines ("connection failed: …\n\tIs the server…");
    # one line is what the user sees.
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def connection_kwargs(dsn: str) -> dict[str, Any]:
    """Validated keyword arguments for psycopg: a parse error is a config error."""
    try:
        parsed = conninfo.conninfo_to_dict(dsn)
    except (psycopg.ProgrammingError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            # A percent-encoded value (%A0) that is not UTF-8. Its text quotes the bytes,
            # which may be part of the password: only the reason is shown.
            reason = f"a percent-encoded value is not UTF-8 ({exc.reason})"
        else:
            reason = mask_secrets(one_line(exc), dsn)
        raise ConfigError(
            f"invalid DSN {mask_dsn(dsn)!r}: {reason}",
            hint="use postgresql://user:pass@host:5432/db or 'host=… dbname=… user=…'",
        ) from None
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in parsed:
        kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    return kwargs


def connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[dict[str, Any]]:
    """One connection with dict rows; failures become ``DatabaseError`` with the masked DSN."""
    kwargs = connection_kwargs(dsn)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row, **kwargs)
    except psycopg.Error as exc:
        raise cannot_connect(dsn, exc) from None


def cannot_connect(dsn: str, exc: Exception) -> DatabaseError:
    return DatabaseError(
        f"cannot connect to {describe_target(dsn)}: {mask_secrets(one_line(exc), dsn)}",
        hint="check the DSN (--dsn, DATABASE_URL or the config file) and that the server is up",
    )


def worker_session(conn: psycopg.Connection[dict[str, Any]]) -> None:
    conn.execute(query("worker_session"))


def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    timeout: float = 30.0,
    worker: bool = False,
) -> ConnectionPool[psycopg.Connection[dict[str, Any]]]:
    """A psycopg pool sized like the Go worker's (min 2, max 20), checked at start.

    ``worker``: every connection gets the worker's session settings (worker_session)."""
    # One direct attempt first: it fails fast with libpq's own reason, where the pool would
    # retry in the background until its timeout.
    connect(dsn).close()
    kwargs: dict[str, Any] = {
        **connection_kwargs(dsn),
        "autocommit": True,
        "row_factory": dict_row,
    }
    pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        max_lifetime=3600,
        max_idle=1800,
        timeout=timeout,
        open=False,
        name="reproq",
        configure=worker_session if worker else None,
    )
    try:
        pool.open(wait=True, timeout=DEFAULT_CONNECT_TIMEOUT + 5)
        with pool.connection() as conn:
            conn.execute(query("ping"))
    except (psycopg.Error, PoolTimeout) as exc:
        pool.close()
        raise cannot_connect(dsn, exc) from None
    return pool


@contextlib.contextmanager
def connection(
    dsn: str, *, autocommit: bool = True
) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    conn = connect(dsn, autocommit=autocommit)
    try:
        yield conn
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        # An operator command against a database reproq never set up (or set up by an older
        # version): say which, instead of an internal error.
        raise SchemaError(
            f"{describe_target(dsn)} lacks reproq's schema: {one_line(exc)}",
            hint="run `reproq migrate` against it (or check the DSN)",
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            f"{describe_target(dsn)}: {one_line(exc)}",
            hint="connect as a role that has the privilege, or have the table's owner grant it",
        ) from None
    except psycopg.Error as exc:
        # The server refused the statement (a constraint, a lock timeout, ...): a one-line
        # failure, exit 1 as the Go worker's fatal, not a report of a bug in reproq.
        raise DatabaseError(
            f"{describe_target(dsn)}: {one_line(exc)}",
            hint="nothing was changed by the failed statement; fix what the message names",
        ) from None
    finally:
        conn.close()


def has_libpq_location(env: Mapping[str, str]) -> bool:
    return any(env.get(name) for name in LIBPQ_LOCATION_ENV)


def require_dsn(dsn: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The DSN to use, falling back to the embedded server when none is configured.

    Returns the DSN and, when the embedded server was chosen, the notice to show the user.
    """
    from reproq_cli.db import embedded

    if dsn or has_libpq_location(env):
        return dsn, None
    if not embedded.fallback_enabled(env):
        raise ConfigError(DSN_REQUIRED, hint="set --dsn, DATABASE_URL or `dsn:` in reproq.yaml")
    try:
        url = embedded.start(env)
    except ConfigError:
        raise ConfigError(
            DSN_REQUIRED,
            hint="set --dsn, DATABASE_URL or `dsn:` in reproq.yaml; or "
            f"{embedded.INSTALL_HINT} for a built-in database",
        ) from None
    notice = (
        f"reproq: no DSN configured; using the embedded PostgreSQL at {url} "
        f"(set {embedded.DIR_ENV} to move it, REPROQ_EMBEDDED=0 to turn this off)"
    )
    return url, notice


class Interruptible:
    """Statements a stop may cancel. A connection is registered while it runs them
    (``running``); ``interrupt`` cancels the registered ones, and no registration succeeds
    after it: one waiting on a lock would otherwise hold the stop up until the lock is released.

    The lock keeps a connection registered (so not back in a pool) while a cancel request for
    it is in flight; a cancel that reaches an idle connection is ignored by the server."""

    def __init__(self, refusal: str) -> None:
        self._refusal = refusal
        self._lock = threading.Lock()
        self._running: set[psycopg.Connection[Any]] = set()
        self._interrupted = False

    @contextlib.contextmanager
    def running(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Run the block's statements on ``conn`` cancellably; DatabaseError(refusal) once
        interrupted."""
        with self._lock:
            if self._interrupted:
                raise DatabaseError(self._refusal)
            self._running.add(conn)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(conn)

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            for conn in self._running:
                # If the cancel fails, the statement ends on its own and the stop waits for it.
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=5.0)
