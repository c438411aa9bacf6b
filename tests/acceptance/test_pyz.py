"""The single-file build: runs from anywhere with a plain Python, stays lean, is reproducible."""

from __future__ import annotations

import hashlib
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from reproq_cli import __version__
from tests.conftest import REPO_ROOT
from tests.support.pyz import build_pyz, plain_python

# What the worker needs and `--help` does not (rich only draws tables and errors).
HEAVY = ("psycopg", "psycopg_pool", "yaml", "prometheus_client", "rich")


def imports(pyz, cwd: Path, flag: str, env: dict[str, str]) -> tuple[set[str], str]:
    """The modules ``<plain python> -X importtime reproq.pyz FLAG`` imported, and its stdout."""
    done = subprocess.run(
        [plain_python(), "-X", "importtime", str(pyz.path), flag],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", done.stderr, re.M)
    return set(names), done.stdout


def test_pyz_runs_anywhere_with_a_plain_python(pyz, tmp_path, empty_db_dsn):
    v = sys.version_info
    assert pyz.path.name == (
        f"reproq-{platform.system().lower()}-{platform.machine().lower()}-py{v[0]}{v[1]}.pyz"
    )
    assert pyz.checksum.read_text() == (
        f"{hashlib.sha256(pyz.path.read_bytes()).hexdigest()}  {pyz.path.name}\n"
    )

    version = pyz.run("--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"reproq {__version__}\n"), version.stderr

    # The code that runs is the zipapp's own copy, not the checkout's or a virtualenv's.
    probe = pyz.run(
        "-c",
        "import reproq_cli, reproq_cli.sql; print(reproq_cli.__file__)",
        cwd=tmp_path,
        env=pyz.env(SHIV_INTERPRETER="1"),
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(pyz.shiv_root)), probe.stdout

    names = set(zipfile.ZipFile(pyz.path).namelist())
    assert "site-packages/reproq_cli/sql/queries.sql" in names
    assert "site-packages/reproq_cli/sql/migrations/0001_baseline.sql" in names

    migrated = pyz.run("migrate", "--dsn", empty_db_dsn, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert pyz.run("migrate", "--check", "--dsn", empty_db_dsn, cwd=tmp_path).returncode == 0
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM rate_limits").fetchone() == (1,)


def test_help_imports_nothing_heavy(pyz, tmp_path):
    done = pyz.run("--help", cwd=tmp_path)  # unpacks first, so importtime sees a warm start
    assert done.returncode == 0 and "worker" in done.stdout, done.stderr
    imported, _ = imports(pyz, tmp_path, "--help", pyz.env())
    assert {"click", "reproq_cli.console"} <= imported  # the CLI really loaded
    # Unpacked already: shiv's bootstrap (compileall, subprocess, zipfile, ...) is skipped.
    assert not {"_bootstrap", "compileall", "zipfile"} & imported
    # Imported where they are used (an error with -v, JSON output): a few ms each of the
    # 150 ms that `--help` may take.
    assert not {"json", "traceback"} & imported
    heavy = sorted(
        name
        for name in imported
        if name.split(".")[0] in HEAVY
        or name.startswith(("reproq_cli.core", "reproq_cli.db", "reproq_cli.commands."))
    )
    assert heavy == []


def test_shiv_overrides_still_go_through_its_bootstrap(pyz, tmp_path):
    """The zipapp's own __main__ leaves to shiv's bootstrap what only it knows: the first run
    (unpacking) and SHIV_* variables such as SHIV_FORCE_EXTRACT."""
    fresh = tmp_path / "fresh-root"
    first, said = imports(pyz, tmp_path, "--version", pyz.env(SHIV_ROOT=str(fresh)))
    assert "_bootstrap" in first and said == f"reproq {__version__}\n"
    (unpacked,) = fresh.glob(f"{pyz.path.name}_*/site-packages")
    marker = unpacked / "reproq_cli" / "marker-left-by-the-test"
    marker.write_text("")
    forced, said = imports(
        pyz, tmp_path, "--version", pyz.env(SHIV_ROOT=str(fresh), SHIV_FORCE_EXTRACT="1")
    )
    assert "_bootstrap" in forced and said == f"reproq {__version__}\n"
    assert not marker.exists()  # unpacked again, as shiv does when forced
    warm, said = imports(pyz, tmp_path, "--version", pyz.env(SHIV_ROOT=str(fresh)))
    assert "_bootstrap" not in warm and said == f"reproq {__version__}\n"


def snapshot(destination: Path) -> Path:
    """A copy of the working tree (what git would commit) frozen at one moment."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.mark.slow
def test_building_twice_gives_the_same_bytes(pyz, tmp_path):
    """Two checkouts of the same tree, at different paths and under different umasks."""
    first = snapshot(tmp_path / "checkout-one")
    second = tmp_path / "elsewhere" / "checkout-two"
    shutil.copytree(first, second)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    with ThreadPoolExecutor(2) as pool:  # side by side: the builds are independent
        building = [
            pool.submit(build_pyz, tmp_path / "one", checkout=first, env=env, umask=0o077),
            pool.submit(build_pyz, tmp_path / "two", checkout=second, env=env, umask=0o022),
        ]
        one, two = (future.result() for future in building)
    assert one.name == two.name == pyz.path.name
    assert one.read_bytes() == two.read_bytes()
    assert one.with_name(one.name + ".sha256").read_bytes() == (
        two.with_name(two.name + ".sha256").read_bytes()
    )
    # Nothing in it names the machine: not the checkout, not the interpreter that built it.
    archive = zipfile.ZipFile(one)
    machine = [str(first).encode(), sys.prefix.encode(), sys.base_prefix.encode()]
    leaks = [name for name in archive.namelist() if any(m in archive.read(name) for m in machine)]
    assert leaks == []
