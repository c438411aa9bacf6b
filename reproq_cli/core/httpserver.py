"""The worker's HTTP side: ``/healthz``, ``/metrics`` and ``/events`` (go-worker.md §8.3-8.5).

Requests are authorised in the Go worker's order: the CIDR allow-list first, then the bearer
token or a TUI JWT signed with it. Only denied requests count against the per-host limiter,
so a well-behaved scraper is never throttled. TLS (1.2 or newer) and client certificates are
optional.

Differences from the Go server, each for a reason (docs/compat.md): ``/healthz`` answers JSON,
which reproq-tui reads; ``/events`` has no write deadline, so a stream lives as long as its
client instead of dying after ten seconds; an empty host (``:9090``) binds every IPv4
address.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from reproq_cli import __version__, tuitoken
from reproq_cli.config import Config, parse_int64
from reproq_cli.core.events import EventBroker, EventFilter
from reproq_cli.core.logs import Logger
from reproq_cli.core.metrics import Metrics
from reproq_cli.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

READ_HEADER_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
SHUTDOWN_GRACE = 5.0
KEEPALIVE_INTERVAL = 15.0
# How often a stream looks up from its queue to notice a shutdown.
STREAM_POLL = 0.5


# --- settings -------------------------------------------------------------------------------


def split_address(addr: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` as Go's net.Listen takes them."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f'invalid metrics address "{addr}"',
            hint="use host:port, e.g. 127.0.0.1:9090 or :9090",
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_loopback(addr: str) -> bool:
    """True when the listen address only accepts local clients (an empty host does not)."""
    host = addr.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_allowlist(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for raw in entries:
        for entry in (part.strip() for part in raw.split(",")):
            if not entry:
                continue
            if entry.lower() == "localhost":
                networks += [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")]
            elif "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ConfigError(
                        f'invalid metrics allowlist prefix "{entry}"',
                        hint="write prefixes as CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32",
                    ) from None
            else:
                try:
                    networks.append(ipaddress.ip_network(ipaddress.ip_address(entry)))
                except ValueError:
                    raise ConfigError(
                        f'invalid metrics allowlist address "{entry}"',
                        hint="list IP addresses, CIDR prefixes or localhost",
                    ) from None
    return tuple(networks)


@dataclass(frozen=True)
class HttpSettings:
    addr: str
    auth_token: str
    allow: tuple[IPNetwork, ...]
    auth_limit: int
    auth_window: float
    auth_max_entries: int
    tls_cert: str
    tls_key: str
    tls_client_ca: str

    @classmethod
    def from_config(cls, config: Config) -> HttpSettings | None:
        """None when neither metrics.addr nor metrics.port asks for a server."""
        m = config.section("metrics")
        addr = m["addr"] or (f":{m['port']}" if m["port"] > 0 else "")
        if not addr:
            return None
        split_address(addr)
        settings = cls(
            addr=addr,
            auth_token=m["auth_token"],
            allow=parse_allowlist(m["allow_cidrs"]),
            auth_limit=m["auth_limit"],
            auth_window=m["auth_window"],
            auth_max_entries=m["auth_max_entries"],
            tls_cert=m["tls_cert"],
            tls_key=m["tls_key"],
            tls_client_ca=m["tls_client_ca"],
        )
        tls_context(settings)  # certificate problems stop the worker before it starts
        return settings

    @property
    def mtls(self) -> bool:
        return bool(self.tls_client_ca)


def tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError(
            "metrics TLS requires both cert and key",
            hint="set --metrics-tls-cert and --metrics-tls-key (the client CA needs both too)",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"load metrics TLS cert/key: {exc}",
            hint="point --metrics-tls-cert/--metrics-tls-key at a PEM certificate and its key",
        ) from None
    if settings.tls_client_ca:
        try:
            with open(settings.tls_client_ca, encoding="ascii", errors="replace") as handle:
                bundle = handle.read()
        except OSError as exc:
            raise ConfigError(
                f"read metrics TLS client CA: {exc}",
                hint="point --metrics-tls-client-ca at a readable PEM bundle",
            ) from None
        try:
            context.load_verify_locations(cadata=bundle)
        except (ssl.SSLError, ValueError):
            raise ConfigError(
                "metrics TLS client CA has no valid certificates",
                hint=f"{settings.tls_client_ca} must hold PEM certificates",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# --- authorisation ------------------------------------------------------------------------------


@dataclass
class _Window:
    started: float
    count: int
    last_seen: float


class DenyLimiter:
    """Fixed-window count of denied requests per host: ``limit`` answers of 401/403, then
    429 until the host's window (which starts at its first denial) has passed."""

    def __init__(
        self,
        limit: int,
        window: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._hosts: dict[str, _Window] = {}
        self._last_cleanup: float | None = None
        self._lock = threading.Lock()

    def over_limit(self, host: str) -> bool:
        key = host or "unknown"
        now = self._clock()
        with self._lock:
            entry = self._hosts.get(key)
            if entry is None or now - entry.started >= self.window:
                entry = self._hosts[key] = _Window(started=now, count=0, last_seen=now)
            entry.last_seen = now
            self._cleanup(now)
            if entry.count >= self.limit:
                return True
            entry.count += 1
            return False

    def tracked(self) -> int:
        with self._lock:
            return len(self._hosts)

    def _cleanup(self, now: float) -> None:
        due = self._last_cleanup is None or now - self._last_cleanup >= self.window
        if not due and len(self._hosts) <= self.max_entries:
            return
        self._last_cleanup = now
        stale = [k for k, e in self._hosts.items() if now - e.last_seen >= 2 * self.window]
        for key in stale:
            del self._hosts[key]
        # Still too many: forget the hosts seen longest ago first.
        excess = len(self._hosts) - self.max_entries
        if excess > 0:
            for key in sorted(self._hosts, key=lambda k: self._hosts[k].last_seen)[:excess]:
                del self._hosts[key]


@dataclass(frozen=True)
class Denial:
    status: int
    # The Go worker writes these bodies bare (w.Write, not http.Error): no newline.
    body: str


def client_ip(remote_host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(remote_host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Authorizer:
    def __init__(self, settings: HttpSettings, log: Logger) -> None:
        self.token = settings.auth_token
        self.allow = settings.allow
        self.limiter = DenyLimiter(
            settings.auth_limit, settings.auth_window, settings.auth_max_entries
        )
        self.log = log

    def check(
        self,
        remote_host: str,
        authorization: str | None,
        path: str,
        method: str,
        remote_port: int = 0,
    ) -> Denial | None:
        """None when the request may proceed, else the answer to send."""
        # remote_addr as Go's RemoteAddr writes it: host:port, an IPv6 host in brackets.
        shown = f"[{remote_host}]" if ":" in remote_host else remote_host
        context = {
            "path": path,
            "method": method,
            "remote_addr": f"{shown}:{remote_port}",
            "remote_host": remote_host,
        }
        if self.allow:
            ip = client_ip(remote_host)
            if ip is None or not any(ip in network for network in self.allow):
                limited = self.limiter.over_limit(remote_host)
                self.log.warn("Denied request", reason="allowlist", rate_limited=limited, **context)
                return Denial(429, "rate limited") if limited else Denial(403, "forbidden")
        if not self.token or self.token_accepted(authorization):
            return None
        limited = self.limiter.over_limit(remote_host)
        self.log.warn("Unauthorized request", rate_limited=limited, **context)
        return Denial(429, "rate limited") if limited else Denial(401, "unauthorized")

    def token_accepted(self, authorization: str | None) -> bool:
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        presented = authorization[7:].strip()
        # compare_digest keeps the comparison time independent of where the strings differ.
        if secrets_equal(presented, self.token):
            return True
        return tuitoken.verify(presented, self.token)


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# --- the server ------------------------------------------------------------------------------


class HttpApp:
    """What the handlers need: the registry, the event broker, the health probe, auth."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        broker: EventBroker,
        health: Callable[[], bool],
        authorizer: Authorizer,
        log: Logger,
    ) -> None:
        self.metrics = metrics
        self.broker = broker
        self.health = health
        self.authorizer = authorizer
        self.log = log
        self.closing = threading.Event()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Go's limit is a 1 MiB header block; http.server caps each line at 64 KiB and 100 headers.

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        app: HttpApp,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.address_family = family
        self.app = app
        self.tls = tls
        # Open connections, True while idle between requests (closed at once on shutdown).
        self.connections: dict[socket.socket, bool] = {}
        self.lock = threading.Lock()
        super().__init__(address, _Handler)

    def set_idle(self, connection: socket.socket, idle: bool) -> None:
        with self.lock:
            if connection in self.connections:
                self.connections[connection] = idle

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(READ_HEADER_TIMEOUT)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # failed handshake: no certificate, wrong CA, plain HTTP, ...
        with self.lock:
            self.connections[request] = True
        try:
            self.RequestHandlerClass(request, client_address, self)
        finally:
            with self.lock:
                self.connections.pop(request, None)
            if self.tls is not None:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer (reset, broken pipe, timeout) is not an error
        # of ours; anything else is one line in the log, not a traceback on stderr.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return
        self.app.log.error("HTTP request failed", error=repr(error), remote_addr=client_address[0])

    def close_connections(self, *, idle_only: bool) -> int:
        """Shut down open connections (idle ones only, or all); returns how many remain."""
        with self.lock:
            chosen = [c for c, idle in self.connections.items() if idle or not idle_only]
            remaining = len(self.connections)
        for connection in chosen:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        return remaining


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "reproq"
    sys_version = ""
    server: _Server

    def version_string(self) -> str:
        return self.server_version  # http.server appends " " + sys_version, even when empty

    def log_message(self, format: str, *args: Any) -> None:
        return None  # the Go server logs no access lines; denials are logged by Authorizer

    def handle_one_request(self) -> None:
        self.server.set_idle(self.connection, True)
        self.connection.settimeout(IDLE_TIMEOUT)
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server.set_idle(self.connection, False)
        self.connection.settimeout(READ_HEADER_TIMEOUT)
        # The timeout above is per read; a client sending a header line every few seconds
        # would hold the connection and its thread for ever. The whole block gets 5 s, as
        # Go's ReadHeaderTimeout gives it.
        deadline = threading.Timer(READ_HEADER_TIMEOUT, self._cut_off)
        deadline.daemon = True
        deadline.start()
        try:
            return super().parse_request()
        finally:
            deadline.cancel()

    def _cut_off(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def __getattr__(self, name: str) -> Any:
        # Every method reaches the router, which answers 404 or 405 like Go's mux.
        if name.startswith("do_"):
            return lambda: self._route(name[3:])
        raise AttributeError(name)

    def _route(self, method: str) -> None:
        self.connection.settimeout(WRITE_TIMEOUT)
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or self.headers.get(
            "Transfer-Encoding"
        ):
            # No route takes a body, and it is never read: on a kept-alive connection its
            # bytes would be parsed as the next request.
            self.close_connection = True
        url = urlsplit(self.path)
        routes = {"/healthz": self._healthz, "/metrics": self._metrics, "/events": self._events}
        handler = routes.get(url.path)
        if handler is None:
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        if method not in ("GET", "HEAD"):
            self._send(405, b"", "text/plain; charset=utf-8")
            return
        app = self.server.app
        denial = app.authorizer.check(
            self.client_address[0],
            self.headers.get("Authorization"),
            url.path,
            method,
            self.client_address[1],
        )
        if denial is not None:
            self._send(denial.status, denial.body.encode(), "text/plain; charset=utf-8")
            return
        handler(method == "HEAD", url.query)

    def _send(self, status: int, body: bytes, content_type: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _healthz(self, head: bool, _query: str) -> None:
        healthy = self.server.app.health()
        status = "ok" if healthy else "unhealthy"
        body = json.dumps({"status": status, "version": __version__}).encode() + b"\n"
        self._send(200 if healthy else 503, body, "application/json", head=head)

    def _metrics(self, head: bool, _query: str) -> None:
        body, content_type = self.server.app.metrics.render(self.headers.get("Accept", ""))
        self._send(200, body, content_type, head=head)

    def _events(self, head: bool, query: str) -> None:
        # Blank values kept: Go's Query().Get takes the first value, even an empty one.
        params = parse_qs(query, keep_blank_values=True)

        def param(name: str) -> str:
            return params.get(name, [""])[0].strip()

        task_id: int | None = None
        if param("task_id"):
            try:
                task_id = parse_int64(param("task_id"))
            except ValueError:
                self._send(400, b"invalid task_id", "text/plain; charset=utf-8")
                return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if head:
            # Answered and done: a keep-alive header here would undo a client's close.
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Connection", "keep-alive")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self._stream(
            EventFilter(queue=param("queue"), worker_id=param("worker_id"), task_id=task_id)
        )

    def _stream(self, event_filter: EventFilter) -> None:
        app = self.server.app
        subscription, replay = app.broker.subscribe(event_filter)
        # A stream has no write deadline: it lasts until the client goes or the worker stops.
        self.connection.settimeout(None)
        self.close_connection = True
        try:
            for event in replay:
                self._chunk(f"data: {event.to_json()}\n\n")
            next_ping = time.monotonic() + KEEPALIVE_INTERVAL
            while not app.closing.is_set():
                event = subscription.next(timeout=STREAM_POLL)
                if event is not None:
                    self._chunk(f"data: {event.to_json()}\n\n")
                if time.monotonic() >= next_ping:
                    self._chunk(": ping\n\n")
                    next_ping = time.monotonic() + KEEPALIVE_INTERVAL
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client went away
        finally:
            subscription.close()

    def _chunk(self, text: str) -> None:
        data = text.encode("utf-8")
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class HttpServer:
    def __init__(self, settings: HttpSettings, app: HttpApp) -> None:
        self.settings = settings
        self.app = app
        self._tls = tls_context(settings)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def start(self) -> bool:
        """Bind and serve in the background. A bind failure is logged; the worker goes on."""
        host, port = split_address(self.settings.addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            # An empty host (":9090") means every interface, as in Go.
            self._server = _Server((host or "0.0.0.0", port), family, self.app, self._tls)
        except OSError as exc:
            self.app.log.error("Metrics server error", error=str(exc), addr=self.settings.addr)
            return False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        self.app.log.info(
            "Serving health and metrics",
            addr=self.settings.addr,
            port=self.port,
            tls=self._tls is not None,
        )
        return True

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, end event streams, and give requests ``grace`` seconds to finish."""
        server = self._server
        if server is None:
            return
        self.app.closing.set()
        server.shutdown()
        deadline = time.monotonic() + grace
        while server.close_connections(idle_only=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.close_connections(idle_only=False)
        server.server_close()
        self._server = None


def start_http(
    settings: HttpSettings,
    *,
    metrics: Metrics,
    broker: EventBroker,
    health: Callable[[], bool],
    log: Logger,
) -> HttpServer | None:
    """Start the server the settings ask for, with the Go worker's warning for open binds."""
    open_to_all = not (settings.auth_token or settings.allow or settings.mtls)
    if open_to_all and not is_loopback(settings.addr):
        log.warn(
            "Metrics endpoint has no auth; bind to localhost or set --metrics-auth-token",
            addr=settings.addr,
        )
    app = HttpApp(
        metrics=metrics,
        broker=broker,
        health=health,
        authorizer=Authorizer(settings, log),
        log=log,
    )
    server = HttpServer(settings, app)
    return server if server.start() else None
