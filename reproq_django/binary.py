"""The reproq binary of a Django project: where it is, how to run it, how to install it.

`manage.py reproq install` puts the single-file build (``reproq-<os>-<arch>-py<XY>.pyz``,
made by ``build/shiv.sh``) at ``REPROQ_WORKER_BIN`` or ``./.reproq/bin/reproq``; worker, beat
and the other CLI-driven subcommands run it from there, or else the ``reproq_cli`` installed
in this environment. Every failure is a one-line ``CommandError`` naming the input and the fix,
and no failure leaves a file behind: the download goes to a temporary directory next to the
target and replaces it only once its checksum and ``--version`` are good.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import CommandError

from reproq_cli import __version__

BIN_ENV = "REPROQ_WORKER_BIN"
RELEASE_URL_ENV = "REPROQ_RELEASE_URL"
LOCAL_BIN = Path(".reproq") / "bin" / "reproq"
RELEASES = "https://github.com/reproq/reproq/releases"
DEFAULT_RELEASE_URL = RELEASES + "/download/{tag}/{asset}"
# GitHub serves the newest release under a path of its own, not under a tag called "latest".
LATEST_RELEASE_URL = RELEASES + "/latest/download/{asset}"
TIMEOUT = 60.0
CHUNK = 1 << 16
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

Log = Callable[[str], None]


def _setting(name: str) -> str | None:
    """A Django setting, else the environment variable of the same name (as reproq-django)."""
    return getattr(settings, name, None) or os.environ.get(name) or None


def asset_name() -> str:
    """The release asset for this OS, machine and Python (build/shiv.sh writes the same name)."""
    v = sys.version_info
    return f"reproq-{platform.system().lower()}-{platform.machine().lower()}-py{v[0]}{v[1]}.pyz"


def default_tag() -> str:
    """The release matching this reproq_django, so the worker and the app stay in step."""
    return f"v{__version__}"


def install_target() -> Path:
    return Path(_setting(BIN_ENV) or LOCAL_BIN)


def run_command(path: str | Path) -> list[str]:
    """argv that runs the binary at ``path``.

    A zipapp runs under this project's interpreter rather than through its shebang: the
    shebang names ``python3.X`` on PATH, which a service manager's PATH may lack, and the asset
    was chosen for this interpreter anyway.
    """
    return [sys.executable, str(path)] if zipfile.is_zipfile(path) else [str(path)]


def worker_command() -> list[str]:
    """How to run the CLI: REPROQ_WORKER_BIN, else ./.reproq/bin/reproq, else this Python's."""
    explicit = _setting(BIN_ENV)
    if explicit:
        return run_command(explicit)
    if LOCAL_BIN.exists():
        return run_command(LOCAL_BIN)
    return [sys.executable, "-m", "reproq_cli"]


def version_of(command: list[str]) -> str:
    """The first line ``<command> --version`` prints; CommandError when it does not run."""
    shown = " ".join(command)
    try:
        done = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"cannot run {shown} --version: {exc}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandError(f"{shown} --version exited with status {done.returncode}: {detail}")
    return lines[0].strip()


def version_number(line: str) -> str:
    """``reproq 0.1.0`` -> ``0.1.0`` (the Go binary's ``... version v0.0.144`` works too)."""
    return line.split()[-1].removeprefix("v") if line.split() else ""


def version_mismatch(line: str) -> str | None:
    """A warning when the binary's version differs from the installed reproq_django's."""
    found = version_number(line)
    if found == __version__:
        return None
    return (
        f"the binary is {line!r} but reproq_django is {__version__}; "
        "run `python manage.py reproq upgrade` to install the matching build"
    )


def release_url(tag: str, asset: str) -> str:
    template = _setting(RELEASE_URL_ENV)
    if template is None:
        template = LATEST_RELEASE_URL if tag == "latest" else DEFAULT_RELEASE_URL
    if "{asset}" not in template:
        raise CommandError(
            f"REPROQ_RELEASE_URL {template!r} has no {{asset}} placeholder; use a template "
            "such as https://example.com/reproq/{tag}/{asset}"
        )
    return template.replace("{tag}", tag).replace("{asset}", asset)


def _is_url(text: str, given_by: str) -> bool:
    try:
        return urlsplit(text).scheme in ("http", "https", "file")
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise CommandError(f"{given_by} {text!r} is not a valid URL: {exc}") from None


