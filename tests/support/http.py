"""Talk to a worker's HTTP side from tests: find its port, make requests, read SSE."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.harness import WorkerFactory, parse_logs, wait_for


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str]


def served_port(workers: WorkerFactory, proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """The port from the worker's `Serving health and metrics` line (it binds port 0)."""

    def find() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early:\n{workers.output(proc)}")
        for entry in parse_logs(workers.output(proc)):
            if entry.get("msg") == "Serving health and metrics":
                return int(entry["port"])
        return None

    return wait_for(find, timeout=timeout, what="the worker's HTTP server")


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Reply:
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read().decode("utf-8", errors="replace")
        return Reply(response.status, body, {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class EventStream:
    """An /events client reading in a background thread; keeps every line it saw."""

    port: int
    path: str = "/events"
    headers: dict[str, str] = field(default_factory=dict)
    lines: list[tuple[float, str]] = field(default_factory=list)
    status: int = 0
    closed: bool = False
    error: str = ""

    def __post_init__(self) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> EventStream:
        self._conn.request("GET", self.path, headers=self.headers)
        response = self._conn.getresponse()
        self.status = response.status
        self.content_type = response.getheader("Content-Type", "")
        self._response = response
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            while True:
                line = self._response.readline()
                if not line:
                    break
                with self._lock:
                    self.lines.append((time.monotonic(), line.decode("utf-8").rstrip("\n")))
        except (OSError, http.client.HTTPException, AttributeError) as exc:
            # AttributeError: http.client's reader after close() from the test thread.
            self.error = repr(exc)
        self.closed = True

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(text[6:]) for _, text in self.lines if text.startswith("data: ")]

    def pings(self) -> list[float]:
        with self._lock:
            return [at for at, text in self.lines if text == ": ping"]

    def has(self, event_type: str, task_id: int) -> bool:
        return any(e["type"] == event_type and e.get("task_id") == task_id for e in self.events())

    def close(self) -> None:
        self._conn.close()


def make_jwt(secret: str, payload: dict[str, Any], alg: str = "HS256") -> str:
    """A token signed like reproq-django's, with any payload (to test the rejections)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl)."""
    d = directory
    # fmt: off
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        extra = ["-extfile", "server.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)
    # fmt: on
    return d
