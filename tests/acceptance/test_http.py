"""The worker's HTTP side over real loopback HTTP: metrics, health, events, auth and TLS."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reproq_cli import __version__, tuitoken
from tests.support.harness import enqueue, row, wait_for
from tests.support.http import EventStream, bearer, make_jwt, make_pki, request, served_port
from tests.support.private_pg import PrivateServer

TOKEN = "s3cret-token"
LOCAL = ("--metrics-addr", "127.0.0.1:0")

GO_METRICS = (
    "reproq_tasks_processed_total",
    "reproq_tasks_claimed_total",
    "reproq_tasks_completed_total",
    "reproq_claim_duration_seconds",
    "reproq_exec_duration_seconds",
    "reproq_queue_wait_duration_seconds",
    "reproq_db_operation_duration_seconds",
    "reproq_worker_cpu_usage_percent",
    "reproq_worker_mem_usage_bytes",
    "reproq_db_pool_connections_in_use",
    "reproq_db_pool_wait_count_total",
    "reproq_queue_depth",
    "reproq_tasks_running",
    "reproq_concurrency_in_use",
    "reproq_workers",
    "reproq_concurrency_limit",
    "reproq_queues_paused",
    "reproq_concurrency_blocked_tasks",
)


def samples(text: str) -> dict[str, list]:
    """Every exposed metric name (counters under their _total name) and its samples."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family.samples
    return found


def value(found: dict[str, list], sample_name: str, **labels: str) -> float | None:
    family = sample_name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    for sample in found.get(family, []):
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