def _open_url(url: str, *, missing: str, check: str) -> BinaryIO:
    """A readable response for ``url``; one-line errors (``missing`` is the 404 message,
    ``check`` names the input to look at)."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"reproq/{__version__}"})
        return cast(BinaryIO, urllib.request.urlopen(request, timeout=TIMEOUT))
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise CommandError(missing) from None
        raise CommandError(f"{url} answered HTTP {exc.code} {exc.reason}; check {check}") from None
    except urllib.error.URLError as exc:
        if urlsplit(url).scheme == "file":
            raise CommandError(missing) from None
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise CommandError(
            f"cannot reach {url}: {reason}; check the network and {check}, "
            "or download the file yourself and use --source PATH"
        ) from None
    except (TimeoutError, OSError) as exc:
        raise CommandError(
            f"cannot reach {url}: {exc}; check the network and {check}, "
            "or download the file yourself and use --source PATH"
        ) from None
    except ValueError as exc:  # urllib's own parsing: a bad port, an unclosed bracket
        raise CommandError(f"{url!r} is not a valid URL: {exc}") from None


def _expected_digest(text: str, where: str, asset: str) -> str:
    token = (text.split() or [""])[0]
    if not _SHA256.fullmatch(token):
        raise CommandError(
            f"{where} is not a SHA-256 checksum file (it must start with 64 hex digits); "
            f"publish the output of `sha256sum {asset}`, or pass --insecure-skip-verify"
        )
    return token.lower()


@contextmanager
def _open_source(
    location: str, *, asset: str, verify: bool, log: Log, from_source: bool
) -> Iterator[tuple[BinaryIO, str | None]]:
    """The file to install (URL or local path) and the digest its .sha256 promises."""
    checksum_at = location + ".sha256"
    skip = "pass --insecure-skip-verify to install it unverified"
    check = "the --source URL" if from_source else "--tag and REPROQ_RELEASE_URL"
    if _is_url(location, "--source" if from_source else "REPROQ_RELEASE_URL gave"):
        stream = _open_url(
            location,
            missing=(
                f"nothing at {location} (HTTP 404): check the --source URL"
                if from_source
                else f"no release asset at {location} (HTTP 404): check --tag and "
                "REPROQ_RELEASE_URL, or build one here with --build"
            ),
            check=check,
        )
        try:
            expected = None
            if verify:
                with _open_url(
                    checksum_at,
                    missing=(
                        f"no checksum at {checksum_at}: refusing to install an unverified "
                        f"binary; publish {asset}.sha256 next to the asset, or {skip}"
                    ),
                    check=check,
                ) as response:
                    text = response.read(4096).decode("utf-8", "replace")
                expected = _expected_digest(text, checksum_at, asset)
            log(f"Downloading {location}")
            yield stream, expected
        finally:
            stream.close()
        return
    path = Path(location)
    if not path.is_file() and not from_source:
        raise CommandError(
            f"REPROQ_RELEASE_URL gave {location!r}, which is neither an http(s) or file URL "
            "nor a file; give a URL template such as https://example.com/releases/{tag}/{asset}"
        )
    if not path.is_file():
        raise CommandError(
            f"--source {location}: no such file; give the path of a reproq .pyz "
            "(with its .sha256 next to it) or an http(s) URL"
        )
    expected = None
    if verify:
        checksum = Path(checksum_at)
        if not checksum.is_file():
            raise CommandError(
                f"no checksum file {checksum}: refusing to install an unverified binary; "
                f"create it with `sha256sum {path.name} > {path.name}.sha256`, or {skip}"
            )
        expected = _expected_digest(checksum.read_text("utf-8", "replace"), str(checksum), asset)
    log(f"Installing {path}")
    with path.open("rb") as stream:
        yield stream, expected


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory``; return the directories created, deepest first."""
    created = []
    for parent in [directory, *directory.parents]:
        if parent.exists():
            break
        created.append(parent)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create {directory}: {exc.strerror or exc}; set REPROQ_WORKER_BIN to a "
            "writable path"
        ) from None
    return created


