"""A task's persisted logs: the folder they are written to, and reading them back from a
logs_uri (a path, file:// or http(s)://)."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

from reproq_cli.errors import ReproqError

HTTP_TIMEOUT = 15.0


def read_log(uri: str, *, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of a local file, or the first ``max_bytes`` of an HTTP body."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT) as response:
                return bytes(response.read(max_bytes))
        except (urllib.error.URLError, OSError) as exc:
            raise ReproqError(
                f"cannot fetch logs from {uri}: {getattr(exc, 'reason', exc)}",
                hint="check that the log server is reachable from here",
            ) from None
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(size - max_bytes, 0))
            return handle.read()
    except OSError as exc:
        raise ReproqError(
            f"cannot read logs at {path}: {exc.strerror or exc}",
            hint="logs live on the worker host that ran the task (--logs-dir)",
        ) from None


def tail_lines(data: bytes, lines: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if lines <= 0:
        return text
    return "\n".join(text.splitlines()[-lines:])


def make_private_dirs(path: str) -> None:
    """mkdir -p with mode 0700 for every directory it creates, as Go's MkdirAll does
    (os.makedirs gives the intermediate ones the default mode)."""
    if not path or os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.normpath(path))
    if parent and parent != path:
        make_private_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):  # a file in the way; another worker's mkdir is fine
            raise