def test_metrics_hold_every_go_name_and_count_outcomes(conn, workers, stop_workers):
    ok = enqueue(conn, "add", 2, 3)
    bad = enqueue(conn, "fail", "nope", columns={"max_attempts": 1})
    proc = workers.start(*LOCAL, "--metrics-auth-token", TOKEN)
    port = served_port(workers, proc)
    wait_for(
        lambda: row(conn, ok)["status"] == "SUCCESSFUL" and row(conn, bad)["status"] == "FAILED",
        what="both tasks finished",
    )

    def scrape() -> dict[str, list]:
        reply = request(port, "/metrics", headers=bearer(TOKEN))
        assert reply.status == 200, reply
        assert reply.headers["content-type"].startswith("text/plain")
        return samples(reply.body)

    # The collector refreshes every 5 s; wait for a pass after both tasks finished.
    found = wait_for(
        lambda: (f := scrape()) and value(f, "reproq_queue_depth") == 0 and f,
        what="collector gauges",
    )
    missing = [name for name in (*GO_METRICS, "reproq_task_latency_seconds") if not found.get(name)]
    assert not missing, missing
    assert value(found, "reproq_tasks_processed_total", status="success", queue="default") == 1
    assert value(found, "reproq_tasks_processed_total", status="failure", queue="default") == 1
    assert value(found, "reproq_tasks_completed_total", status="failure", queue="default") == 1
    assert value(found, "reproq_tasks_claimed_total", queue="default") == 2
    assert value(found, "reproq_exec_duration_seconds_count", queue="default") == 2
    assert value(found, "reproq_db_operation_duration_seconds_count", operation="claim") >= 2
    latency = "reproq_task_latency_seconds_count"
    assert value(found, latency, queue="default", task_path="tests.support.tasks.add") == 1
    assert value(found, "reproq_workers") == 1
    assert value(found, "reproq_concurrency_limit") == 10
    assert value(found, "reproq_worker_mem_usage_bytes") > 10_000_000
    # the client's own collectors stand in for Go's go_* series
    assert "process_resident_memory_bytes" in found
    # The Go client's default buckets, and no *_created series (which it does not export).
    buckets = {
        sample.labels["le"]
        for sample in found["reproq_claim_duration_seconds"]
        if sample.name.endswith("_bucket") and sample.labels.get("queue") == "default"
    }
    go = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0"}
    assert buckets == go | {"+Inf"}
    every = [sample.name for family in found.values() for sample in family]
    assert not [name for name in every if name.endswith("_created")]

    # OpenMetrics on request, as Prometheus asks for it
    om = request(
        port, "/metrics", headers={**bearer(TOKEN), "Accept": "application/openmetrics-text"}
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.body.rstrip().endswith("# EOF")


def test_bearer_and_tui_tokens(conn, workers, stop_workers):
    proc = workers.start(*LOCAL, "--metrics-auth-token", TOKEN)
    port = served_port(workers, proc)
    now = int(time.time())
    good = tuitoken.issue(TOKEN, subject="1", username="admin")
    claims = {"aud": "reproq-tui", "iss": "reproq-django", "superuser": True, "exp": now + 300}
    expired = make_jwt(TOKEN, {**claims, "exp": now - 5})
    wrong_audience = make_jwt(TOKEN, {**claims, "aud": "someone-else"})
    wrong_secret = make_jwt("other-secret", claims)
    not_superuser = make_jwt(TOKEN, {**claims, "superuser": False})

    assert request(port, "/metrics").status == 401
    assert request(port, "/metrics").body == "unauthorized"
    assert request(port, "/metrics", headers=bearer(TOKEN)).status == 200
    assert request(port, "/metrics", headers={"Authorization": f"bEaReR   {TOKEN} "}).status == 200
    assert request(port, "/metrics", headers={"Authorization": TOKEN}).status == 401
    assert request(port, "/metrics", headers=bearer(TOKEN + "x")).status == 401
    assert request(port, "/metrics", headers=bearer(good)).status == 200
    assert request(port, "/metrics", headers=bearer(make_jwt(TOKEN, claims))).status == 200
    for bad in (expired, wrong_audience, wrong_secret, not_superuser):
        assert request(port, "/metrics", headers=bearer(bad)).status == 401
    assert request(port, "/healthz").status == 401
    assert request(port, "/events").status == 401
    health = request(port, "/healthz", headers=bearer(good))
    assert health.status == 200
    assert health.headers["content-type"] == "application/json"

    # methods and paths as Go's mux answers them
    head = request(port, "/metrics", method="HEAD", headers=bearer(TOKEN))
    assert (head.status, head.body) == (200, "")
    assert request(port, "/metrics", method="POST", headers=bearer(TOKEN)).status == 405
    assert request(port, "/healthz", method="DELETE").status == 405
    missing = request(port, "/nope", headers=bearer(TOKEN))
    assert (missing.status, missing.body) == (404, "404 page not found\n")

    warnings = [e for e in workers_logs(workers, proc) if e["msg"] == "Unauthorized request"]
    assert warnings
    assert TOKEN not in workers.output(proc)


def workers_logs(workers, proc) -> list[dict]:
    from tests.support.harness import parse_logs

    return parse_logs(workers.output(proc))


def test_allowlist_and_rate_limit(conn, workers, stop_workers):
    outside = workers.start(
        *LOCAL,
        "--metrics-allow-cidrs",
        "10.0.0.0/8, 2001:db8::/32",
        "--metrics-auth-limit",
        "2",
        "--worker-id",
        "w-outside",
    )
    port = served_port(workers, outside)
    statuses = [request(port, "/healthz").status for _ in range(4)]
    assert statuses == [403, 403, 429, 429]
    assert request(port, "/healthz").body == "rate limited"
    denied = [e for e in workers_logs(workers, outside) if e["msg"] == "Denied request"]
    assert denied[0]["reason"] == "allowlist"
    assert denied[-1]["rate_limited"] is True

    inside = workers.start(
        *LOCAL,
        "--metrics-allow-cidrs",
        "localhost",
        "--metrics-auth-token",
        TOKEN,
        "--metrics-auth-limit",
        "1",
        "--metrics-auth-window",
        "1m",
        "--worker-id",
        "w-inside",
    )
    port = served_port(workers, inside)
    assert [request(port, "/metrics").status for _ in range(3)] == [401, 429, 429]
    # the limiter only counts denials: a caller with the token still gets through
    assert request(port, "/metrics", headers=bearer(TOKEN)).status == 200


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client_context(pki: Path, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


def test_tls_and_mtls(conn, workers, stop_workers, pki):
    tls_flags = (
        "--metrics-tls-cert",
        str(pki / "server.pem"),
        "--metrics-tls-key",
        str(pki / "server.key"),
    )
    proc = workers.start(*LOCAL, *tls_flags, "--metrics-auth-token", TOKEN)
    port = served_port(workers, proc)
    reply = request(
        port, "/healthz", headers=bearer(TOKEN), tls=_client_context(pki, with_cert=False)
    )
    assert reply.status == 200
    assert reply.body.startswith('{"status": "ok"')
    # plain HTTP to a TLS port gets no HTTP answer
    with pytest.raises((ConnectionError, OSError)):
        request(port, "/healthz", headers=bearer(TOKEN), timeout=3)
    # a client that does not trust the server's CA refuses it
    with pytest.raises(ssl.SSLError):
        request(port, "/healthz", tls=ssl.create_default_context())

    mtls = workers.start(*LOCAL, *tls_flags, "--metrics-tls-client-ca", str(pki / "ca.pem"))
    port = served_port(workers, mtls)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        request(port, "/healthz", tls=_client_context(pki, with_cert=False))
    reply = request(port, "/healthz", tls=_client_context(pki, with_cert=True))
    assert reply.status == 200
    # mTLS counts as auth: no "no auth" warning
    assert "Metrics endpoint has no auth" not in workers.output(mtls)


def test_tls_configuration_errors(db_dsn, run_cli, pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    key = ("--metrics-tls-cert", str(pki / "server.pem"), "--metrics-tls-key")
    both = (*key, str(pki / "server.key"))
    cases = [
        (key[:2], "metrics TLS requires both cert and key"),
        (
            ("--metrics-tls-client-ca", str(pki / "ca.pem")),
            "metrics TLS requires both cert and key",
        ),
        ((*key, str(garbage)), "load metrics TLS cert/key:"),
        (
            (*both, "--metrics-tls-client-ca", str(tmp_path / "missing.pem")),
            "read metrics TLS client CA:",
        ),
        (
            (*both, "--metrics-tls-client-ca", str(garbage)),
            "metrics TLS client CA has no valid certificates",
        ),
        (
            ("--metrics-allow-cidrs", "10.0.0.0/33"),
            'invalid metrics allowlist prefix "10.0.0.0/33"',
        ),
        (("--metrics-allow-cidrs", "10.0.0.x"), 'invalid metrics allowlist address "10.0.0.x"'),
        (("--metrics-auth-limit", "0"), "--metrics-auth-limit"),
        (("--metrics-addr", "nonsense"), 'invalid metrics address "nonsense"'),
    ]
    for flags, message in cases:
        result = run_cli("worker", "--dsn", db_dsn, "--burst", *LOCAL, *flags)
        assert result.returncode in (1, 2), (flags, result.stderr)
        first = result.stderr.strip().splitlines()[0]
        assert first.startswith("error: ") and message in first, (flags, result.stderr)


def test_events_stream_filters_replays_and_stays_open(conn, workers, stop_workers):
    proc = workers.start(*LOCAL, "--queues", "default,watched", "--worker-id", "w-events")
    port = served_port(workers, proc)
    stream = EventStream(port, "/events?queue=watched").start()
    assert stream.status == 200
    assert stream.content_type == "text/event-stream"
    opened = time.monotonic()
    watched = enqueue(conn, "add", 1, 1, columns={"queue_name": "watched"})
    other = enqueue(conn, "add", 2, 2)
    wait_for(lambda: stream.has("task_success", watched), what="task_success for watched task")
    wait_for(lambda: row(conn, other)["status"] == "SUCCESSFUL", what="the other task")
    started = next(e for e in stream.events() if e["type"] == "task_started")
    assert list(started) == [
        "ts",
        "level",
        "type",
        "msg",
        "queue",
        "task_id",
        "worker_id",
        "metadata",
    ]
    assert started["queue"] == "watched"
    assert started["worker_id"] == "w-events"
    assert started["metadata"]["task_path"] == "tests.support.tasks.add"
    assert started["metadata"]["attempt"] == "1"
    assert started["metadata"]["role"] == "worker"
    assert all(e["task_id"] == watched for e in stream.events()), stream.events()

    # A client that connects later gets the replay, filtered by task_id.
    late = EventStream(port, f"/events?task_id={other}").start()
    wait_for(lambda: late.has("task_success", other), what="replayed events")
    assert {e["type"] for e in late.events()} == {"task_started", "task_success"}
    late.close()
    assert request(port, "/events?task_id=abc").status == 400
    head = request(port, "/events", method="HEAD")
    assert (head.status, head.headers["content-type"]) == (200, "text/event-stream")

    # The stream outlives 30 s (keep-alive comments every 15 s) and still delivers.
    wait_for(
        lambda: time.monotonic() - opened > 31 and len(stream.pings()) >= 2,
        timeout=45,
        what="two keep-alive pings over 30 s",
    )
    assert not stream.closed, stream.error
    again = enqueue(conn, "add", 3, 3, columns={"queue_name": "watched"})
    wait_for(lambda: stream.has("task_success", again), what="an event after 30 s")

    # A warm shutdown ends the stream and the worker exits cleanly.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    wait_for(lambda: stream.closed, timeout=10, what="the stream to end")
    stream.close()


def test_failure_events_carry_reasons(conn, workers, stop_workers):
    proc = workers.start(*LOCAL)
    port = served_port(workers, proc)
    retry = enqueue(conn, "fail", "once more", columns={"max_attempts": 2})
    rejected = enqueue(conn, "evil.tasks.run")
    silent = enqueue(conn, "exit_silently", 3, columns={"max_attempts": 1})
    stream = EventStream(port, "/events").start()
    wait_for(lambda: stream.has("task_retry", retry), what="task_retry")
    wait_for(lambda: stream.has("task_rejected", rejected), what="task_rejected")
    wait_for(lambda: stream.has("task_failed", silent), what="task_failed")
    events = stream.events()
    # No envelope, so no exception class: sent empty (go-worker.md §6.3), not left out.
    silent_event = next(e for e in events if e["type"] == "task_failed")
    assert silent_event["metadata"]["exception_class"] == ""
    retry_event = next(e for e in events if e["type"] == "task_retry")
    assert retry_event["level"] == "warn"
    assert retry_event["metadata"]["exception_class"].endswith("ValueError")
    assert retry_event["metadata"]["error_message"] == "once more"
    assert retry_event["metadata"]["next_run"]
    rejected_event = next(e for e in events if e["type"] == "task_rejected")
    assert rejected_event["metadata"]["reason"] == "security_violation"
    stream.close()


@pytest.fixture
def private_pg():
    server = PrivateServer()
    try:
        yield server
    finally:
        server.cleanup()


def test_healthz_follows_the_database(private_pg, tmp_path):
    from tests.support.harness import WorkerFactory

    factory = WorkerFactory(private_pg.dsn, tmp_path)
    proc = factory.start(*LOCAL, "--metrics-auth-token", TOKEN)
    try:
        port = served_port(factory, proc)

        def health() -> tuple[int, str]:
            reply = request(port, "/healthz", headers=bearer(TOKEN))
            return reply.status, reply.body

        status, body = health()
        assert status == 200
        assert body == f'{{"status": "ok", "version": "{__version__}"}}\n'
        private_pg.stop()
        wait_for(lambda: health()[0] == 503, timeout=30, what="503 while the database is down")
        assert '"status": "unhealthy"' in health()[1]
        private_pg.start()
        wait_for(lambda: health()[0] == 200, timeout=60, what="200 once the database is back")
        assert proc.poll() is None  # the same worker, never restarted
        assert "Health check failed" in factory.output(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_low_memory_mode_and_open_bind_warning(conn, workers):
    enqueue(conn, "add", 1, 2)
    run = workers.run(*LOCAL, env={"LOW_MEMORY_MODE": "1"})
    assert run.returncode == 0, run.stderr
    messages = run.messages()
    assert "Low memory mode enabled; metrics/health/events disabled" in messages
    assert "Skipping metrics server due to low memory mode" in messages
    assert "Serving health and metrics" not in messages
    assert "Task successful" in messages

    run = workers.run("--metrics-addr", ":0")
    assert "Metrics endpoint has no auth; bind to localhost or set --metrics-auth-token" in (
        run.messages()
    )
    run = workers.run(*LOCAL)
    assert "Serving health and metrics" in run.messages()
    assert not any("no auth" in m for m in run.messages())


def test_bind_failure_does_not_stop_the_worker(conn, workers):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        rid = enqueue(conn, "add", 4, 4)
        run = workers.run("--metrics-addr", f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    assert run.returncode == 0, run.stderr
    errors = [e for e in run.logs if e["msg"] == "Metrics server error"]
    assert errors and errors[0]["level"] == "ERROR"
    assert row(conn, rid)["status"] == "SUCCESSFUL"


def _raw(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read until the server closes the connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_hostile_clients_get_answers_not_crashes(conn, workers, stop_workers):
    import socket
    import struct

    proc = workers.start(*LOCAL, "--metrics-auth-token", TOKEN)
    port = served_port(workers, proc)
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    # A body is never read: the connection closes after the answer, so it cannot smuggle
    # a second request (it got a second answer, 401 for GET /metrics).
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _raw(
        port,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(smuggled), smuggled),
    )
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 405")
    # HEAD /events honours Connection: close (it held the socket for the 60 s idle timeout).
    started = time.monotonic()
    head = _raw(port, b"HEAD /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" not in head
    assert b"\r\nServer: reproq\r\n" in head  # no trailing space
    assert time.monotonic() - started < 5
    for task_id in ("99999999999999999999999999", "5_0"):
        bad = request(port, f"/events?task_id={task_id}", headers=bearer(TOKEN))
        assert (bad.status, bad.body) == (400, "invalid task_id"), task_id
    # A header block trickled in one line at a time is cut off at 5 s in all.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        with pytest.raises(OSError):  # noqa: PT012 - the trickle is what is tested
            for _ in range(10):
                time.sleep(1)  # the client's pace, not a wait for a condition
                sock.sendall(b"X-a: b\r\n")
            if not sock.recv(1):
                raise ConnectionResetError("closed")
    assert time.monotonic() - started < 9
    # A client that resets the connection before its answer leaves no traceback.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    assert request(port, "/healthz", headers=bearer(TOKEN)).status == 200
    err = workers.outputs[proc.pid][1].read_text()
    assert "Traceback" not in err, err
