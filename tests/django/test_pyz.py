"""The zipapp with Django: a worker run from it, `manage.py reproq install/upgrade`, check."""

from __future__ import annotations

import functools
import io
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from django.tasks import TaskResultStatus

from reproq_cli import __version__
from reproq_django.binary import asset_name, release_url
from tests.django.sampleapp import tasks
from tests.support.pyz import executor_python

DJANGO_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.django.settings",
    "REPROQ_TEST_DJANGO_DSN": os.environ["REPROQ_TEST_DJANGO_DSN"],
}


def manage(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reproq", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def worker_config(directory: Path, **extra: object) -> None:
    """reproq.yaml whose executor children are this virtualenv's Python with Django."""
    worker = {
        "python_bin": str(executor_python(directory, **DJANGO_ENV)),
        "executor_module": "reproq_django.executor",
        "allowed_task_modules": ["tests.django.sampleapp.tasks."],
        "queues": ["default", "high"],
        "poll_min_backoff": "10ms",
        "poll_max_backoff": "50ms",
    }
    (directory / "reproq.yaml").write_text(yaml.safe_dump({**extra, "worker": worker}))


@pytest.mark.django_db(transaction=True)
def test_pyz_worker_runs_a_django_task(pyz, tmp_path):
    """A plain Python, a scrubbed environment and a temp cwd: the zipapp claims the task and
    runs it through reproq_django.executor in the project's interpreter."""
    result = tasks.add.enqueue(20, 22)
    worker_config(tmp_path, dsn=os.environ["REPROQ_TEST_DJANGO_DSN"])
    run = pyz.run("worker", "--burst", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors_json
    assert result.return_value == 42


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class ReleaseServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # install drops the asset's connection when the checksum is missing: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture
def project(tmp_path, pyz, monkeypatch) -> Path:
    """An empty project directory as the cwd: the install target is ./.reproq/bin/reproq."""
    monkeypatch.setenv("SHIV_ROOT", str(pyz.shiv_root))
    path = tmp_path / "project"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


@pytest.fixture
def releases(tmp_path, project, monkeypatch) -> Iterator[Path]:
    """A loopback release server serving this directory; REPROQ_RELEASE_URL points at it."""
    root = tmp_path / "releases"
    root.mkdir()
    server = ReleaseServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    monkeypatch.setenv(
        "REPROQ_RELEASE_URL", f"http://127.0.0.1:{server.server_port}/{{tag}}/{{asset}}"
    )
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()


def publish(root: Path, tag: str, data: bytes, checksum: bytes | None) -> None:
    folder = root / tag
    folder.mkdir()
    (folder / asset_name()).write_bytes(data)
    if checksum is not None:
        (folder / f"{asset_name()}.sha256").write_bytes(checksum)


def installed_files() -> list[str]:
    """Everything under ./.reproq (temporary files included)."""
    return sorted(str(p) for p in Path(".reproq").rglob("*"))


def test_install_downloads_verifies_and_installs(releases, pyz):
    assert pyz.path.name == asset_name()  # build/shiv.sh makes what install asks for
    publish(releases, f"v{__version__}", pyz.path.read_bytes(), pyz.checksum.read_bytes())
    out, err = manage("install")  # the default tag is this version's
    target = Path(".reproq/bin/reproq").resolve()
    assert out.strip() == f"Installed reproq {__version__} at {target}"
    assert f"/v{__version__}/{asset_name()}" in err
    assert "Checksum OK" in err
    assert target.read_bytes() == pyz.path.read_bytes()
    assert os.access(target, os.X_OK)
    assert installed_files() == [".reproq/bin", ".reproq/bin/reproq"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tampered", "checksum mismatch for http://127.0.0.1:"),
        ("no-checksum", "no checksum at http://127.0.0.1:"),
        ("not-published", "no release asset at http://127.0.0.1:"),
        ("unreachable", "cannot reach http://127.0.0.1:"),
    ],
)
def test_install_refuses_and_leaves_nothing(releases, pyz, monkeypatch, case, message):
    data, checksum = pyz.path.read_bytes(), pyz.checksum.read_bytes()
    if case == "tampered":
        publish(releases, "v1", data[:-100] + bytes([data[-100] ^ 1]) + data[-99:], checksum)
    elif case == "no-checksum":
        publish(releases, "v1", data, None)
    elif case == "unreachable":
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("REPROQ_RELEASE_URL", f"http://127.0.0.1:{port}/{{tag}}/{{asset}}")
    with pytest.raises(CommandError) as caught:
        manage("install", "--tag", "v1")
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert any(
        fix in text
        for fix in ("--tag", "REPROQ_RELEASE_URL", "--insecure-skip-verify", "download it again")
    )
    assert installed_files() == []


def test_failed_install_keeps_the_installed_binary(releases, pyz, monkeypatch, tmp_path):
    target = tmp_path / "bin" / "reproq"
    monkeypatch.setenv("REPROQ_WORKER_BIN", str(target))
    data = pyz.path.read_bytes()
    publish(releases, "good", data, pyz.checksum.read_bytes())
    publish(releases, "bad", data + b"tampered", pyz.checksum.read_bytes())
    manage("install", "--tag", "good")
    with pytest.raises(CommandError, match="checksum mismatch"):
        manage("install", "--tag", "bad")
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["reproq"]


def test_install_from_a_local_file(project, pyz, tmp_path):
    lone = tmp_path / "lone" / asset_name()
    lone.parent.mkdir()
    lone.write_bytes(pyz.path.read_bytes())
    with pytest.raises(CommandError, match=r"^no checksum file .*\.sha256: refusing"):
        manage("install", "--source", str(lone))
    assert installed_files() == []
    _, err = manage("install", "--source", str(lone), "--insecure-skip-verify")
    assert "not verifying the checksum" in err
    Path(".reproq/bin/reproq").unlink()
    # A directory holding the build output (as build/shiv.sh leaves it) works too.
    out, _ = manage("install", "--source", str(pyz.path.parent))
    assert out.startswith(f"Installed reproq {__version__}")
    with pytest.raises(CommandError, match="no such file"):
        manage("install", "--source", str(tmp_path / "missing.pyz"))
    with pytest.raises(CommandError, match=r"^--build needs a source checkout of reproq, and "):
        manage("install", "--build", "--source", str(tmp_path))


def test_install_onto_a_directory_and_after_a_killed_install(project, pyz, monkeypatch, tmp_path):
    source = str(pyz.path.parent)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    monkeypatch.setenv("REPROQ_WORKER_BIN", str(occupied))
    # os.replace's IsADirectoryError came out as a traceback.
    with pytest.raises(CommandError, match=rf"^cannot install as {occupied}: Is a directory; set"):
        manage("install", "--source", source)
    assert not list(tmp_path.glob(".*.partial"))
    # A staging directory that a killed install left behind goes with the next install
    # (once it is an hour old: a younger one may belong to an install still running).
    target = tmp_path / "bin" / "reproq"
    monkeypatch.setenv("REPROQ_WORKER_BIN", str(target))
    target.parent.mkdir()
    stale, fresh = target.parent / ".reproq-old.partial", target.parent / ".reproq-new.partial"
    for leftover in (stale, fresh):
        leftover.mkdir()
        (leftover / "reproq").write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    manage("install", "--source", source)
    assert sorted(p.name for p in target.parent.iterdir()) == [".reproq-new.partial", "reproq"]
    # upgrade checks --database before it replaces the binary
    before = target.stat().st_mtime_ns
    with pytest.raises(CommandError, match=r"^--database 'nosuch' is not in DATABASES"):
        manage("upgrade", "--source", source, "--database", "nosuch")
    assert target.stat().st_mtime_ns == before


def test_install_errors_name_the_input_that_was_given(releases, pyz, monkeypatch):
    base = os.environ["REPROQ_RELEASE_URL"].split("/{tag}")[0]
    # A --source URL was told to check --tag and REPROQ_RELEASE_URL, which it had not used.
    with pytest.raises(CommandError) as caught:
        manage("install", "--source", f"{base}/nowhere/reproq.pyz")
    assert str(caught.value) == (
        f"nothing at {base}/nowhere/reproq.pyz (HTTP 404): check the --source URL"
    )
    # A file: URL of a directory holding the asset works as the directory's path does.
    out, _ = manage("install", "--source", pyz.path.parent.as_uri())
    assert out.startswith(f"Installed reproq {__version__}")
    # A release URL that is no URL was reported as a missing --source file.
    monkeypatch.setenv("REPROQ_RELEASE_URL", "ftp://example.com/{tag}/{asset}")
    with pytest.raises(CommandError, match=r"^REPROQ_RELEASE_URL gave 'ftp://example\.com/"):
        manage("install", "--tag", "v1")


def test_release_url_template(settings, monkeypatch):
    monkeypatch.setenv("REPROQ_RELEASE_URL", "https://env.example/{tag}/{asset}")
    assert release_url("v1", "a.pyz") == "https://env.example/v1/a.pyz"
    settings.REPROQ_RELEASE_URL = "https://setting.example/r/{tag}/{asset}"  # the setting wins
    assert release_url("v1", "a.pyz") == "https://setting.example/r/v1/a.pyz"
    settings.REPROQ_RELEASE_URL = "https://setting.example/latest.pyz"
    with pytest.raises(CommandError, match=r"has no \{asset\} placeholder"):
        release_url("v1", "a.pyz")
    del settings.REPROQ_RELEASE_URL
    monkeypatch.delenv("REPROQ_RELEASE_URL")
    assert (
        release_url("v1", "a.pyz") == "https://github.com/reproq/reproq/releases/download/v1/a.pyz"
    )
    assert release_url("latest", "a.pyz") == (
        "https://github.com/reproq/reproq/releases/latest/download/a.pyz"
    )


@pytest.mark.django_db(transaction=True)
def test_upgrade_then_worker_and_check_use_the_installed_pyz(releases, pyz, monkeypatch):
    publish(releases, "v9", pyz.path.read_bytes(), pyz.checksum.read_bytes())
    worker_config(Path.cwd())
    _, err = manage("upgrade", "--tag", "v9")
    bin_path = os.path.join(".reproq", "bin", "reproq")
    assert f"Running: {sys.executable} {bin_path} migrate" in err

    out, _ = manage("check")
    assert f"OK   worker binary: {sys.executable} {bin_path} (reproq {__version__})" in out
    assert "WARN" not in out

    result = tasks.add.enqueue(4, 5)
    _, err = manage("worker", "--burst")
    assert f"Running: {sys.executable} {bin_path} worker --burst" in err
    result.refresh()
    assert result.return_value == 9


@pytest.mark.django_db(transaction=True)
def test_check_and_doctor_warn_when_the_binary_version_differs(tmp_path, monkeypatch, capfd):
    old = tmp_path / "old-reproq"
    old.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "reproq 0.0.1"; exit 0; fi\n'
        f'exec "{sys.executable}" -m reproq_cli "$@"\n'
    )
    old.chmod(0o755)
    monkeypatch.setenv("REPROQ_WORKER_BIN", str(old))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reproq.yaml").write_text(
        yaml.safe_dump({"worker": {"python_bin": sys.executable, "allowed_task_modules": ["x."]}})
    )
    manage("migrate-worker")  # transactional tests may have emptied rate_limits
    warning = (
        f"the binary is 'reproq 0.0.1' but reproq_django is {__version__}; "
        "run `python manage.py reproq upgrade` to install the matching build"
    )
    out, _ = manage("check")
    assert f"WARN worker binary: {warning}" in out
    assert "Configuration looks good!" in out  # a warning, not a failure
    out, _ = manage("doctor")
    assert out.strip() == f"WARN binary: {old}: {warning}"
    assert "OK   schema: complete" in capfd.readouterr().out  # `reproq doctor` ran after it
    with pytest.raises(CommandError, match=r"^doctor --strict: the binary is 'reproq 0.0.1'"):
        manage("doctor", "--strict")