def install_from(
    location: str, target: Path, *, verify: bool, log: Log, from_source: bool = True
) -> str:
    """Install the file at ``location`` (URL or path) as ``target``; returns its version line.

    Nothing is written before the source and its checksum answered. The bytes go to a
    temporary directory next to the target (so the final rename is atomic), under the target's
    own file name: shiv unpacks a zipapp into ``~/.shiv/<file name>_<build id>``, so the
    ``--version`` check unpacks it once, where the installed binary will look for it. On any
    failure the temporary directory goes, and so do directories created for the target.
    """
    asset = asset_name()
    with _open_source(location, asset=asset, verify=verify, log=log, from_source=from_source) as (
        stream,
        expected,
    ):
        created = _make_parents(target.parent)
        _remove_stale_partials(target)
        staging: Path | None = None
        installed = False
        try:
            try:
                staging = Path(
                    tempfile.mkdtemp(
                        dir=target.parent, prefix=f".{target.name}-", suffix=".partial"
                    )
                )
            except OSError as exc:
                raise CommandError(
                    f"cannot write in {target.parent}: {exc.strerror or exc}; set "
                    "REPROQ_WORKER_BIN to a writable path"
                ) from None
            temp = staging / target.name
            actual = _copy(stream, temp, location)
            if expected is None:
                log(f"warning: not verifying the checksum (sha256 {actual})")
            elif actual != expected:
                raise CommandError(
                    f"checksum mismatch for {location}: expected {expected}, got {actual}; "
                    "the file is corrupt or was tampered with and was not installed: "
                    "download it again or check the published .sha256"
                )
            else:
                log(f"Checksum OK (sha256 {actual})")
            temp.chmod(0o755)
            try:
                version = version_of(run_command(temp))
            except CommandError as exc:
                raise CommandError(
                    f"{location} does not run ({exc}); it was not installed: this machine "
                    f"needs {asset}"
                ) from None
            try:
                os.replace(temp, target)
            except OSError as exc:  # the target is a directory, or not writable
                raise CommandError(
                    f"cannot install as {target}: {exc.strerror or exc}; set REPROQ_WORKER_BIN "
                    "to a file path that can be written"
                ) from None
            installed = True
            return version
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if not installed:
                for directory in created:
                    try:
                        directory.rmdir()
                    except OSError:
                        break


def _remove_stale_partials(target: Path) -> None:
    """Staging directories an install that was killed (SIGTERM, SIGKILL) left behind.
    Older than an hour: one as young may belong to an install still running."""
    cutoff = time.time() - 3600
    for stale in target.parent.glob(f".{target.name}-*.partial"):
        with suppress(OSError):
            if stale.is_dir() and stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)


def _copy(stream: BinaryIO, path: Path, location: str) -> str:
    """Copy ``stream`` into a new file at ``path``; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    with path.open("xb") as out:
        while True:
            try:
                chunk = stream.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise CommandError(f"reading {location} failed: {exc!r}; try again") from None
            if not chunk:
                break
            digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise CommandError(
                    f"cannot write {path.parent}: {exc.strerror or exc}; free some space or "
                    "set REPROQ_WORKER_BIN to another path"
                ) from None
    return digest.hexdigest()


def checkout_root(source: str | None) -> Path:
    """The source checkout that --build builds (--source, else the one this app runs from)."""
    root = Path(source) if source else Path(__file__).resolve().parent.parent
    if not (root / "build" / "shiv.sh").is_file():
        where = f"--source {source}" if source else f"{root} (where reproq_django is installed)"
        raise CommandError(
            f"--build needs a source checkout of reproq, and {where} has no build/shiv.sh; "
            "clone the repository and pass --source CHECKOUT, or install a release with --tag"
        )
    return root


def build(root: Path, out_dir: Path, *, log: Log) -> Path:
    """Run build/shiv.sh with this interpreter; returns the built .pyz (its .sha256 beside it)."""
    script = root / "build" / "shiv.sh"
    log(f"Building with {script} (Python {sys.version_info[0]}.{sys.version_info[1]})")
    try:
        done = subprocess.run(
            ["bash", str(script), "--out-dir", str(out_dir)],
            env={**os.environ, "PYTHON": sys.executable},
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise CommandError(f"cannot run {script}: {exc}; --build needs bash") from None
    if done.returncode != 0:
        raise CommandError(
            f"{script} failed with status {done.returncode} (its messages are above); "
            "fix the build or install a release with --tag"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def install(
    *, tag: str | None, source: str | None, build_here: bool, verify: bool, log: Log
) -> tuple[Path, str]:
    """What `manage.py reproq install` does; returns the target and its version line."""
    target = install_target()
    if build_here:
        root = checkout_root(source)
        with tempfile.TemporaryDirectory(prefix="reproq-build-") as out_dir:
            built = build(root, Path(out_dir), log=log)
            return target, install_from(str(built), target, verify=verify, log=log)
    if source is not None:
        if _is_url(source, "--source") and urlsplit(source).scheme == "file":
            # A file: URL is a path: a directory holding the asset works as with a path.
            source = urllib.request.url2pathname(urlsplit(source).path)
        location = source
        if not _is_url(source, "--source") and Path(source).is_dir():
            location = str(Path(source) / asset_name())
    else:
        location = release_url(tag or default_tag(), asset_name())
    return target, install_from(
        location, target, verify=verify, log=log, from_source=source is not None
    )
